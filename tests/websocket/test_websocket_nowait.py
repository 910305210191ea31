"""WebSocketConnection.try_send_nowait: a frame the kernel takes only in part keeps its
tail in the connection, which goes out before anything else, so frames never interleave."""

from __future__ import annotations

from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from darkswap_trio.websocket import WebSocketRequest, open_websocket, serve_websocket

MESSAGE = 512 * 1024


@asynccontextmanager
async def connection_pair(nursery):
    """(server-side connection, client) over loopback; the server side is driven by the test."""
    accepted: list = []
    ready, done = trio.Event(), trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        accepted.append(await request.accept())
        ready.set()
        await done.wait()

    listeners = await nursery.start(serve_websocket, handler, "127.0.0.1", 0)
    port = listeners[0].socket.getsockname()[1]
    async with open_websocket(f"ws://127.0.0.1:{port}/", max_message_size=1 << 20) as client:
        await ready.wait()
        try:
            yield accepted[0], client
        finally:
            done.set()


async def test_partial_write_keeps_the_tail_and_order(nursery):
    with trio.fail_after(10):
        async with connection_pair(nursery) as (server, client):
            # The client reads nothing yet: fill the kernel buffers with distinct messages.
            accepted = []
            for i in range(256):
                message = bytes([i]) * MESSAGE
                if not server.try_send_nowait(message):
                    break
                accepted.append(message)
                if server.unsent_bytes:
                    break
            assert accepted, "an empty socket takes at least part of a frame"
            tail = server.unsent_bytes
            assert 0 < tail <= MESSAGE, "a full socket buffer takes a frame only in part"
            # While a tail is pending nothing else may go out directly.
            assert not server.try_send_nowait(b"x")
            received = []

            async def read_all() -> None:
                for _ in range(len(accepted) + 1):
                    received.append(await client.receive())

            async with trio.open_nursery() as readers:
                readers.start_soon(read_all)
                await server.flush()  # the tail first ...
                assert server.unsent_bytes == 0
                await server.send(b"after")  # ... then the next frame, whole
            assert received[:-1] == accepted
            assert received[-1] == b"after"
            assert server.statistics().messages_sent == len(accepted) + 1
            # Idle again: the next frame goes out directly and whole.
            assert server.try_send_nowait("text")
            assert server.unsent_bytes == 0
            assert await client.receive() == "text"


async def test_try_send_nowait_refuses_while_a_send_is_in_progress(nursery):
    with trio.fail_after(10):
        async with connection_pair(nursery) as (server, _client):
            started = trio.Event()

            async def send_until_blocked() -> None:
                while True:
                    started.set()
                    await server.send(b"s" * MESSAGE)  # blocks once the buffers are full

            async with trio.open_nursery() as inner:
                inner.start_soon(send_until_blocked)
                await started.wait()
                await trio.testing.wait_all_tasks_blocked()
                # The sender task holds the send lock mid-frame: no direct write.
                assert not server.try_send_nowait(b"direct")
                inner.cancel_scope.cancel()
            # Cancelled mid-frame: the peer may hold half a frame, so the connection is
            # broken for every sender, the direct path included.
            with pytest.raises(trio.BrokenResourceError):
                server.try_send_nowait(b"direct")


async def test_binary_parts_on_a_full_socket_are_kept_whole_and_go_out_in_order(nursery):
    # The client side masks: a frame it encoded is kept (not refused) when the socket is
    # full, and goes out whole before anything else.
    with trio.fail_after(10):
        async with connection_pair(nursery) as (server, client):
            sent = []
            for i in range(256):
                message = (b"H" * 17, bytes([i]) * (64 * 1024))
                assert client.try_send_binary_nowait(*message)
                sent.append(message[0] + message[1])
                if client.unsent_bytes:
                    break
            assert client.unsent_bytes
            assert not client.try_send_binary_nowait(b"H", b"x")  # a tail is pending
            received = []

            async def read_all() -> None:
                for _ in range(len(sent) + 1):
                    received.append(await server.receive())

            async with trio.open_nursery() as readers:
                readers.start_soon(read_all)
                await client.flush()
                await client.send_binary(b"H", b"after")
            assert received == [*sent, b"Hafter"]
            assert client.statistics().messages_sent == len(sent) + 1
