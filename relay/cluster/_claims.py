"""Presence claims written to Redis in pipelined batches (docs/PROTOCOL.md 16.1 Claim).

A registration's claim is the one Redis round trip on its critical path. Written one by
one, each claim paid a lock, two cancel scopes and a ``send`` of its own (the largest
part of the relay's cluster CPU per registration). :class:`ClaimBatches` queues the
claims of concurrent registrations and :meth:`ClaimBatches.run` (a task of the cluster
nursery) writes all those queued as one pipelined write of the unchanged CLAIM script,
one batch in flight; the next batch is what queued meanwhile. Each claim is still its
own atomic script call: the single-holder rule is the script's, not the batch's.

A claim cancelled before its batch is written is dropped (its session then releases
nothing that landed); once written, its release (queued after it) follows it on the same
connection, so a delete never overtakes the claim it undoes.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio

from . import _wire
from ._redis import ClusterUnavailable, RedisLink
from ._resp import Arg, ReplyError

BATCH = 256  # claims per pipelined write


class _Claim:
    __slots__ = ("key", "done", "result", "abandoned")

    def __init__(self, key: str) -> None:
        self.key = key
        self.done = trio.Event()
        self.result: str | ClusterUnavailable = ""
        self.abandoned = False


class ClaimBatches:
    """Claims of presence keys, written ``BATCH`` at a time (see the module docstring)."""

    def __init__(self, link: RedisLink, args: Sequence[Arg]) -> None:
        self._link = link
        self._args = list(args)  # CLAIM's ARGV: prefix, our presence value, ttl ms
        self._pending: list[_Claim] = []
        self._wakeup = trio.Event()
        self._stopped: str | None = None  # queued until run() starts, failed if it ends

    async def claim(self, key: str) -> str | None:
        """Claim presence ``key``: None if it is ours now, else the live holder.
        Raises ClusterUnavailable."""
        if self._stopped is not None:
            raise ClusterUnavailable(self._stopped)
        claim = _Claim(key)
        self._pending.append(claim)
        self._wakeup.set()
        try:
            await claim.done.wait()
        except BaseException:
            claim.abandoned = True  # not written yet: never will be
            raise
        if isinstance(claim.result, ClusterUnavailable):
            raise claim.result
        return claim.result or None

    async def run(self) -> None:
        """Write queued claims until cancelled; then fail the ones left."""
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                while self._pending:
                    batch = [c for c in self._pending[:BATCH] if not c.abandoned]
                    del self._pending[:BATCH]
                    if batch:
                        await self._write(batch)
        finally:
            self._stopped = "the cluster node stopped"
            self._fail(self._pending, ClusterUnavailable(self._stopped))
            self._pending.clear()

    async def _write(self, batch: list[_Claim]) -> None:
        link = self._link
        try:
            commands = [link.script_command(_wire.CLAIM, [c.key], self._args) for c in batch]
            try:
                replies: list[object] = await link.pipeline(*commands)
            except ClusterUnavailable as exc:
                replies = [exc] * len(batch)
            for claim, reply in zip(batch, replies, strict=True):
                if isinstance(reply, ReplyError) and reply.code == "NOSCRIPT":
                    try:  # Redis restarted: EVAL loads the script again
                        reply = await link.script(_wire.CLAIM, [claim.key], self._args)
                    except ClusterUnavailable as exc:
                        reply = exc
                elif isinstance(reply, ReplyError):
                    reply = ClusterUnavailable(f"Redis EVALSHA failed: {reply}")
                claim.result = reply if isinstance(reply, ClusterUnavailable) else str(reply or "")
                claim.done.set()
        finally:  # cancelled mid-batch: nobody waits for ever
            self._fail(batch, ClusterUnavailable("the cluster node stopped"))

    @staticmethod
    def _fail(claims: list[_Claim], error: ClusterUnavailable) -> None:
        for claim in claims:
            if not claim.done.is_set():
                claim.result = error
                claim.done.set()
