"""A socket closed by another task while the receiving task is not waiting on it (a relay
evicting a connection, say) ends the next receive with trio's ClosedResourceError family,
never ``ValueError: file descriptor cannot be a negative integer`` from waiting on fd -1."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from test_websocket_nowait import connection_pair


async def test_receive_after_an_outside_close_raises_a_trio_error(nursery):
    with trio.fail_after(10):
        async with connection_pair(nursery) as (server, client):
            await client.send(b"one")
            assert await server.receive() == b"one"  # a short read: the socket is drained
            # Closed from outside while no task waits on it: trio has no waiter to wake.
            server._stream.socket.close()
            with pytest.raises((trio.ClosedResourceError, trio.BrokenResourceError)):
                await server.receive()


async def test_an_outside_close_wakes_a_waiting_receive(nursery):
    with trio.fail_after(10):
        async with connection_pair(nursery) as (server, client):
            await client.send(b"one")
            assert await server.receive() == b"one"
            failed: list[BaseException] = []

            async def receive() -> None:
                try:
                    await server.receive()
                except (trio.ClosedResourceError, trio.BrokenResourceError) as exc:
                    failed.append(exc)

            async with trio.open_nursery() as inner:
                inner.start_soon(receive)
                await trio.testing.wait_all_tasks_blocked()
                server._stream.socket.close()  # trio's close: notify_closing wakes it
            assert len(failed) == 1


async def test_receive_while_aclose_reads_the_echo_is_closed_not_busy(nursery):
    """aclose() from one task reads the close echo itself when nobody is receiving; a
    task that calls receive() meanwhile (a session's reader between two frames, while
    its pinger gives up on the connection) is told the connection is closed, not that
    another task is receiving (seen as an unexplained BusyResourceError in a
    10,000-peer relay restart)."""
    with trio.fail_after(10):
        async with connection_pair(nursery) as (server, client):
            outcome: list[type[BaseException]] = []

            async def late_reader() -> None:
                try:
                    await server.receive()
                except Exception as exc:  # noqa: BLE001 - the type is what is tested
                    outcome.append(type(exc))

            async with trio.open_nursery() as inner:
                inner.start_soon(server.aclose, 1001, "ping timeout")
                await trio.testing.wait_all_tasks_blocked()  # aclose waits for the echo
                assert server._receiving  # ... reading it itself
                await late_reader()
                with pytest.raises(trio.EndOfChannel):
                    await client.receive()  # reads the close frame and echoes it
            assert outcome == [trio.ClosedResourceError]
            assert server.closed and server.close_code == 1001
