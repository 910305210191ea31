"""SessionWriter: the one write path of a relay session, shared by every task that sends.

Circuits, signals, pings and credit all write to one WebSocket. A frame is written at
once from the sending task when it can be (nobody holds or waits for the write turn,
the socket has room): no lock, no cancel scope, no task switch, and DATA frames go out
as header + payload in one vectored write, never joined. Otherwise the sender waits for
its turn (control frames before data, :class:`ControlFirstLock`) and writes shielded,
bounded by :data:`SEND_TIMEOUT`.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

import trio

from .._config import RelayAddress
from ..websocket._endpoints import WebSocketConnection
from ._control_first_lock import ControlFirstLock

# How long one frame may take to write before the relay is considered gone.
SEND_TIMEOUT = 30.0
# Unsent bytes the kernel may hold for a session (TCP_NOTSENT_LOWAT, where available).
# The lock orders frames only up to the socket: without this bound a Ping written after
# bulk data waits behind megabytes of socket buffer (seconds on a slow uplink).
UNSENT_BYTES = 128 * 1024
# Frames a task may write at once (socket ready, write turn free) without a schedule point.
QUICK_WRITES_PER_YIELD = 8


class SessionWriter:
    """Writes whole frames to one relay connection for many tasks; see the module docstring."""

    def __init__(self, ws: WebSocketConnection, address: RelayAddress) -> None:
        self._ws = ws
        self._address = address
        # Control frames (Ping/Pong, credit, CloseRelay, signaling) never wait behind bulk data.
        self._turn = ControlFirstLock()
        self._quick_writes = 0  # frames written at once since a writer last yielded

    async def send(
        self, frame: str | bytes, *, control: bool, payload: bytes | None = None
    ) -> None:
        """Write one frame (with ``payload``: the binary message ``frame + payload``,
        never joined); a cancellation lands before or after it, never inside it.

        Waiting for the write turn is cancellable. A frame cut short by a cancelled
        sender would corrupt the stream and break every user, so the write itself is
        shielded, bounded by SEND_TIMEOUT (the write alone, not the wait for the turn),
        after which the session is closed.
        """
        if self._turn.is_free(control=control):
            await trio.lowlevel.checkpoint_if_cancelled()  # yields only when cancelled
            if self._write_now(frame, payload):
                await self._after_quick_write()
                return
        await self._send_in_turn(frame, control, payload)

    async def send_data(self, prefix: bytes, payload: bytes) -> None:
        """:meth:`send` of the data frame ``prefix + payload`` (a circuit's DATA), with
        one call less on the path every circuit message takes."""
        if self._turn.is_free(control=False):
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                written = self._ws.try_send_binary_nowait(prefix, payload)
            except trio.ClosedResourceError as exc:
                raise self._closed_by_us() from exc
            if written:
                if self._ws.unsent_bytes or self._quick_writes >= QUICK_WRITES_PER_YIELD:
                    await self._after_quick_write()
                else:
                    self._quick_writes += 1
                return
        await self._send_in_turn(prefix, False, payload)

    def sender_blocks(self) -> None:
        """A task is about to block (a circuit receiver waiting for data): that is the
        schedule point quick writes owe, so the count starts again. In a round trip the
        sender waits for the answer after each write and never pays a yield of its own."""
        self._quick_writes = 0

    async def _after_quick_write(self) -> None:
        if self._ws.unsent_bytes:  # the kernel took part of it: finish it now
            await self.flush()
        elif self._quick_writes >= QUICK_WRITES_PER_YIELD:
            # A schedule point every few frames, not after each: a sender that then
            # waits for an answer (or credit) yields anyway.
            self._quick_writes = 0
            await trio.lowlevel.cancel_shielded_checkpoint()
        else:
            self._quick_writes += 1

    async def _send_in_turn(self, frame: str | bytes, control: bool, payload: bytes | None) -> None:
        ws = self._ws
        async with self._turn.hold(control=control):
            if payload is None:
                await self._write_shielded(lambda: ws.send(frame))
            else:
                await self._write_shielded(lambda: ws.send_binary(frame, payload))  # type: ignore[arg-type]

    def try_send_nowait(
        self, frame: str | bytes, *, control: bool, payload: bytes | None = None
    ) -> bool:
        """Write one frame now if that needs no waiting (the write turn is free, the
        socket takes it); False: nothing was written. Never blocks, not a checkpoint.

        True with :attr:`unsent_bytes` left: the socket took part of the frame; the
        rest goes out first on the session's next write, and :meth:`flush` writes it.
        """
        return self._turn.is_free(control=control) and self._write_now(frame, payload)

    def try_send_data_nowait(self, prefix: bytes, payload: bytes) -> bool:
        """:meth:`try_send_nowait` of the data frame ``prefix + payload``."""
        return self._turn.is_free(control=False) and self._write_now(prefix, payload)

    def _write_now(self, frame: str | bytes, payload: bytes | None) -> bool:
        """The write of :meth:`try_send_nowait`, once the write turn is known to be free."""
        try:
            if payload is None:
                return self._ws.try_send_nowait(frame)
            return self._ws.try_send_binary_nowait(frame, payload)  # type: ignore[arg-type]
        except trio.ClosedResourceError as exc:
            raise self._closed_by_us() from exc

    @property
    def unsent_bytes(self) -> int:
        """Bytes of a frame written by :meth:`try_send_nowait` still to be written."""
        return self._ws.unsent_bytes

    async def flush(self) -> None:
        """Write what :meth:`try_send_nowait` left (shielded, like every write)."""
        await self._write_shielded(self._ws.flush)

    async def _write_shielded(self, write: Callable[[], Awaitable[None]]) -> None:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(SEND_TIMEOUT) as scope:
                try:
                    await write()
                except trio.ClosedResourceError as exc:
                    raise self._closed_by_us() from exc
            if scope.cancelled_caught:
                await self._ws.aclose(1001, "send timed out")
                raise trio.BrokenResourceError(
                    f"relay {self._address} stopped reading for {SEND_TIMEOUT}s"
                )

    def _closed_by_us(self) -> trio.BrokenResourceError:
        # The session closed its connection, not the caller: for a circuit or signal
        # sender that is a broken resource.
        return trio.BrokenResourceError(f"relay session {self._address} closed")


def bound_unsent_bytes(ws: WebSocketConnection) -> None:
    """Set TCP_NOTSENT_LOWAT to :data:`UNSENT_BYTES` on the connection's socket, if possible."""
    stream = getattr(ws, "_stream", None)
    sock = getattr(getattr(stream, "transport_stream", stream), "socket", None)  # TLS or plain
    option = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    if sock is None or option is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, UNSENT_BYTES)
    except OSError:  # not TCP, or a kernel without it: frames still go out in order
        pass
