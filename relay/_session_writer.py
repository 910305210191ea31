"""The send side of one signaling session: write at once, else queue; the writer task.

A frame addressed to a session is written at once by the task that produced it when
nothing waits before it (the usual relay hop), else it goes into the session's
:class:`~relay._outbox.SessionOutbox`, which the writer task drains. The writer starts
only when a frame first has to wait (or to close): an idle session holds one task, not
two. It ends the session's connection with the close recorded by :meth:`close`, once the
reader is out of ``receive()`` (the closing handshake reads the peer's echo itself).

Nothing here blocks except :meth:`SessionWriter.finish`; a connection that fails while
written calls ``on_broken`` (the session stops reading).
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from darkswap_trio.proto.signaling import Message, RelayData, encode_message, message_type
from darkswap_trio.websocket import WebSocketConnection

from ._metrics import RelayMetrics
from ._outbox import LEGACY_DATA, ByteCount, SessionOutbox
from ._router import relay_id_text
from ._session_handle import CLOSE_NORMAL

CLOSE_TIMEOUT = 2.0  # bound on flushing the last frames and the closing handshake


class SessionWriter:
    """Frames to one peer, in order; the close that ends its connection."""

    __slots__ = (
        "_ws", "_metrics", "_on_broken", "_on_legacy_written", "out", "close_code",
        "close_reason", "close_timeout", "_nursery", "_done", "_reader_done",
    )  # fmt: skip

    def __init__(
        self,
        ws: WebSocketConnection,
        buffered: ByteCount,
        metrics: RelayMetrics,
        *,
        max_control_frames: int,
        max_control_bytes: int,
        on_broken: Callable[[], None],
        on_legacy_written: Callable[[bytes, int], None],
    ) -> None:
        self._ws = ws
        self._metrics = metrics
        self._on_broken = on_broken
        # A legacy receiver cannot send CREDIT: (relay id, bytes) once written.
        self._on_legacy_written = on_legacy_written
        self.out = SessionOutbox(
            buffered,
            ws,
            max_control_frames=max_control_frames,
            max_control_bytes=max_control_bytes,
            on_pending=self._start,
        )
        self.close_code: int | None = None  # set once: the session is closing
        self.close_reason = ""
        self.close_timeout = CLOSE_TIMEOUT
        self._nursery: trio.Nursery | None = None
        self._done: trio.Event | None = None  # the writer task runs or ran
        self._reader_done = False

    def encode(self, msg: Message) -> str:
        self._metrics.frame_sent(message_type(msg))
        return encode_message(msg)

    def write_now(self, frame: str | bytes) -> bool:
        """Write ``frame`` at once if nothing waits before it (see SessionOutbox.write_now);
        True also when the connection turned out to be gone (the frame is dropped)."""
        if self.close_code is not None:
            return False
        try:
            return self.out.write_now(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # The connection is gone: what the writer does on a failed send.
            self._on_broken()
            self.out.wake()
            return True

    def send_control(self, msg: Message) -> bool:
        """Write or queue ``msg``; False if the control queue is full (nothing sent)."""
        frame = self.encode(msg)
        return self.write_now(frame) or self.out.push_control(frame)

    def send_data(self, relay_id: bytes, frame: bytes) -> None:
        """Write or queue a binary circuit frame (bounded by credit, never refused).
        The caller checks :attr:`close_code` (this is every relay hop: no more calls)."""
        out = self.out
        try:
            if out.write_now(frame):
                return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._on_broken()  # as in write_now
            out.wake()
            return
        out.push_data(relay_id, frame)

    def close(self, code: int, error: Message | None, reason: str) -> None:
        """Queue ``error`` (even past the control budget) and record the close."""
        if error is not None:
            self.out.push_control(self.encode(error), force=True)
        self.close_code = code
        self.close_reason = reason
        self.out.wake()

    def open(self, nursery: trio.Nursery) -> None:
        """The session's nursery exists: start the writer now if it has work already."""
        self._nursery = nursery
        if self.out or self.close_code is not None:
            self._start()

    async def finish(self) -> None:
        """The reader is done: let the writer flush and close (at most CLOSE_TIMEOUT)."""
        if self.close_code is None:
            self.close_code = CLOSE_NORMAL
        self._reader_done = True
        self.out.wake()  # starts the writer if needed: it sends the close
        assert self._done is not None
        with trio.move_on_after(CLOSE_TIMEOUT):
            await self._done.wait()

    def _start(self) -> None:
        if self._done is None and self._nursery is not None:
            self._done = trio.Event()
            self._nursery.start_soon(self._write_loop)

    async def _write_loop(self) -> None:
        ws = self._ws
        out = self.out
        try:
            while True:
                await out.flush_tail()
                item = out.pop()
                if item is None:
                    if self.close_code is not None and self._reader_done:
                        break
                    await out.wait()
                    continue
                frame = item.frame
                if item.kind == LEGACY_DATA:
                    assert item.relay_id is not None and isinstance(frame, bytes)
                    frame = self.encode(
                        RelayData(
                            from_=item.sender, relay_id=relay_id_text(item.relay_id), data=frame
                        )
                    )
                try:
                    # Legacy frames (base64, 4/3 of their payload) take the plain path: a
                    # tail of one would count more than the payload the window bounds.
                    if item.kind == LEGACY_DATA or not out.try_write(frame):
                        await ws.send(frame)
                finally:
                    out.written(item)
                if item.kind == LEGACY_DATA and item.size:
                    assert item.relay_id is not None
                    self._on_legacy_written(item.relay_id, item.size)
            with trio.move_on_after(self.close_timeout):
                await ws.aclose(self.close_code or CLOSE_NORMAL, self.close_reason)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._on_broken()  # the connection is gone; stop reading too
        finally:
            out.release_tail()
            assert self._done is not None
            self._done.set()
