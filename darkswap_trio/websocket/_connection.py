"""One open WebSocket connection over a trio stream (see :mod:`darkswap_trio.websocket._endpoints`).

A connection owns no task: :meth:`WebSocketConnection.receive` reads the socket in the
caller's task and answers pings on the way, so an idle connection costs a few objects
and no buffer. Reads are sized adaptively: 4 KiB while idle, doubling up to 256 KiB
while reads come back full, or exactly what a half-received frame still needs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import trio

from ..proto.websocket import (
    CloseCode,
    CloseReceived,
    ConnectionState,
    MessageDiscarded,
    MessageReceived,
    PingReceived,
    ProtocolFailed,
    WebSocketCore,
    parse_request_untrusted,
    parse_response_untrusted,
)
from ._statistics import WebSocketStatistics as WebSocketStatistics
from ._transport import close_now, close_transport

MIN_RECEIVE_SIZE = 4 * 1024
MAX_RECEIVE_SIZE = 256 * 1024
CLOSE_TIMEOUT = 5.0
# Up to this size a frame's header and payload are joined and written with one write();
# above it, writev() sends them apart (no copy of the payload).
_JOIN_LIMIT = 4096

Headers = Sequence[tuple[str, str]]

# The payload of a discarded (oversize) message is read into this one buffer, shared by
# every connection: a read and its consumption happen with no checkpoint in between, so
# no two connections use it at once, and skipping allocates nothing.
_SKIP_BUFFER = bytearray(64 * 1024)


async def _close_before_raise(stream: trio.abc.Stream) -> None:
    # The caller raises next: a plain TCP stream needs no checkpoint (see _transport).
    if not close_now(stream):
        await trio.aclose_forcefully(stream)


def stream_remote_address(stream: trio.abc.Stream) -> tuple[str, int]:
    sock_stream: Any = getattr(stream, "transport_stream", stream)
    try:
        peer = sock_stream.socket.getpeername()
        return (str(peer[0]), int(peer[1]))
    except (AttributeError, OSError, IndexError, TypeError):
        return ("", 0)


class WebSocketConnection:
    """An open WebSocket. Sends are safe from several tasks; receive from one at a time."""

    __slots__ = (
        "remote_address",
        "path",
        "close_code",
        "close_reason",
        "_stream",
        "_socket",
        "_core",
        "_head",
        "_sending",
        "_send_waiters",
        "_unsent",
        "_unsent_more",
        "_drained",
        "_receive_size",
        "_receiving",
        "_local_closed",
        "_peer_closed",
        "_broken",
        "_close_done",
        "_close_timeout",
        "_bytes_received",
        "_bytes_sent",
        "_messages_received",
        "_messages_sent",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        core: WebSocketCore,
        *,
        remote_address: tuple[str, int],
        path: str,
        head: bytes,
        close_timeout: float = CLOSE_TIMEOUT,
    ) -> None:
        self.remote_address = remote_address
        self.path = path
        self._head = head
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._stream = stream
        # Plain TCP: read the trio socket directly. SocketStream.receive_some adds a
        # frame and a context-manager generator (~600 bytes) to every idle connection.
        self._socket = stream.socket if type(stream) is trio.SocketStream else None
        self._core = core
        # A send lock without trio.Lock's objects: a flag, plus a ParkingLot created
        # only when two tasks actually contend (saves ~300 bytes per idle connection).
        self._sending = False
        self._send_waiters: trio.lowlevel.ParkingLot | None = None
        # The tail of a frame try_send_nowait() could not write; goes out before anything.
        self._unsent: bytes | memoryview | None = None
        self._unsent_more: bytes | bytearray | memoryview = b""  # a payload behind _unsent
        # The last read returned under half of what it asked: the socket is probably
        # empty, so the next read waits for readiness first instead of failing with EAGAIN
        # once. A bulk read a little short of its size (a relay's 238 KiB of 256 KiB)
        # does not count: more has usually arrived by the time its frames are forwarded,
        # and a wait costs an epoll_ctl, an epoll_wait and a scheduler round per read.
        self._drained = False
        self._receive_size = MIN_RECEIVE_SIZE
        self._receiving = False
        self._local_closed = False
        self._peer_closed = False
        self._broken: BaseException | None = None
        self._close_done: trio.Event | None = None
        self._close_timeout = close_timeout
        self._bytes_received = 0
        self._bytes_sent = 0
        self._messages_received = 0
        self._messages_sent = 0

    @property
    def handshake_head(self) -> bytes:
        """The raw HTTP head of the opening handshake (the response on a client)."""
        return self._head

    @property
    def headers(self) -> list[tuple[str, str]]:
        """Handshake header fields (the request on a server, the response on a client).

        Names are lower-case. Parsed from the raw head on each access: an idle
        connection keeps one bytes object instead of a list of tuples of strings.
        """
        parse = parse_response_untrusted if self._core.is_client else parse_request_untrusted
        return list(parse(self._head).headers)

    def peer_certificate(self) -> bytes | None:
        """The TLS peer's certificate (DER) as it presented it, whether or not it was
        validated (the caller may check it its own way); None without TLS or certificate."""
        stream = self._stream
        return stream.getpeercert(binary_form=True) if isinstance(stream, trio.SSLStream) else None

    def statistics(self) -> WebSocketStatistics:
        return WebSocketStatistics(
            bytes_received=self._bytes_received,
            bytes_sent=self._bytes_sent,
            messages_received=self._messages_received,
            messages_sent=self._messages_sent,
            receive_buffer_bytes=self._core.buffered_bytes,
            receive_size=self._receive_size,
        )

    @property
    def closed(self) -> bool:
        """Whether the connection is no longer usable (closed by either side, or broken)."""
        return self._local_closed or self._peer_closed or self._broken is not None

    # -- sending --

    def _check_sendable(self) -> None:
        if self._local_closed:
            raise trio.ClosedResourceError("WebSocket was closed locally")
        if self._broken is not None:
            raise trio.BrokenResourceError("WebSocket connection failed") from self._broken
        if self._peer_closed or self._core.close_sent:
            raise trio.BrokenResourceError(
                f"peer closed the WebSocket ({self.close_code} {self.close_reason!r})"
            )

    async def _send_raw(self, data: bytes | bytearray | memoryview) -> None:
        """Write under the send lock (held by the caller); a failed write breaks the stream."""
        done = False
        try:
            await self._stream.send_all(data)
            done = True
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            if self._local_closed:
                raise trio.ClosedResourceError("WebSocket was closed locally") from None
            self._mark_broken(exc)
            raise trio.BrokenResourceError("WebSocket transport failed") from exc
        finally:
            if not done and self._broken is None and not self._local_closed:
                # Cancelled mid-write: the peer may hold half a frame, the stream is unusable.
                self._mark_broken(trio.BrokenResourceError("a send was cancelled mid-frame"))
        self._bytes_sent += len(data)

    async def _send_locked(
        self, data: bytes, more: bytes | bytearray | memoryview = b"", *, check: bool = True
    ) -> None:
        """Write ``data`` (then ``more``) holding the send lock (whole frames never interleave).

        A tail left by :meth:`try_send_nowait` is written first.
        """
        while self._sending:
            if self._send_waiters is None:
                self._send_waiters = trio.lowlevel.ParkingLot()
            await self._send_waiters.park()
        self._sending = True
        try:
            if check:
                self._check_sendable()
            if self._unsent is not None:
                tail, self._unsent = self._unsent, None
                rest, self._unsent_more = self._unsent_more, b""
                await self._send_raw(tail)
                if rest:
                    await self._send_raw(rest)
            if data:
                await self._send_raw(data)
            if more:
                await self._send_raw(more)
        finally:
            self._sending = False
            if self._send_waiters:
                self._send_waiters.unpark()

    async def send(self, message: str | bytes | bytearray | memoryview) -> None:
        """Send one message: ``str`` as a text frame, bytes-like as a binary frame."""
        self._check_sendable()
        await self._send_locked(self._core.send_message(message))
        self._messages_sent += 1

    def try_send_nowait(self, message: str | bytes | bytearray | memoryview) -> bool:
        """Send one message now if that needs no waiting; False: use :meth:`send`.

        True: the frame was handed to the kernel, wholly or but for a tail the socket
        had no room for (:attr:`unsent_bytes`), which is written before anything else by
        the next :meth:`send` or :meth:`flush`. False (nothing sent) when another task is
        sending, a tail is pending, the socket buffer is full, or the transport is not
        plain TCP (TLS). Raises like :meth:`send` if the connection is closed or broken.
        Never blocks and is not a checkpoint: a relay forwards a frame from the task
        that received it, without waking a writer task.
        """
        if self._socket is None or self._sending or self._unsent is not None:
            return False
        self._check_sendable()
        return self._write_nowait(*self._core.send_message_parts(message))

    def try_send_binary_nowait(
        self, prefix: bytes, payload: bytes | bytearray | memoryview
    ) -> bool:
        """:meth:`try_send_nowait` of the binary message ``prefix + payload``, written
        with one vectored write and without joining the two (see :meth:`send_binary`).

        Unlike :meth:`try_send_nowait`, a full socket buffer is no reason to refuse once
        the frame is encoded: it is kept whole as the tail (:attr:`unsent_bytes`) and True
        is returned, so a client never masks a payload twice."""
        if self._socket is None or self._sending or self._unsent is not None:
            return False
        self._check_sendable()
        header, rest = self._core.send_binary_parts(prefix, payload)
        if not self._write_nowait(header, rest):
            self._unsent, self._unsent_more = header, rest
            self._messages_sent += 1
        return True

    async def send_binary(self, prefix: bytes, payload: bytes | bytearray | memoryview) -> None:
        """Send the binary message ``prefix + payload`` (a protocol header in front of
        application data) without a joined copy of the payload."""
        self._check_sendable()
        header, rest = self._core.send_binary_parts(prefix, payload)
        if len(header) + len(rest) <= _JOIN_LIMIT:
            await self._send_locked(header + rest)
        else:
            await self._send_locked(header, rest)
        self._messages_sent += 1

    def _write_nowait(self, header: bytes, payload: bytes | bytearray | memoryview) -> bool:
        """Write one encoded frame now; False (nothing written) if the socket is full."""
        sock = self._socket
        assert sock is not None
        size = len(header) + len(payload)
        try:
            # fileno() is -1 once trio closed the socket: never write to a reused number.
            fd = sock.fileno()
            if size <= _JOIN_LIMIT:
                sent = os.write(fd, header + payload)
            else:
                sent = os.writev(fd, (header, payload))
        except BlockingIOError:
            return False
        except OSError as exc:
            self._mark_broken(exc)
            raise trio.BrokenResourceError("WebSocket transport failed") from exc
        self._bytes_sent += sent
        self._messages_sent += 1
        if sent < size:
            if sent < len(header):
                self._unsent = header[sent:] + bytes(payload)
            else:
                self._unsent = memoryview(payload)[sent - len(header) :]
        return True

    @property
    def unsent_bytes(self) -> int:
        """Bytes of a frame accepted by :meth:`try_send_nowait` and not yet written."""
        return 0 if self._unsent is None else len(self._unsent) + len(self._unsent_more)

    async def flush(self) -> None:
        """Write the tail left by :meth:`try_send_nowait`, if any."""
        if self._unsent is None:
            await trio.lowlevel.checkpoint()
            return
        await self._send_locked(b"")

    async def ping(self, payload: bytes = b"") -> None:
        """Send a ping (at most 125 bytes). Its pong is consumed by :meth:`receive`."""
        self._check_sendable()
        await self._send_locked(self._core.send_ping(payload))

    async def _flush_replies(self) -> None:
        """Write the core's automatic replies (pong, close echo); failures are not ours."""
        while (data := self._core.poll_transmit()) is not None:
            if self._broken is not None or self._local_closed:
                continue
            try:
                with trio.move_on_after(self._close_timeout):
                    await self._send_locked(data, check=False)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    # -- receiving --

    def _check_receivable(self) -> None:
        if self._local_closed and not self._awaiting_close_echo():
            raise trio.ClosedResourceError("WebSocket was closed locally")
        if self._broken is not None:
            raise trio.BrokenResourceError("WebSocket connection failed") from self._broken
        if self._peer_closed:
            raise trio.EndOfChannel

    def _awaiting_close_echo(self) -> bool:
        # aclose() sent a close frame and waits for a receiving task to read the echo.
        return self._close_done is not None and not self._close_done.is_set()

    async def receive(self) -> str | bytes:
        """The next message: ``str`` (text) or ``bytes`` (binary).

        With ``discard_above`` set on the core (a relay), a message above that size is
        returned as a :class:`~darkswap_trio.proto.websocket._connection.MessageDiscarded` (its
        ``len()`` is the size; the payload was never buffered).

        Raises EndOfChannel after the peer closed cleanly (``close_code`` tells how),
        BrokenResourceError if the connection failed, ClosedResourceError after
        :meth:`aclose`, BusyResourceError if another task is receiving.
        """
        if self._receiving:
            if self._local_closed:
                # aclose() reads the close echo itself (no task was receiving): to a
                # task that comes to receive meanwhile the connection is closed.
                raise trio.ClosedResourceError("WebSocket was closed locally")
            raise trio.BusyResourceError("another task is already receiving")
        self._receiving = True
        try:
            core = self._core
            while True:
                event = core.poll_event()
                if event is None:
                    if self._local_closed or self._broken is not None or self._peer_closed:
                        self._check_receivable()
                    # Adaptive read size, inlined (one coroutine frame less per idle
                    # connection): exactly what a partial frame still needs, else a size
                    # that doubles while reads come back full and halves when they don't.
                    if core.skipping and self._socket is not None:
                        await self._skip_socket(self._socket, core)
                        continue
                    size = self._receive_size
                    missing = core.bytes_missing
                    want = size if missing <= size else min(missing, MAX_RECEIVE_SIZE)
                    data: bytes | bytearray
                    try:
                        sock = self._socket
                        if sock is not None:
                            got = None
                            fd = sock.fileno()
                            if self._drained and fd >= 0:
                                # _read_socket's usual case, inline: a coroutine less per read
                                await trio.lowlevel.wait_readable(fd)
                                fd = sock.fileno()
                                if fd >= 0:
                                    try:
                                        got = os.read(fd, want)
                                    except BlockingIOError:
                                        pass  # a spurious wake-up: _read_socket waits again
                            data = got if got is not None else await self._read_socket(sock, want)
                        else:
                            data = await self._stream.receive_some(want)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                        self._check_receivable()
                        raise self._failed(exc, "WebSocket transport failed") from exc
                    n = len(data)
                    self._drained = n < want >> 1
                    if n >= size:
                        self._receive_size = min(size * 2, MAX_RECEIVE_SIZE)
                    elif n < size >> 2 and size > MIN_RECEIVE_SIZE:
                        self._receive_size = size >> 1
                    self._bytes_received += n
                    if not data:
                        self._check_receivable()
                        self._set_close(CloseCode.ABNORMAL, "connection lost without a close")
                        await _close_before_raise(self._stream)
                        raise self._failed(None, "peer dropped the connection unclosed")
                    message = core.receive_message(data)  # one whole frame: no event
                    if message is not None:
                        self._messages_received += 1
                        if not self._local_closed:
                            return message
                    continue
                kind = type(event)
                if kind is MessageReceived:
                    self._messages_received += 1
                    if self._local_closed:
                        continue  # we are closing: late messages are dropped
                    return event.data  # type: ignore[union-attr]
                if kind is MessageDiscarded:
                    self._messages_received += 1
                    if self._local_closed:
                        continue
                    return event  # type: ignore[return-value]
                if kind is PingReceived:
                    await self._flush_replies()
                elif kind is CloseReceived:
                    await self._on_close_frame(event)  # type: ignore[arg-type]
                    self._check_receivable()
                elif kind is ProtocolFailed:
                    self._set_close(event.code, event.reason)  # type: ignore[union-attr]
                    await self._flush_replies()
                    await _close_before_raise(self._stream)
                    raise self._failed(None, f"protocol error: {event.reason}")  # type: ignore[union-attr]
        finally:
            self._receiving = False

    async def _skip_socket(self, sock: trio.socket.SocketType, core: WebSocketCore) -> None:
        """Read (and drop) a discarded payload through the shared buffer, no allocation."""
        await trio.lowlevel.checkpoint_if_cancelled()
        view = memoryview(_SKIP_BUFFER)[: min(core.skipping, len(_SKIP_BUFFER))]
        while True:
            fd = sock.fileno()
            if fd < 0:
                raise trio.ClosedResourceError("socket was closed")
            try:
                n = os.readv(fd, [view])
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError as exc:
                self._check_receivable()
                raise self._failed(exc, "WebSocket transport failed") from exc
            break
        if n == 0:
            self._check_receivable()
            self._set_close(CloseCode.ABNORMAL, "connection lost without a close")
            await _close_before_raise(self._stream)
            raise self._failed(None, "peer dropped the connection unclosed")
        self._bytes_received += n
        # Consumed before any checkpoint: no other connection touches the buffer meanwhile.
        core.receive(view[:n])
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def _read_socket(self, sock: trio.socket.SocketType, want: int) -> bytes:
        """``sock.recv(want)`` with one syscall fewer when the socket was drained.

        trio's ``recv`` always tries first and waits for readiness on EAGAIN; after a
        short read the socket is almost always empty, so wait first (a relay hop costs
        one read, one write and one epoll registration). A checkpoint either way.
        """
        if self._drained:
            # Another task may have closed the socket while this one was not waiting on
            # it (trio's close wakes waiters only): never wait on fd -1.
            fd = sock.fileno()
            if fd < 0:
                await trio.lowlevel.checkpoint()
                raise trio.ClosedResourceError("socket was closed")
            await trio.lowlevel.wait_readable(fd)  # the number: trio asks no fileno()
        else:
            fd = sock.fileno()
            if fd < 0:
                raise trio.ClosedResourceError("socket was closed")
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                data = os.read(fd, want)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return data
        while True:
            fd = sock.fileno()
            if fd < 0:
                raise trio.ClosedResourceError("socket was closed")
            try:
                return os.read(fd, want)
            except BlockingIOError:  # a spurious wakeup
                await trio.lowlevel.wait_readable(sock)

    async def _on_close_frame(self, event: CloseReceived) -> None:
        self._set_close(event.code, event.reason)
        if self._local_closed:
            # aclose() in another task is waiting for this echo.
            if self._close_done is not None:
                self._close_done.set()
            await trio.lowlevel.checkpoint()
            return
        self._peer_closed = True
        await self._flush_replies()
        await close_transport(self._stream)

    def _set_close(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason

    def _failed(
        self, cause: BaseException | None, message: str
    ) -> trio.BrokenResourceError | trio.ClosedResourceError:
        """Record a failure; the exception for the receiving task to raise."""
        error = trio.BrokenResourceError(message)
        self._mark_broken(cause if cause is not None else error)
        if self._local_closed:
            return trio.ClosedResourceError("WebSocket was closed locally")
        return error

    def _mark_broken(self, exc: BaseException) -> None:
        if self._broken is None:
            self._broken = exc
            self._set_close(CloseCode.ABNORMAL, "transport failed")
        if self._close_done is not None:
            self._close_done.set()

    # -- closing --

    async def aclose(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close with ``code``/``reason``: send a close frame, wait (bounded) for the echo.

        Idempotent; closes the transport even when cancelled.
        """
        if self._local_closed:
            await trio.lowlevel.checkpoint()
            return
        self._local_closed = True
        try:
            if self._broken is None and not self._peer_closed:
                with trio.move_on_after(self._close_timeout):
                    await self._closing_handshake(code, reason)
        finally:
            if self._close_done is not None:
                self._close_done.set()
            await close_transport(self._stream)

    async def _closing_handshake(self, code: int, reason: str) -> None:
        core = self._core
        frame = core.send_close(code, reason)
        if not frame:
            return
        self._set_close(code, reason)
        # Created before sending: a receiving task may read the echo before we get back.
        self._close_done = trio.Event()
        try:
            await self._send_locked(frame, check=False)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        if self._receiving:
            # Another task is reading; it sets the event when the echo arrives.
            await self._close_done.wait()
            return
        self._receiving = True
        try:
            while core.state is not ConnectionState.CLOSED:
                if core.poll_event() is not None:
                    continue  # late messages after our close are dropped
                data = await self._stream.receive_some(self._receive_size)
                if not data:
                    return
                core.receive(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            self._receiving = False

    async def __aenter__(self) -> WebSocketConnection:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
