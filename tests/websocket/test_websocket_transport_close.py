"""Plain TCP connections are closed without trio.aclose_forcefully (websocket/_transport.py):
its cancelled checkpoint raised and caught a Cancelled per connection, and the server's
listener closed each connection a second time. Every refused or broken connection of a
relay restart storm paid it, on the relay and in the SDK."""

from __future__ import annotations

import socket

import pytest
import trio

from darkswap_trio.websocket import WebSocketRejected, open_websocket, serve_websocket


@pytest.fixture
def forceful_closes(monkeypatch):
    calls: list[object] = []
    original = trio.aclose_forcefully

    async def counting(resource):
        calls.append(resource)
        await original(resource)

    monkeypatch.setattr(trio, "aclose_forcefully", counting)
    return calls


async def serve(nursery, handler) -> str:
    listeners = await nursery.start(serve_websocket, handler, "127.0.0.1", 0)
    return f"ws://127.0.0.1:{listeners[0].socket.getsockname()[1]}/"


async def test_a_dropped_connection_is_closed_plainly_on_both_ends(nursery, forceful_closes):
    served = trio.Event()
    seen_address: list[tuple[str, int]] = []

    async def handler(request) -> None:
        seen_address.append(request.remote_address)
        ws = await request.accept()
        try:
            await ws.receive()
        finally:
            served.set()

    with trio.fail_after(10):
        url = await serve(nursery, handler)
        async with open_websocket(url) as ws:
            local = ws._stream.socket.getsockname()
            # Both ends see the connection end without a close frame (a killed relay).
            ws._stream.socket.shutdown(socket.SHUT_RDWR)
            with pytest.raises(trio.BrokenResourceError):
                await ws.receive()
        await served.wait()
        await trio.testing.wait_all_tasks_blocked()
    assert seen_address == [(local[0], local[1])]  # from accept(2), no getpeername
    assert forceful_closes == []


async def test_a_refused_upgrade_is_closed_plainly_on_both_ends(nursery, forceful_closes):
    async def handler(request) -> None:
        await request.reject(503, b"busy\n", extra_headers=(("Retry-After", "3"),))

    with trio.fail_after(10):
        url = await serve(nursery, handler)
        with pytest.raises(WebSocketRejected) as refused:
            async with open_websocket(url):
                pass
        assert refused.value.status == 503
        await trio.testing.wait_all_tasks_blocked()
    assert forceful_closes == []


async def test_a_refused_connect_raises_oserror_and_leaves_no_socket():
    with socket_bound_and_closed() as port, trio.fail_after(10):
        with pytest.raises(OSError):
            async with open_websocket(f"ws://127.0.0.1:{port}/"):
                pass


def socket_bound_and_closed():
    import contextlib

    @contextlib.contextmanager
    def port():
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        number = s.getsockname()[1]
        s.close()
        yield number

    return port()
