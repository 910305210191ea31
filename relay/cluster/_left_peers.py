"""Peers that left this node and whose state in Redis is still to be deleted.

What a session leaves in Redis (its presence, its topic registrations) is deleted after
it ended, never on the session's own path: :meth:`LeftPeers.add` never blocks, and
:meth:`LeftPeers.run` (a task of the cluster nursery) deletes them in batches, one script
call each, keeping a batch for a retry while Redis does not answer. A peer that
registered here again before its turn is skipped: its new session owns that state now.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection

import trio

from ._redis import ClusterUnavailable

logger = logging.getLogger("relay.cluster")


class LeftPeers:
    """A set of peer ids to delete ``batch`` at a time (see the module docstring)."""

    def __init__(
        self,
        what: str,
        *,
        batch: int,
        retry: float,
        local_peers: Callable[[], Collection[str]],
    ) -> None:
        self._what = what  # for the log: what is deleted
        self._batch = batch
        self._retry = retry  # seconds between attempts while Redis does not answer
        self._local_peers = local_peers  # peer ids registered on this node now
        self.pending: set[str] = set()
        self._wakeup = trio.Event()

    def add(self, peer_id: str) -> None:
        self.pending.add(peer_id)
        self._wakeup.set()

    def discard(self, peer_id: str) -> None:
        """``peer_id`` registered here again before its state was deleted."""
        self.pending.discard(peer_id)

    async def run(
        self,
        delete: Callable[[list[str]], Awaitable[object]],
        keep: Callable[[str], bool] = lambda peer_id: True,
    ) -> None:
        """Call ``delete(batch)`` until cancelled. A batch it fails (ClusterUnavailable)
        is tried again, but for the peers ``keep`` says are no longer to be deleted."""
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            local = self._local_peers()
            self.pending = {p for p in self.pending if p not in local}
            batch = list(self.pending)[: self._batch]
            if not batch:
                continue
            self.pending.difference_update(batch)
            try:
                await delete(batch)
            except ClusterUnavailable as exc:
                # Kept for later: state left behind would be given to other nodes (a
                # presence refusing the peer everywhere, topic members that are gone)
                # until its TTL.
                logger.debug("%s not deleted yet: %s", self._what, exc)
                self.pending.update(p for p in batch if keep(p))
                await trio.sleep(self._retry)
            if self.pending:
                self._wakeup.set()
