"""The cluster's topic rendezvous in Redis, shared by every node (PROTOCOL.md 16.5).

:class:`ClusterRendezvous` is what the routing of a TopicRegister awaits in cluster
mode (``router.cluster.topics``); the session awaits it before reading its next frame,
so one peer's registers and leaves reach Redis in order. Each call is one Lua script
bounded by ``redis_timeout`` (raises ClusterUnavailable). The bounds are the relay's
``limits.*topic*`` settings, checked in the script, so they hold for the whole cluster.

When a session ends its peer's registrations are dropped in batches by
:meth:`ClusterRendezvous.run_drops` (a task of the cluster nursery), retried while Redis
does not answer. A node that dies drops nothing: its peers' presence dies with its
liveness key, and a registration whose presence is not live is never returned (and
removed when a register meets it), so they vanish within ``liveness_ttl``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Collection

import trio

from .._config import LimitsConfig
from .._rendezvous import TopicLimit
from . import _topic_store as store
from ._left_peers import LeftPeers
from ._redis import ClusterUnavailable, RedisLink
from ._wire import ClusterParseError

logger = logging.getLogger("relay.cluster")

BATCH = 128  # peers per drop script call
DROP_RETRY = 0.5  # seconds between drop attempts while Redis does not answer

_REFUSALS = {
    "topics_per_peer": "at most {limits.max_topics_per_peer} topics per peer",
    "topics": "the cluster's topic table is full",
    "peers_per_topic": "topic has {limits.max_peers_per_topic} registered peers",
}


class ClusterRendezvous:
    """Topic registrations of the cluster in Redis (see the module docstring)."""

    def __init__(
        self,
        link: RedisLink,
        *,
        prefix: str,
        presence_value: str,
        limits: Callable[[], LimitsConfig],
        local_peers: Callable[[], Collection[str]],
        rng: random.Random | None = None,
    ) -> None:
        self._link = link
        self._prefix = prefix
        self._presence_value = presence_value  # "<node>|<epoch>": our presence keys hold it
        self._limits = limits  # read on every call: a reload changes them in place
        self._local_peers = local_peers
        self._rng = rng or random.Random()
        self._registrants: set[str] = set()  # local peers that may have registrations
        # Sessions ended, registrations not yet dropped.
        self._left = LeftPeers(
            "topic registrations", batch=BATCH, retry=DROP_RETRY, local_peers=local_peers
        )
        self._restore = trio.Event()

    async def register(self, peer_id: str, topic: str) -> list[str] | None:
        """Register (or renew) ``peer_id`` for ``topic`` cluster-wide; a random sample of
        the other live members, or None if Redis did not answer. Raises TopicLimit."""
        try:
            return await self._register(peer_id, topic)
        except ClusterUnavailable as exc:
            logger.debug("topic %r answered from this node only: %s", topic[:64], exc)
            return None

    async def _register(self, peer_id: str, topic: str) -> list[str]:
        limits = self._limits()
        self._registrants.add(peer_id)
        self._left.discard(peer_id)  # registered here again before its drop went out
        reply = await self._link.script(
            store.REGISTER,
            [
                store.topic_key(self._prefix, topic),
                store.peer_topics_key(self._prefix, peer_id),
                store.topic_index_key(self._prefix),
            ],
            [
                self._prefix, peer_id, topic, max(1, int(limits.topic_ttl * 1000)),
                limits.max_topics_per_peer, limits.max_peers_per_topic, limits.max_topics,
                2 * limits.topic_sample + 1,
            ],
        )  # fmt: skip
        try:
            answer = store.decode_register_reply_untrusted(reply)
        except ClusterParseError as exc:
            raise ClusterUnavailable(f"Redis answered a topic registration oddly: {exc}") from None
        if isinstance(answer, store.Refused):
            raise TopicLimit(_REFUSALS[answer.limit].format(limits=limits), answer.limit)
        others = [p for p in answer.candidates if p != peer_id]
        return self._rng.sample(others, min(limits.topic_sample, len(others)))

    async def unregister(self, peer_id: str, topic: str) -> None:
        """Leave ``topic``; if Redis does not answer the entry expires there by itself."""
        try:
            await self._unregister(peer_id, topic)
        except ClusterUnavailable as exc:
            logger.debug("topic leave of %s not in Redis (expires there): %s", peer_id, exc)

    async def _unregister(self, peer_id: str, topic: str) -> None:
        await self._link.script(
            store.UNREGISTER,
            [
                store.topic_key(self._prefix, topic),
                store.peer_topics_key(self._prefix, peer_id),
                store.topic_index_key(self._prefix),
            ],
            [peer_id, topic],
        )

    def rejoined(self) -> None:
        """Redis answers again (it may have lost everything): see :meth:`run_restore`."""
        self._restore.set()

    async def run_restore(self, local: Callable[[], list[tuple[str, str]]]) -> None:
        """Register this node's peers' registrations (``local``: (peer, topic) pairs) in
        Redis again whenever it comes back, so peers of other nodes find them before the
        SDK renews them (a task of the cluster nursery)."""
        while True:
            await self._restore.wait()
            self._restore = trio.Event()
            registered = self._local_peers()
            try:
                for peer_id, topic in local():
                    if peer_id in registered:
                        try:
                            await self._register(peer_id, topic)
                        except TopicLimit:
                            pass  # the cluster filled up meanwhile: it stays local
            except ClusterUnavailable as exc:
                logger.debug("topic registrations not restored yet: %s", exc)

    def dropped(self, peer_id: str) -> None:
        """``peer_id``'s session here ended (never blocks; see :meth:`run_drops`)."""
        if peer_id in self._registrants:
            self._registrants.discard(peer_id)
            self._left.add(peer_id)

    async def run_drops(self) -> None:
        """Drop ended sessions' registrations in batches (a task of the cluster nursery).
        A peer registered here again keeps its registrations (it renews them); one that
        registered a topic again meanwhile is not dropped on a retry."""
        await self._left.run(self._drop_batch, keep=lambda p: p not in self._registrants)

    async def _drop_batch(self, batch: list[str]) -> None:
        keys = [store.topic_index_key(self._prefix)]
        keys += [store.peer_topics_key(self._prefix, p) for p in batch]
        await self._link.script(store.DROP, keys, [self._prefix, self._presence_value, *batch])
