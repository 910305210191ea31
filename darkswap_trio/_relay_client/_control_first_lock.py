"""ControlFirstLock: the write turn on one relay session, control frames first.

A plain lock lets a circuit sender that always has credit retake it before a waiting
task runs (it never yields between two frames), so a session's Ping or Pong could wait
behind bulk data until the relay was declared dead (issue #10, item 1). This lock hands
the turn over directly on release: to a waiting control sender (Ping/Pong, credit,
CloseRelay, token refresh) first, then to data senders in arrival order, so a control
frame waits for at most the one frame being written, and circuits share the uplink fairly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


class ControlFirstLock:
    """A fair lock with two classes of waiters; the control class always goes first."""

    __slots__ = ("_held", "_control", "_data")

    def __init__(self) -> None:
        self._held = False
        self._control = trio.lowlevel.ParkingLot()
        self._data = trio.lowlevel.ParkingLot()

    def is_free(self, *, control: bool) -> bool:
        """Whether a sender of this class would get the turn at once (nobody holds it,
        nobody it must yield to waits): a write that never waits may then go ahead
        without taking the turn."""
        return not self._held and not self._control and (control or not self._data)

    @asynccontextmanager
    async def hold(self, *, control: bool) -> AsyncIterator[None]:
        """Hold the write turn; waiting for it is cancellable, holding it is not ended early."""
        await self._acquire(control)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, control: bool) -> None:
        if self.is_free(control=control):
            await trio.lowlevel.checkpoint_if_cancelled()
            self._held = True
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        # Parked until _release hands us the turn (ownership moves with unpark, as in
        # trio.Lock): cancelled while parked, we simply leave the queue.
        await (self._control if control else self._data).park()

    def _release(self) -> None:
        if self._control:
            self._control.unpark()
        elif self._data:
            self._data.unpark()
        else:
            self._held = False

    def statistics(self) -> tuple[int, int]:
        """(control waiters, data waiters)."""
        return len(self._control), len(self._data)
