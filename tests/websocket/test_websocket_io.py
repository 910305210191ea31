"""WebSocket driver over real loopback sockets: our client and server, and interop with
trio-websocket and the `websockets` package."""

from __future__ import annotations

import socket
import ssl
import tempfile
from functools import partial

import pytest
import trio
import trio.testing
import trio_websocket
from websockets.sync.client import connect as sync_connect

from darkswap_trio.proto.websocket._handshake import (
    build_accept_response,
    parse_request_untrusted,
    validate_upgrade_request,
)
from darkswap_trio.testing._tls import SelfSignedCertificate
from darkswap_trio.websocket import (
    WebSocketHandshakeError,
    WebSocketRequest,
    open_websocket,
    serve_websocket,
)

LIMIT = 10


async def echo_handler(request: WebSocketRequest) -> None:
    """Echo every message; answer plain HTTP with 200 ok."""
    if not request.is_websocket:
        await request.reject(200, b"ok")
        return
    ws = await request.accept()
    while True:
        try:
            message = await ws.receive()
        except (trio.EndOfChannel, trio.BrokenResourceError):
            return
        if message == "close-please":
            await ws.aclose(4002, "server says bye")
            return
        await ws.send(message)


async def start_server(nursery: trio.Nursery, handler=echo_handler, **kwargs) -> int:
    listeners = await nursery.start(partial(serve_websocket, handler, "127.0.0.1", 0, **kwargs))
    return listeners[0].socket.getsockname()[1]


async def raw_exchange(port: int, request: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        chunks = []
        while data := await stream.receive_some(65536):
            chunks.append(data)
    return b"".join(chunks)


async def test_echo_text_binary_and_large():
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery)
            async with open_websocket(f"ws://127.0.0.1:{port}/path?q=1") as ws:
                await ws.send("héllo")
                assert await ws.receive() == "héllo"
                await ws.send(b"\x00\x01")
                assert await ws.receive() == b"\x00\x01"
                await ws.send(b"")
                assert await ws.receive() == b""
                big = bytes(range(256)) * 4096  # 1 MiB, exactly the default limit
                await ws.send(big)
                assert await ws.receive() == big
                stats = ws.statistics()
                assert stats.messages_sent == stats.messages_received == 4
                assert stats.bytes_received > len(big)
                assert stats.receive_buffer_bytes == 0
                assert stats.receive_size > 4096  # reads grew while the 1 MiB message arrived
                for _ in range(8):  # small messages: the read size shrinks back
                    await ws.send("small")
                    assert await ws.receive() == "small"
                assert ws.statistics().receive_size < stats.receive_size
                assert ws.path == "/path?q=1"
            assert ws.close_code == 1000
            nursery.cancel_scope.cancel()


async def test_request_fields_and_plain_http_reject():
    seen: list[WebSocketRequest] = []

    async def handler(request: WebSocketRequest) -> None:
        seen.append(request)
        if request.path == "/healthz":
            await request.reject(200, b"ok", content_type="text/plain")
        else:
            ws = await request.accept()
            await ws.send(f"{request.header('x-token')}")

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, handler)
            response = await raw_exchange(port, b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
            assert response.startswith(b"HTTP/1.1 200 OK\r\n")
            assert response.endswith(b"\r\n\r\nok")
            assert seen[0].is_websocket is False
            async with open_websocket(
                f"ws://127.0.0.1:{port}/ws", extra_headers=[("X-Token", "t1")]
            ) as ws:
                assert await ws.receive() == "t1"
                with pytest.raises(trio.EndOfChannel):
                    await ws.receive()  # handler returned: server closed with 1000
                assert ws.close_code == 1000
            assert seen[1].remote_address[0] == "127.0.0.1"
            assert seen[1].remote_address[1] > 0
            nursery.cancel_scope.cancel()


async def test_close_from_client_with_code():
    results = []
    results_done = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        with pytest.raises(trio.EndOfChannel):
            await ws.receive()
        results.append((ws.close_code, ws.close_reason))
        results_done.set()
        with pytest.raises(trio.BrokenResourceError):
            await ws.send("too late")

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, handler)
            async with open_websocket(f"ws://127.0.0.1:{port}/") as ws:
                await ws.aclose(4001, "client says bye")
                assert ws.close_code == 4001
                with pytest.raises(trio.ClosedResourceError):
                    await ws.send("x")
                with pytest.raises(trio.ClosedResourceError):
                    await ws.receive()
            await results_done.wait()
            assert results == [(4001, "client says bye")]
            nursery.cancel_scope.cancel()


async def test_close_from_server_with_code():
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery)
            async with open_websocket(f"ws://127.0.0.1:{port}/") as ws:
                await ws.send("close-please")
                with pytest.raises(trio.EndOfChannel):
                    await ws.receive()
                assert (ws.close_code, ws.close_reason) == (4002, "server says bye")
                with pytest.raises(trio.EndOfChannel):
                    await ws.receive()
            nursery.cancel_scope.cancel()


async def test_oversize_message_closes_1009():
    codes = []
    codes_done = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        with pytest.raises(trio.BrokenResourceError):
            await ws.receive()
        codes.append(ws.close_code)
        codes_done.set()

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, handler, max_message_size=1000)
            async with open_websocket(f"ws://127.0.0.1:{port}/") as ws:
                await ws.send(b"x" * 1001)
                with pytest.raises(trio.EndOfChannel):
                    await ws.receive()
                assert ws.close_code == 1009
            await codes_done.wait()
            assert codes == [1009]
            nursery.cancel_scope.cancel()


async def test_handshake_timeout_and_bad_handshake():
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, handshake_timeout=0.2)
            # A client that never finishes its request is dropped after the timeout.
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"GET / HTTP/1.1\r\n")
            start = trio.current_time()
            assert await stream.receive_some(100) == b""
            assert 0.15 <= trio.current_time() - start < 5
            await stream.aclose()
            bad_key = (
                b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            assert (await raw_exchange(port, bad_key)).startswith(b"HTTP/1.1 400 ")
            bad_version = bad_key.replace(b"short", b"dGhlIHNhbXBsZSBub25jZQ==").replace(
                b"Version: 13", b"Version: 8"
            )
            response = await raw_exchange(port, bad_version)
            assert response.startswith(b"HTTP/1.1 426 ")
            assert b"Sec-WebSocket-Version: 13" in response
            garbage = await raw_exchange(port, b"\x16\x03\x01garbage\r\n\r\n")
            assert garbage.startswith(b"HTTP/1.1 400 ")
            nursery.cancel_scope.cancel()


async def test_client_rejects_non_101_and_handler_errors_are_contained():
    calls = []

    async def handler(request: WebSocketRequest) -> None:
        calls.append(request.path)
        if request.path == "/deny":
            await request.reject(403, b"no")
            return
        ws = await request.accept()
        await ws.receive()
        raise RuntimeError("handler bug")

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, handler)
            with pytest.raises(WebSocketHandshakeError, match="403"):
                async with open_websocket(f"ws://127.0.0.1:{port}/deny"):
                    pass
            for _ in range(2):  # the server survives a crashing handler
                async with open_websocket(f"ws://127.0.0.1:{port}/crash") as ws:
                    await ws.send("boom")
                    with pytest.raises(trio.EndOfChannel):
                        await ws.receive()
                    assert ws.close_code == 1011
            assert calls == ["/deny", "/crash", "/crash"]
            nursery.cancel_scope.cancel()


async def test_concurrent_senders_and_ping():
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery)
            async with open_websocket(f"ws://127.0.0.1:{port}/") as ws:

                async def sender(tag: int) -> None:
                    for i in range(50):
                        await ws.send(bytes([tag]) * (1000 + i * 100))

                async with trio.open_nursery() as senders:
                    for tag in range(4):
                        senders.start_soon(sender, tag)
                    await ws.ping(b"are you there")
                    received = [await ws.receive() for _ in range(200)]
                for tag in range(4):
                    mine = [m for m in received if m[0] == tag]
                    assert [len(m) for m in mine] == [1000 + i * 100 for i in range(50)]
                    assert all(m == m[:1] * len(m) for m in mine)
                with pytest.raises(ExceptionGroup) as info:
                    async with trio.open_nursery() as readers:
                        readers.start_soon(ws.receive)
                        readers.start_soon(ws.receive)
                assert info.group_contains(trio.BusyResourceError)
            nursery.cancel_scope.cancel()


async def test_peer_drops_without_close_is_broken():
    got = []
    got_done = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        with pytest.raises(trio.BrokenResourceError):
            await ws.receive()
        got.append(ws.close_code)
        got_done.set()

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, handler)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(
                b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n"
            )
            head = await stream.receive_some(4096)
            assert head.startswith(b"HTTP/1.1 101 ")
            assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in head
            await stream.aclose()
            await got_done.wait()
            assert got == [1006]
            nursery.cancel_scope.cancel()


# --- interop -----------------------------------------------------------------------------


async def test_trio_websocket_client_to_our_server():
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery)
            async with trio_websocket.open_websocket(
                "127.0.0.1", port, "/tw", use_ssl=False, max_message_size=2 << 20
            ) as ws:
                await ws.send_message("text ✓")
                assert await ws.get_message() == "text ✓"
                big = b"\xab" * (1 << 20)
                await ws.send_message(big)
                assert await ws.get_message() == big
                await ws.ping(b"ping-payload")  # returns only once our pong arrives
                await ws.aclose(4003, "tw bye")
                assert ws.closed.code == 4003
            nursery.cancel_scope.cancel()


async def test_websockets_sync_client_to_our_server():
    def client(port: int) -> tuple[object, ...]:
        with sync_connect(f"ws://127.0.0.1:{port}/sync", max_size=2 << 20) as ws:
            ws.send("hi")
            text = ws.recv(timeout=5)
            ws.send(b"\x00" * 300_000)
            binary = ws.recv(timeout=5)
            latency = ws.ping(b"x").wait(5)
            ws.send("close-please")
            try:
                ws.recv(timeout=5)
            except Exception as exc:  # ConnectionClosed (the "Error" flavour for 4002)
                closed = (type(exc).__name__, ws.close_code, ws.close_reason)
        return text, len(binary), latency, closed

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery)
            text, size, pong, closed = await trio.to_thread.run_sync(client, port)
            assert (text, size, pong) == ("hi", 300_000, True)
            assert closed == ("ConnectionClosedError", 4002, "server says bye")
            nursery.cancel_scope.cancel()


async def test_our_client_to_trio_websocket_server():
    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        while True:
            try:
                message = await ws.get_message()
            except trio_websocket.ConnectionClosed:
                return
            await ws.send_message(message)

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None
            )
            port = server.port
            async with open_websocket(f"ws://127.0.0.1:{port}/", max_message_size=2 << 20) as ws:
                await ws.send("from us")
                assert await ws.receive() == "from us"
                big = bytes(range(256)) * 4096
                await ws.send(big)
                assert await ws.receive() == big
                await ws.ping(b"p")
                await ws.send(b"after ping")
                assert await ws.receive() == b"after ping"
                await ws.aclose(4004, "done")
            assert ws.close_code == 4004
            nursery.cancel_scope.cancel()


# --- TLS and IPv6 ------------------------------------------------------------------------


def make_tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    cert = SelfSignedCertificate.generate()
    with tempfile.TemporaryDirectory() as tmp:
        server = cert.server_context(tmp)
    return server, cert.client_context()


async def test_wss_with_self_signed_certificate():
    server_ctx, client_ctx = make_tls_contexts()
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, ssl_context=server_ctx)
            async with open_websocket(f"wss://127.0.0.1:{port}/", ssl_context=client_ctx) as ws:
                await ws.send("secure")
                assert await ws.receive() == "secure"
                big = b"\x5a" * 500_000
                await ws.send(big)
                assert await ws.receive() == big
            assert ws.close_code == 1000
            # A client that does not trust the certificate fails the TLS handshake.
            with pytest.raises((trio.BrokenResourceError, ssl.SSLError)):
                async with open_websocket(f"wss://127.0.0.1:{port}/"):
                    pass
            nursery.cancel_scope.cancel()


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
async def test_ipv6_loopback():
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(serve_websocket, echo_handler, "::1", 0)
            port = listeners[0].socket.getsockname()[1]
            async with open_websocket(f"ws://[::1]:{port}/v6") as ws:
                await ws.send("six")
                assert await ws.receive() == "six"
            nursery.cancel_scope.cancel()


# --- closing edge cases ------------------------------------------------------------------


async def test_aclose_while_another_task_receives():
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery)
            async with open_websocket(f"ws://127.0.0.1:{port}/") as ws:
                outcome = []

                async def reader() -> None:
                    try:
                        await ws.receive()
                    except trio.ClosedResourceError:
                        outcome.append("closed")

                async with trio.open_nursery() as inner:
                    inner.start_soon(reader)
                    await trio.testing.wait_all_tasks_blocked()
                    # The reader task reads the echo; aclose must not wait for its timeout.
                    with trio.fail_after(2):
                        await ws.aclose(4005, "busy reader")
                assert outcome == ["closed"]
                assert ws.close_code == 4005
            nursery.cancel_scope.cancel()


async def test_aclose_is_bounded_when_the_peer_never_answers(autojump_clock):
    async def mute_peer(stream: trio.SocketStream) -> None:
        head = await stream.receive_some(4096)  # the whole upgrade request on loopback
        key = validate_upgrade_request(parse_request_untrusted(head))
        await stream.send_all(build_accept_response(key))
        await trio.sleep_forever()  # never answers the close frame

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, mute_peer, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        async with open_websocket(f"ws://127.0.0.1:{port}/") as ws:
            start = trio.current_time()
            await ws.aclose()
            assert 5.0 <= trio.current_time() - start < 6  # CLOSE_TIMEOUT, in virtual time
            assert ws.closed and ws.close_code == 1000
        nursery.cancel_scope.cancel()


async def test_aclose_when_cancelled_still_closes_the_transport():
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery)
            async with open_websocket(f"ws://127.0.0.1:{port}/") as ws:
                with trio.CancelScope() as scope:
                    scope.cancel()
                    await ws.aclose()
                assert ws.closed
                with pytest.raises(trio.ClosedResourceError):
                    await ws.send("x")
                with pytest.raises(trio.ClosedResourceError):
                    await ws._stream.send_all(b"x")  # the transport itself is closed
            nursery.cancel_scope.cancel()
