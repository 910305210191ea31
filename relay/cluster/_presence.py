"""Node liveness and peer presence in Redis (docs/PROTOCOL.md 16.1).

A node keeps ``node:<id>`` (its epoch, advertise address and PeerId) alive with a short
TTL; each peer registered on it has ``peer:<peer id>`` = ``<node id>|<epoch>``, claimed
atomically, refreshed and released only by that node (compare-and-refresh,
compare-and-delete in Lua). A presence counts only while its node's liveness key holds
the same epoch, so when a node dies (or restarts: a new epoch) all its peers are free
to register elsewhere as soon as its liveness key expires.

When Redis comes back (or lost its data), the heartbeat notices and every local peer's
presence is claimed again; one that another live node took meanwhile is *lost*: the
node closes that local session (``on_lost``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

import trio

from . import _wire
from ._claims import ClaimBatches
from ._left_peers import LeftPeers
from ._redis import ClusterUnavailable, RedisLink

logger = logging.getLogger("relay.cluster")

BATCH = 256  # keys per refresh / release script call
RELEASE_RETRY = 0.5  # seconds between release attempts while Redis does not answer


class NodePresence:
    """This node's liveness key and its peers' presence keys."""

    def __init__(
        self,
        link: RedisLink,
        *,
        prefix: str,
        node_id: str,
        epoch: str,
        advertise: str,
        node_peer_id: str,
        liveness_ttl: float,
        presence_ttl: float,
        local_peers: Callable[[], Collection[str]],
        on_lost: Callable[[str, str], None],
    ) -> None:
        self._link = link
        self._prefix = prefix
        self.node_id = node_id
        self.epoch = epoch
        self._advertise = advertise
        self._node_peer_id = node_peer_id
        self._liveness_ms = max(1, int(liveness_ttl * 1000))
        self._presence_ms = max(1, int(presence_ttl * 1000))
        self.liveness_ttl = liveness_ttl
        self.presence_ttl = presence_ttl
        self.value = _wire.presence_value(node_id, epoch)
        self._node_keys = [
            _wire.node_key(prefix, node_id),
            _wire.node_peer_key(prefix, node_peer_id),
        ]
        self._local_peers = local_peers  # peer ids registered on this node now
        self._on_lost = on_lost  # (peer id, holder) a live other node holds it now
        # Released locally, not yet in Redis.
        self._left = LeftPeers(
            "presences", batch=BATCH, retry=RELEASE_RETRY, local_peers=local_peers
        )
        self._in_flight: dict[str, trio.Event] = {}  # being released in Redis now
        self._claims = ClaimBatches(link, [prefix, self.value, self._presence_ms])
        self._refresh_now = trio.Event()
        self.joined = False  # our liveness key is in Redis (last heartbeat succeeded)
        # Called once the presences are claimed again after the node (re)created its
        # liveness key or reached Redis again.
        self.on_rejoin: Callable[[], None] | None = None
        self._beats = 0  # heartbeats that succeeded

    # -- claims and releases ------------------------------------------------------------

    async def claim(self, peer_id: str) -> str | None:
        """Claim ``peer_id`` for this node: None if it is ours now, else the live holder
        (``"<node>|<epoch>"``). Raises ClusterUnavailable."""
        self._left.discard(peer_id)  # registered again before its release went out
        releasing = self._in_flight.get(peer_id)
        if releasing is not None:  # a delete in flight must not land after our claim
            await releasing.wait()
        return await self._claims.claim(self._peer_key(peer_id))

    async def run_claims(self) -> None:
        """Write claims in pipelined batches (a task of the cluster nursery; claims fail
        with ClusterUnavailable while it does not run)."""
        await self._claims.run()

    async def release_now(self, peer_id: str) -> None:
        """Delete our presence of ``peer_id`` now. Raises ClusterUnavailable."""
        self._left.discard(peer_id)
        await self._link.script(_wire.RELEASE, [self._peer_key(peer_id)], [self.value])

    def released(self, peer_id: str) -> None:
        """``peer_id`` left this node (never blocks; Redis is told by :meth:`run_releases`)."""
        self._left.add(peer_id)

    async def run_releases(self) -> None:
        """Delete released presences in batches (a task of the cluster nursery). A peer
        registered here again keeps its presence: its claim refreshed it."""
        await self._left.run(self._release_batch)

    async def _release_batch(self, batch: list[str]) -> None:
        done = trio.Event()
        for peer_id in batch:
            self._in_flight[peer_id] = done
        try:
            keys = [self._peer_key(p) for p in batch]
            await self._link.script(_wire.RELEASE, keys, [self.value])
        finally:
            for peer_id in batch:
                self._in_flight.pop(peer_id, None)
            done.set()

    # -- liveness and refresh -----------------------------------------------------------

    async def heartbeat(self) -> None:
        """Refresh the liveness key; rejoin (claim every local peer again) when Redis
        comes back or lost it. Raises ClusterUnavailable."""
        status = await self._link.script(
            _wire.HEARTBEAT,
            self._node_keys,
            [self.epoch, self._advertise, self._node_peer_id, self._liveness_ms, self.node_id],
        )
        if status == 2 and self._beats:
            logger.error(
                "another relay process uses cluster node id %s: node ids must be unique",
                self.node_id,
            )
        elif status == 2:  # our previous incarnation's key: its presences end now
            logger.info("cluster node %s restarted: previous epoch replaced", self.node_id)
        self._beats += 1
        if status != 0 or not self.joined:
            self._refresh_now.set()
        self.joined = True

    async def refresh(self) -> int:
        """Refresh (or claim again) every local peer's presence; close the ones another
        live node holds now. Returns how many were refreshed. Raises ClusterUnavailable."""
        peers = list(self._local_peers())
        for start in range(0, len(peers), BATCH):
            batch = peers[start : start + BATCH]
            lost = await self._link.script(
                _wire.REFRESH,
                [self._peer_key(p) for p in batch],
                [self._prefix, self.value, self._presence_ms],
            )
            for index in lost or ():
                peer_id = batch[int(index) - 1]
                logger.warning("peer %s registered on another node meanwhile", peer_id)
                self._on_lost(peer_id, "another node")
        return len(peers)

    async def run_liveness(self, on_state: Callable[[bool, str], None]) -> None:
        """Heartbeat every third of the liveness TTL and refresh presences every third of
        theirs (at once after a rejoin); ``on_state(up, why)`` on every change."""
        beat = self.liveness_ttl / 3
        refresh_every = self.presence_ttl / 3
        next_refresh = trio.current_time()
        up: bool | None = None
        while True:
            try:
                await self.heartbeat()
                now = trio.current_time()
                if self._refresh_now.is_set() or now >= next_refresh:
                    rejoined = self._refresh_now.is_set()
                    self._refresh_now = trio.Event()
                    await self.refresh()
                    next_refresh = now + refresh_every
                    if rejoined and self.on_rejoin is not None:
                        self.on_rejoin()  # after the refresh: our presences are back
                if up is not True:
                    up = True
                    on_state(True, "")
            except ClusterUnavailable as exc:
                self.joined = False
                if up is not False:
                    up = False
                    on_state(False, str(exc))
            await trio.sleep(beat)

    async def leave(self) -> None:
        """Delete the liveness key: every presence of this incarnation ends at once."""
        await self._link.script(_wire.LEAVE, self._node_keys, [self.epoch])
        self.joined = False

    def _peer_key(self, peer_id: str) -> str:
        return _wire.peer_key(self._prefix, peer_id)
