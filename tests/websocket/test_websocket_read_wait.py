"""When a receive waits for readiness before reading (``WebSocketConnection._read_socket``).

After a read that came back far short of its size the socket is probably empty: the next
read waits first (no EAGAIN round trip). After a read that filled more than half its size
(a relay's bulk stream) more has usually arrived: the next read goes straight to the
socket, without an epoll registration, an epoll_wait and a scheduler round per read.
"""

from __future__ import annotations

import trio
from test_websocket_nowait import connection_pair


def count_waits(monkeypatch, sock) -> list[int]:
    """Count wait_readable() calls on ``sock`` (or its number) from now on."""
    calls = [0]
    real = trio.lowlevel.wait_readable

    async def counting(fd) -> None:
        if fd is sock or fd == sock.fileno():
            calls[0] += 1
        await real(fd)

    monkeypatch.setattr(trio.lowlevel, "wait_readable", counting)
    return calls


async def exchange(server, client, payload: bytes) -> None:
    """``payload`` once, then again, the second already in the server's socket."""
    await client.send(payload)
    assert await server.receive() == payload
    await client.send(payload)
    await trio.lowlevel.wait_readable(server._socket)  # arrived: no wait is needed


async def test_after_a_short_read_the_next_read_waits_first(nursery, monkeypatch):
    with trio.fail_after(10):
        async with connection_pair(nursery) as (server, client):
            payload = b"x" * 100  # a read of ~100 bytes of 4 KiB
            await exchange(server, client, payload)
            waits = count_waits(monkeypatch, server._socket)
            assert await server.receive() == payload
            assert waits[0] == 1


async def test_after_a_read_over_half_its_size_the_next_read_goes_straight(nursery, monkeypatch):
    with trio.fail_after(10):
        async with connection_pair(nursery) as (server, client):
            payload = b"y" * 3000  # a read of ~3 KiB of 4 KiB: not drained
            await exchange(server, client, payload)
            waits = count_waits(monkeypatch, server._socket)
            assert await server.receive() == payload
            assert waits[0] == 0
