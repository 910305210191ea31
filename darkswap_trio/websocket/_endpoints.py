"""WebSocket (RFC 6455) for trio: a thin driver around :mod:`darkswap_trio.proto.websocket._connection`.

Why not trio-websocket: it spends ~160 us of CPU per forwarded 64 KiB message, reads in
4 KiB pieces and holds ~19 KiB and a background task per idle connection. Here a
connection owns no task: :meth:`WebSocketConnection.receive` reads the socket in the
caller's task (answering pings on the way), reads are sized adaptively (small while
idle, up to 256 KiB under load, or exactly what a half-received frame still needs) and
a frame's header and payload leave in a single ``send_all``. A relay forwards without a
writer task: :meth:`WebSocketConnection.try_send_nowait` writes a frame at once when the
socket has room (``writev``, no joined copy), keeping any tail for the next send.

Errors follow trio: ClosedResourceError after our own close, BrokenResourceError (cause
chained) when the peer or the transport failed, EndOfChannel from ``receive`` after the
peer closed cleanly, BusyResourceError when two tasks receive at once.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import os
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, nullcontext
from functools import partial
from typing import Any, NoReturn
from urllib.parse import urlsplit

import trio

from ..proto.websocket import (
    MAX_HEADER_BYTES,
    CloseCode,
    HttpRequest,
    WebSocketCore,
    WebSocketHandshakeError,
    build_accept_response,
    build_http_response,
    build_upgrade_request,
    find_head_end_untrusted,
    is_upgrade_request,
    parse_request_untrusted,
    parse_response_untrusted,
    validate_upgrade_request,
    validate_upgrade_response,
)
from ._connection import (
    CLOSE_TIMEOUT,
    MIN_RECEIVE_SIZE,
    Headers,
    WebSocketConnection,
    WebSocketStatistics,
    stream_remote_address,
)
from ._transport import accept_loop, close_now, close_transport

logger = logging.getLogger("darkswap_trio.websocket")

__all__ = [
    "WebSocketConnection",
    "WebSocketHandshakeError",
    "WebSocketRequest",
    "WebSocketStatistics",
    "open_websocket",
    "serve_websocket",
]


class WebSocketRequest:
    """An HTTP request received on a WebSocket port, before it is answered.

    ``is_websocket`` is False for plain HTTP requests (``GET /healthz``): answer those
    with :meth:`reject` and any status.
    """

    __slots__ = (
        "remote_address",
        "path",
        "method",
        "is_websocket",
        "_stream",
        "_key",
        "_head",
        "_leftover",
        "_max_message_size",
        "_discard_above",
        "_answered",
        "_connection",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        request: HttpRequest,
        *,
        head: bytes,
        key: str | None,
        leftover: bytes,
        remote_address: tuple[str, int],
        max_message_size: int,
        discard_above: int | None = None,
    ) -> None:
        self.remote_address = remote_address
        self.method = request.method
        self.path = request.target
        self._head = head  # kept raw, see WebSocketConnection.headers
        self.is_websocket = key is not None
        self._stream = stream
        self._key = key
        self._leftover = leftover
        self._max_message_size = max_message_size
        self._discard_above = discard_above
        self._answered = False
        self._connection: WebSocketConnection | None = None

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (case-insensitive), several joined by ``", "``."""
        return parse_request_untrusted(self._head).header(name.lower())

    @property
    def headers(self) -> list[tuple[str, str]]:
        """Request header fields, names lower-case (parsed from the raw head on access)."""
        return list(parse_request_untrusted(self._head).headers)

    async def accept(self, *, extra_headers: Headers = ()) -> WebSocketConnection:
        """Complete the upgrade (101) and return the connection.

        For a request that is not a WebSocket upgrade, answers 426 and raises
        BrokenResourceError.
        """
        if self._answered:
            raise RuntimeError("request already answered")
        if self._key is None:
            await self.reject(426, b"WebSocket upgrade required\n")
            raise trio.BrokenResourceError("not a WebSocket upgrade request")
        self._answered = True
        core = WebSocketCore(
            is_client=False,
            max_message_size=self._max_message_size,
            discard_above=self._discard_above,
        )
        connection = WebSocketConnection(
            self._stream, core, remote_address=self.remote_address, path=self.path,
            head=self._head,
        )  # fmt: skip
        self._connection = connection
        response = build_accept_response(self._key, extra_headers)
        try:
            rest = _write_nowait(self._stream, response)
            if rest:
                await self._stream.send_all(rest)
            else:  # the receive that follows an accept waits anyway
                await trio.lowlevel.checkpoint_if_cancelled()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            connection._mark_broken(exc)
            connection._local_closed = True
            raise trio.BrokenResourceError("client left during the handshake") from exc
        if self._leftover:
            connection._bytes_received += len(self._leftover)
            core.receive(self._leftover)
            self._leftover = b""
        return connection

    async def reject(
        self,
        status: int,
        body: bytes = b"",
        *,
        content_type: str = "text/plain; charset=utf-8",
        extra_headers: Headers = (),
    ) -> None:
        """Answer with a plain HTTP response (any status) and close the connection."""
        if self._answered:
            raise RuntimeError("request already answered")
        self._answered = True
        response = build_http_response(
            status, body, content_type=content_type, extra_headers=extra_headers
        )
        try:
            with trio.move_on_after(CLOSE_TIMEOUT):
                await self._stream.send_all(response)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await close_transport(self._stream)


MAX_REJECTION_BODY = 64 * 1024


class WebSocketRejected(WebSocketHandshakeError):
    """The server answered the upgrade with an HTTP status other than 101.

    ``status`` and ``body`` (at most 64 KiB) say why, e.g. a relay's 503 with its
    Error JSON; ``headers`` are the response's (names lower-case), e.g. ``retry-after``.
    """

    def __init__(
        self,
        status: int,
        reason: str,
        body: bytes,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(f"server answered {status} {reason}", status)
        self.reason = reason
        self.body = body
        self.headers = headers


async def _read_rejection_body(stream: trio.abc.Stream, response: Any, already: bytes) -> bytes:
    """Read a non-101 response's body (Content-Length bounded, else until EOF/limit)."""
    try:
        wanted = int(response.header("content-length") or MAX_REJECTION_BODY)
    except ValueError:
        wanted = MAX_REJECTION_BODY
    wanted = min(max(wanted, 0), MAX_REJECTION_BODY)
    body = bytearray(already[:wanted])
    with trio.move_on_after(2):  # a body is a courtesy; never hang on it
        while len(body) < wanted:
            try:
                data = await stream.receive_some(wanted - len(body))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                break
            if not data:
                break
            body += data
    return bytes(body)


def _write_nowait(stream: trio.abc.Stream, data: bytes) -> bytes:
    """Write what the socket takes now (plain TCP only); returns the rest to send_all.

    Saves trio's send_all machinery (~10 us) on the 101 of every connection: the
    socket buffer of a fresh connection always has room for it.
    """
    if type(stream) is not trio.SocketStream:
        return data
    fd = stream.socket.fileno()
    if fd < 0:
        raise trio.ClosedResourceError("socket was closed")
    try:
        sent = os.write(fd, data)
    except BlockingIOError:
        return data
    except OSError as exc:
        raise trio.BrokenResourceError(f"socket write failed: {exc}") from exc
    return data[sent:]


def _read_head_nowait(stream: trio.abc.Stream, buffer: bytearray) -> bool | None:
    """Read what the kernel already holds of the HTTP head into ``buffer`` (plain TCP),
    without waiting. True: the head is complete; None: EOF before any byte.

    Under load a connection is accepted late and its request is already there: then no
    deadline scope and no wait for readability are needed (~20 us per connection).
    """
    if type(stream) is not trio.SocketStream:
        return False
    fd = stream.socket.fileno()
    try:
        data = os.read(fd, MIN_RECEIVE_SIZE) if fd >= 0 else b""
    except BlockingIOError:
        return False
    except OSError:
        return None  # reset before the request: nothing to answer
    if not data:
        return None
    buffer += data
    return find_head_end_untrusted(buffer, MAX_HEADER_BYTES) is not None


async def _read_head(
    stream: trio.abc.Stream, buffer: bytearray | None = None
) -> tuple[bytes, bytes] | None:
    """Read an HTTP head; returns (head, bytes after it) or None on EOF before any byte.

    ``buffer``: bytes of it read already (see _read_head_nowait)."""
    buffer = bytearray() if buffer is None else buffer
    end = find_head_end_untrusted(buffer, MAX_HEADER_BYTES) if buffer else None
    if end is not None:
        return bytes(buffer[:end]), bytes(buffer[end:])
    while True:
        data = await stream.receive_some(MIN_RECEIVE_SIZE)
        if not data:
            if buffer:
                raise WebSocketHandshakeError("connection closed inside the HTTP head")
            return None
        buffer += data
        end = find_head_end_untrusted(buffer, MAX_HEADER_BYTES)
        if end is not None:
            return bytes(buffer[:end]), bytes(buffer[end:])


async def _serve_one(
    stream: trio.abc.Stream,
    remote_address: tuple[str, int],
    handler: Callable[[WebSocketRequest], Awaitable[object]],
    ssl_context: ssl.SSLContext | None,
    max_message_size: int,
    handshake_timeout: float,
    discard_above: int | None = None,
    admit: Callable[[trio.abc.Stream, tuple[str, int]], Awaitable[object]] | None = None,
    release: Callable[[object], object] | None = None,
) -> None:
    ticket = None
    if admit is not None:
        try:
            ticket = await admit(stream, remote_address)
        finally:
            if ticket is None:  # refused (or admit failed): nothing else happens here
                await close_transport(stream)
        if ticket is None:
            return
    if ssl_context is not None:
        stream = trio.SSLStream(stream, ssl_context, server_side=True, https_compatible=True)
    request: WebSocketRequest | None = None
    buffer = bytearray()
    try:
        try:
            complete = _read_head_nowait(stream, buffer)
        except WebSocketHandshakeError:
            complete = False  # too large: _read_head raises it again, answered below
        if complete is None:
            return
        # The deadline scope only when the head has to be waited for.
        with nullcontext() if complete else trio.move_on_after(handshake_timeout):
            try:
                received = await _read_head(stream, buffer)
                if received is not None:
                    head, leftover = received
                    http_request = parse_request_untrusted(head)
                    key = None
                    if is_upgrade_request(http_request):
                        key = validate_upgrade_request(http_request)
                    request = WebSocketRequest(
                        stream, http_request, head=head, key=key, leftover=leftover,
                        remote_address=remote_address, max_message_size=max_message_size,
                        discard_above=discard_above,
                    )  # fmt: skip
                    del http_request, received, leftover  # the request keeps what it needs
            except WebSocketHandshakeError as exc:
                logger.debug("bad handshake from %s: %s", remote_address, exc)
                response = build_http_response(exc.status, f"{exc}\n".encode())
                try:
                    await stream.send_all(response)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        if request is None:
            return
        try:
            await handler(request)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.EndOfChannel) as exc:
            # The peer went away while the handler used the connection: routine.
            logger.debug("WebSocket handler for %s ended: %r", remote_address, exc)
        except Exception:
            logger.exception("WebSocket handler for %s failed", remote_address)
            if request._connection is not None:
                await request._connection.aclose(CloseCode.INTERNAL_ERROR, "internal error")
        if request._connection is not None:
            await request._connection.aclose()
        elif not request._answered:
            await request.reject(500, b"request not answered\n")
    finally:
        if ticket is not None and release is not None:
            release(ticket)
        await close_transport(stream)


async def _dual_stack_listener(port: int, reuse_port: bool = False) -> trio.SocketListener:
    """One IPv6 socket that also accepts IPv4 (as ::ffff:a.b.c.d).

    trio.open_tcp_listeners(host=None) binds one socket per family, which with port 0
    yields two different ports; a single dual-stack socket keeps one port for both.
    """
    sock = trio.socket.socket(trio.socket.AF_INET6, trio.socket.SOCK_STREAM)
    try:
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
        sock.setsockopt(trio.socket.IPPROTO_IPV6, trio.socket.IPV6_V6ONLY, 0)
        await sock.bind(("::", port))
        sock.listen(1024)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


async def _reuse_port_listeners(host: str | None, port: int) -> list[trio.SocketListener]:
    """Like trio.open_tcp_listeners, with SO_REUSEPORT: processes binding the same port
    share its connections, spread by the kernel (relay workers)."""
    infos = await trio.socket.getaddrinfo(
        host, port, type=trio.socket.SOCK_STREAM, flags=trio.socket.AI_PASSIVE
    )
    listeners: list[trio.SocketListener] = []
    try:
        for family, kind, proto, _, address in infos:
            sock = trio.socket.socket(family, kind, proto)
            try:
                sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
                sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
                if family == trio.socket.AF_INET6:
                    sock.setsockopt(trio.socket.IPPROTO_IPV6, trio.socket.IPV6_V6ONLY, 1)
                await sock.bind(address)
                sock.listen(1024)
            except BaseException:
                sock.close()
                raise
            listeners.append(trio.SocketListener(sock))
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    return listeners


async def serve_websocket(
    handler: Callable[[WebSocketRequest], Awaitable[object]],
    host: str | None,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    max_message_size: int = 1 << 20,
    handshake_timeout: float = 10.0,
    handler_nursery: trio.Nursery | None = None,
    admit: Callable[[trio.abc.Stream, tuple[str, int]], Awaitable[object]] | None = None,
    release: Callable[[object], object] | None = None,
    discard_above: int | None = None,
    receive_buffer: int = 0,
    reuse_port: bool = False,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Listen on ``host``:``port`` and await ``handler(request)`` for every connection.

    Each connection runs in one task in ``handler_nursery`` (or an internal nursery).
    ``handshake_timeout`` bounds reading the HTTP request; malformed upgrade requests
    are answered 400/426 without calling the handler. A handler's exception is logged
    and closes only its own connection (1011). When the handler returns, its
    connection is closed (1000). ``task_status.started()`` gets the listeners.

    ``await admit(stream, remote_address)``, if given, runs for each accepted connection
    before anything is read from it (before TLS). It returns a ticket, or None to refuse
    (it may answer on the stream itself; the stream is closed afterwards). For every
    ticket, ``release(ticket)`` is called once the connection is done.

    ``discard_above``: a received data message above this size (up to
    ``max_message_size``) is skipped unread and returned by ``receive()`` as a
    :class:`~darkswap_trio.proto.websocket._connection.MessageDiscarded`, so one connection never
    buffers more than about ``discard_above`` bytes of a message.

    ``receive_buffer``: if not 0, the kernel receive buffer (SO_RCVBUF) of every accepted
    socket, inherited from the listeners (no autotuning): what a peer that is not being
    read can make the kernel hold for it.

    ``reuse_port``: bind with SO_REUSEPORT (Linux), so that several processes serving
    the same port share its connections.
    """
    if host == "::":
        listeners = [await _dual_stack_listener(port, reuse_port)]
    elif reuse_port:
        listeners = await _reuse_port_listeners(host, port)
    else:
        listeners = await trio.open_tcp_listeners(port, host=host)
    if receive_buffer:
        for listener in listeners:
            listener.socket.setsockopt(
                trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, receive_buffer
            )

    # A partial, not a wrapper coroutine: one frame less held by every idle connection.
    serve_stream: Callable[[trio.SocketStream, tuple[str, int]], Awaitable[None]] = partial(
        _serve_one, handler=handler, ssl_context=ssl_context,
        max_message_size=max_message_size, handshake_timeout=handshake_timeout,
        discard_above=discard_above, admit=admit, release=release,
    )  # fmt: skip
    # Not trio.serve_listeners: it closes each stream again after _serve_one did
    # (see _transport.py) and its accept drops the peer address (a getpeername each).
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(accept_loop, listener, handler_nursery or nursery, serve_stream)
        task_status.started(listeners)
    raise AssertionError("the accept loops returned")  # pragma: no cover


async def _open_tcp(host: str, port: int) -> trio.SocketStream:
    """A TCP connection; an IP literal is dialled directly.

    trio.open_tcp_stream races resolved addresses in a nursery (happy eyeballs): for
    the one address of a literal that costs ~250 us of CPU per connection, a large
    part of what a peer spends registering with a relay.
    """
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return await trio.open_tcp_stream(host, port)
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


@asynccontextmanager
async def open_websocket(
    url: str,
    *,
    ssl_context: ssl.SSLContext | None = None,
    connect_timeout: float | None = 10.0,
    max_message_size: int = 1 << 20,
    extra_headers: Headers = (),
) -> AsyncIterator[WebSocketConnection]:
    """Connect to a ``ws://`` or ``wss://`` URL (IPv6 hosts in brackets).

    Raises OSError if the TCP connection fails, trio.TooSlowError after
    ``connect_timeout``, WebSocketHandshakeError if the server refuses the upgrade.
    ``connect_timeout=None``: no deadline of its own (a caller's cancel scope bounds the
    connect, e.g. one deadline for the connect and what follows it).
    The connection is closed (1000) when the block exits.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
    secure = parts.scheme == "wss"
    host = parts.hostname
    port = parts.port or (443 if secure else 80)
    host_header = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        host_header += f":{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    deadline = nullcontext() if connect_timeout is None else trio.fail_after(connect_timeout)
    with deadline:
        stream: trio.abc.Stream = await _open_tcp(host, port)
        try:
            remote_address = stream_remote_address(stream)
            if secure:
                context = ssl_context or ssl.create_default_context()
                stream = trio.SSLStream(
                    stream, context, server_hostname=host, https_compatible=True
                )
                await stream.do_handshake()
            await stream.send_all(build_upgrade_request(host_header, target, key, extra_headers))
            head = await _read_head(stream)
            if head is None:
                raise WebSocketHandshakeError("server closed the connection during the handshake")
            response = parse_response_untrusted(head[0])
            if response.status != 101:
                body = await _read_rejection_body(stream, response, head[1])
                raise WebSocketRejected(response.status, response.reason, body, response.headers)
            validate_upgrade_response(response, key)
        except BaseException:
            if not close_now(stream):  # plain TCP: closed without a checkpoint
                await trio.aclose_forcefully(stream)
            raise
    core = WebSocketCore(is_client=True, max_message_size=max_message_size)
    connection = WebSocketConnection(
        stream, core, remote_address=remote_address, path=target, head=head[0]
    )
    if head[1]:
        connection._bytes_received += len(head[1])
        core.receive(head[1])
    try:
        yield connection
    except Exception:
        await connection.aclose(CloseCode.INTERNAL_ERROR, "client error")
        raise
    finally:
        await connection.aclose()
