"""The bounded FIFO of frames waiting to be written to one signaling session.

One FIFO per session keeps order on the wire: ``DataChannel`` before a circuit's first
data, ``CloseRelay`` after its last. It is bounded two ways: circuit data by the credit
windows (the circuit core never lets a direction carry more than its credit), control
frames by a frame count and a byte budget. :meth:`SessionOutbox.push_control` returns
False when the budget is exhausted; the session then closes the peer as stalled.

Every queued byte is counted in a :class:`ByteCount` shared by every session (the
relay-wide ``buffered_bytes`` statistic) until the writer has written it.

:meth:`SessionOutbox.write_now` is the fast path of a relay hop: when nothing is queued
and the connection is idle, the task that received a frame writes it to the receiver's
socket itself, without the queue and a writer wakeup.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import NamedTuple

import trio

from darkswap_trio.websocket import WebSocketConnection

CONTROL, DATA, LEGACY_DATA = 0, 1, 2


class ByteCount:
    """A running total of bytes held inside the relay (``buffered_bytes``)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class Outgoing(NamedTuple):
    kind: int  # CONTROL, DATA (binary frame) or LEGACY_DATA (payload, encoded when written)
    relay_id: bytes | None  # the circuit of DATA / LEGACY_DATA items
    frame: str | bytes
    size: int
    sender: str  # LEGACY_DATA: the peer id for RelayData.from


class SessionOutbox:
    __slots__ = (
        "_counter",
        "_ws",
        "_tail",
        "_items",
        "_control_frames",
        "_control_bytes",
        "max_control_frames",
        "max_control_bytes",
        "_on_pending",
        "_wakeup",
    )

    def __init__(
        self,
        counter: ByteCount,
        ws: WebSocketConnection,
        *,
        max_control_frames: int,
        max_control_bytes: int,
        on_pending: Callable[[], None] = lambda: None,
    ) -> None:
        self._counter = counter
        self._ws = ws
        self._tail = 0  # bytes of a frame tail held by the connection, counted
        self._items: deque[Outgoing] = deque()
        self._control_frames = 0
        self._control_bytes = 0
        self.max_control_frames = max_control_frames
        self.max_control_bytes = max_control_bytes
        # Called whenever the writer has something to do (the session starts its writer
        # task on the first call: most sessions never need one).
        self._on_pending = on_pending
        self._wakeup: trio.Event | None = None

    def __len__(self) -> int:
        return len(self._items)

    def push_control(self, frame: str, *, force: bool = False) -> bool:
        """Queue a text frame; False (nothing queued) when the control budget is spent."""
        size = len(frame)
        if not force and (
            self._control_frames >= self.max_control_frames
            or self._control_bytes + size > self.max_control_bytes
        ):
            return False
        self._control_frames += 1
        self._control_bytes += size
        self._append(Outgoing(CONTROL, None, frame, size, ""))
        return True

    def push_data(
        self,
        relay_id: bytes,
        frame: bytes,
        *,
        legacy_sender: str | None = None,
    ) -> None:
        """Queue circuit data (bounded by credit, so never refused)."""
        kind = DATA if legacy_sender is None else LEGACY_DATA
        self._append(Outgoing(kind, relay_id, frame, len(frame), legacy_sender or ""))

    def _append(self, item: Outgoing) -> None:
        self._items.append(item)
        self._counter.value += item.size
        self.wake()

    def pop(self) -> Outgoing | None:
        """The next item, or None. Its bytes stay counted until :meth:`written`."""
        if not self._items:
            return None
        item = self._items.popleft()
        if item.kind == CONTROL:
            self._control_frames -= 1
            self._control_bytes -= item.size
        return item

    def written(self, item: Outgoing) -> None:
        self._counter.value -= item.size

    def write_now(self, frame: str | bytes) -> bool:
        """Write ``frame`` at once if nothing waits before it; False: queue it instead.

        Only when the queue is empty and the connection idle (no send in progress, no
        unsent tail), so order on the wire is the order of the calls. A tail the kernel
        did not take stays in the connection, counted like queued bytes until the
        writer has flushed it (:meth:`flush_tail`); meanwhile every frame is queued.
        Raises trio's BrokenResourceError / ClosedResourceError from the connection.
        """
        if self._items:
            return False
        return self.try_write(frame)

    def try_write(self, frame: str | bytes) -> bool:
        """Write ``frame`` if the socket takes it now (a tail is kept as in write_now).

        The writer drains the queue with this and blocks only when the socket is full:
        a frame per scheduling round would leave a session that once had to queue
        behind sessions written directly (measured: 0.2x their rate).
        """
        ws = self._ws
        if not ws.try_send_nowait(frame):
            return False
        tail = ws.unsent_bytes
        if tail:
            self._tail = tail
            self._counter.value += tail
            self.wake()
        return True

    async def flush_tail(self) -> None:
        """Write what :meth:`write_now` left unsent (the writer task calls this)."""
        if self._tail:
            try:
                await self._ws.flush()
            finally:
                self.release_tail()

    def release_tail(self) -> None:
        self._counter.value -= self._tail
        self._tail = 0

    def purge(self, relay_id: bytes) -> None:
        """Drop every queued data item of one circuit."""
        if not any(item.relay_id == relay_id for item in self._items):
            return
        kept: deque[Outgoing] = deque()
        for item in self._items:
            if item.relay_id == relay_id:
                self._counter.value -= item.size
            else:
                kept.append(item)
        self._items = kept

    def clear(self) -> None:
        for item in self._items:
            self._counter.value -= item.size
        self._items.clear()
        self._control_frames = self._control_bytes = 0
        self.release_tail()

    def wake(self) -> None:
        """Wake the writer waiting in :meth:`wait` (e.g. to notice a close)."""
        if self._wakeup is not None:
            self._wakeup.set()
        self._on_pending()

    async def wait(self) -> None:
        """Wait until something is queued or :meth:`wake` is called."""
        if not self._items:
            self._wakeup = trio.Event()
            await self._wakeup.wait()
