"""One relay node of a cluster: presence, inbox and directory over one Redis link.

```
run_cluster_node(router, advertise)     the cluster nursery (a task of the server's root)
 ├─ NodePresence.run_claims             registrations' presence claims, pipelined batches
 ├─ NodeInbox.run                       this node's inbox channel -> local sessions
 ├─ NodePresence.run_liveness           liveness heartbeat, presence refresh, rejoin
 ├─ NodePresence.run_releases           presences of peers that left, deleted in batches
 ├─ ClusterRendezvous.run_drops         topic registrations of peers that left, likewise
 └─ ClusterRendezvous.run_restore       this node's registrations, again when Redis returns
```

The router and sessions use the :class:`ClusterNode` set on ``router.cluster`` (None in
single-node mode); nothing they call blocks on Redis except the coroutines they await
outside their read deadline (a registration's claim, a cross-node send, a lookup).
"""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING, Any

import trio

from darkswap_trio.proto.circuits import CloseReason
from darkswap_trio.proto.signaling import Answer, Error, IceCandidate, Offer

from ._directory import ClusterDirectory
from ._inbox import NodeInbox
from ._metrics import ClusterMetrics
from ._presence import NodePresence
from ._redis import ClusterUnavailable, RedisLink, open_redis_link
from ._topics import ClusterRendezvous
from ._types import ClusterSession, NodeAddress

if TYPE_CHECKING:
    from .._router import RelayRouter

logger = logging.getLogger("relay.cluster")

CLOSE_NORMAL = 1000


class ClusterNode:
    """This relay as a node of the cluster (see the module docstring)."""

    def __init__(self, router: RelayRouter, link: RedisLink, advertise: str) -> None:
        cfg = router.config.cluster
        self._router = router
        self._link = link
        self.node_id = cfg.node_id or router.relay_peer_id
        self.epoch = secrets.token_hex(8)  # this incarnation: a restart is a new epoch
        self.address = NodeAddress(self.node_id, advertise, router.node_peer_id)
        self.metrics = ClusterMetrics(router.metrics.registry)
        prefix = cfg.key_prefix
        self.directory = ClusterDirectory(link, prefix)
        self.presence = NodePresence(
            link,
            prefix=prefix,
            node_id=self.node_id,
            epoch=self.epoch,
            advertise=advertise,
            node_peer_id=router.node_peer_id,
            liveness_ttl=cfg.liveness_ttl,
            presence_ttl=cfg.presence_ttl,
            local_peers=router.registered_peer_ids,
            on_lost=self._lost,
        )
        # The topic rendezvous of the whole cluster (docs/PROTOCOL.md 16.5).
        self.topics = ClusterRendezvous(
            link,
            prefix=prefix,
            presence_value=self.presence.value,
            limits=lambda: router.config.limits,
            local_peers=router.registered_peer_ids,
        )
        self.presence.on_rejoin = self.topics.rejoined  # Redis may have lost them
        self.inbox = NodeInbox(
            link,
            prefix=prefix,
            node_id=self.node_id,
            epoch=self.epoch,
            message_timeout=cfg.message_timeout,
            lookup=router.lookup,
            metrics=self.metrics,
            error_sent=router.metrics.error_sent,
        )
        self.inbox.release_if_silent = self._release_if_silent
        self.redis_up = False
        self.last_error = ""
        link.on_result = self._redis_result
        self.metrics.peers.set_function(lambda: router.registered_count)

    # -- for sessions and the router ----------------------------------------------------

    async def claim(self, peer_id: str) -> str | None:
        """Claim ``peer_id`` cluster-wide before it registers here: None (go on) or the
        refusal's error code. With Redis unreachable the peer registers locally; its
        presence is claimed when Redis returns (and the session closed if another node
        holds it by then)."""
        try:
            holder = await self.presence.claim(peer_id)
            if holder is not None and self._router.config.auth.mode != "open":
                # A proven owner may replace a silent holder, on another node too (in
                # open mode there is no proof: replacing would be a hijack).
                probe = self._router.config.limits.duplicate_probe_timeout
                if await self.inbox.ask_release(holder, peer_id, probe + 2 * self._link.timeout):
                    holder = await self.presence.claim(peer_id)
        except ClusterUnavailable as exc:
            logger.warning("registering %s locally only: %s", peer_id, exc)
            return None
        if holder is None:
            return None
        self.metrics.registrations_refused.inc()
        logger.info("peer %s refused: registered on node %s", peer_id, holder.split("|")[0])
        return "peer_id_in_use"

    def peer_released(self, peer_id: str) -> None:
        """``peer_id`` left this node (never blocks)."""
        self.presence.released(peer_id)
        self.topics.dropped(peer_id)

    def forward(self, session: ClusterSession, msg: Offer | Answer | IceCandidate) -> None:
        """Send a signaling message to a peer not registered here (never blocks; the
        inbox keeps each sender's order)."""
        self.inbox.forward(session, msg)

    async def _release_if_silent(self, peer_id: str, holder: str) -> bool:
        """Another node's newcomer proved it owns ``peer_id``, which we hold as
        ``holder``: release it if its session here is silent (or gone)."""
        if holder != self.presence.value:
            return False  # not this incarnation's presence
        session = self._router.lookup(peer_id)
        if session is not None and self._router.config.auth.mode == "open":
            return False  # no proof of ownership here: replacing would be a hijack
        if session is not None:
            if await session.probe_alive(self._router.config.limits.duplicate_probe_timeout):
                return False
            logger.info(
                "peer %s re-registered on another node; closing its silent session", peer_id
            )
            self._router.metrics.limit_hit("session_replaced")
            session.close(
                CLOSE_NORMAL,
                Error("a new session of this peer replaced this one", "session_replaced"),
            )
            self._router.release_peer(session, CloseReason.PEER_DISCONNECTED)
        await self.presence.release_now(peer_id)
        return True

    def health(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "state": "joined" if self._link.up and self.presence.joined else "redis_unreachable",
            "inbox": "subscribed" if self.inbox.subscribed else "down",
            "redis_round_trip": self._link.round_trip,
            "last_error": self.last_error or None,
        }

    # -- internals ----------------------------------------------------------------------

    def _lost(self, peer_id: str, holder: str) -> None:
        session = self._router.lookup(peer_id)
        if session is not None:
            self.metrics.sessions_lost.inc()
            session.close(
                CLOSE_NORMAL,
                Error(
                    "this peer id registered on another relay node of the cluster",
                    "session_replaced",
                ),
            )

    def _redis_result(self, ok: bool, seconds: float) -> None:
        if ok:
            self.metrics.redis_round_trip.observe(seconds)
        else:
            self.metrics.redis_errors.inc()

    def _state_changed(self, up: bool, why: str) -> None:
        self.redis_up = up
        self.metrics.redis_up.set(1 if up else 0)
        if up:
            self.last_error = ""
            logger.info(
                "cluster node %s joined (Redis round trip %.1f ms)",
                self.node_id,
                (self._link.round_trip or 0) * 1000,
            )
        else:
            self.last_error = why
            logger.warning(
                "cluster node %s cannot reach Redis (local traffic goes on, cross-node "
                "signaling fails until it returns): %s",
                self.node_id,
                why,
            )


async def run_cluster_node(
    router: RelayRouter,
    advertise: str,
    *,
    task_status: trio.TaskStatus[ClusterNode] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Join the cluster of ``router.config.cluster`` and stay in it until cancelled.

    Started once the node has tried to join (within ``redis_timeout``): a node whose
    Redis is down starts anyway and joins when it comes back. On the way out the node's
    liveness key is deleted, which ends all its presences at once.
    """
    cfg = router.config.cluster
    assert cfg.redis_url is not None
    async with open_redis_link(cfg.redis_url, cfg.redis_timeout) as link:
        node = ClusterNode(router, link, advertise)
        router.cluster = node  # registrations from now on are claimed (the listener is up)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(node.presence.run_claims)
                await nursery.start(node.inbox.run)
                nursery.start_soon(node.inbox.run_sender)
                nursery.start_soon(node.presence.run_releases)
                nursery.start_soon(node.topics.run_drops)
                nursery.start_soon(node.topics.run_restore, router.topic_registrations)
                joined = trio.Event()

                def state_changed(up: bool, why: str) -> None:
                    node._state_changed(up, why)
                    joined.set()

                nursery.start_soon(node.presence.run_liveness, state_changed)
                with trio.move_on_after(cfg.redis_timeout):
                    await joined.wait()
                    await node.inbox.ready.wait()
                task_status.started(node)
                try:
                    await trio.sleep_forever()
                finally:
                    with trio.CancelScope(shield=True), trio.move_on_after(cfg.redis_timeout):
                        try:
                            await node.presence.leave()
                        except ClusterUnavailable:
                            pass  # the liveness key expires by itself
        finally:
            router.cluster = None
