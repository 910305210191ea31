"""Graceful shutdown: peers are told (server_shutdown), and it is bounded by the grace."""

from __future__ import annotations

import pytest
import trio
from relayclient import connect, make_config, new_peer

from darkswap_trio.proto.signaling import (
    CloseRelay,
    DataChannel,
    Error,
    RelayRequest,
    RelayResponse,
)
from relay import serve_relay


async def test_shutdown_tells_peers_and_returns(autojump_clock):
    with trio.fail_after(100):
        async with trio.open_nursery() as outer:
            async with trio.open_nursery() as server_nursery:
                server = await server_nursery.start(serve_relay, make_config())
                async with connect(server) as a, connect(server) as b, connect(server) as mute:
                    await a.register_legacy(str(new_peer().peer_id))
                    await b.register_extended(new_peer(), server.peer_id, open_mode=True)
                    await mute.register_legacy(str(new_peer().peer_id))  # then never reads
                    await a.send(RelayRequest(from_=a.peer_id, to=b.peer_id))
                    resp = await a.expect(RelayResponse)
                    await b.expect(DataChannel)

                    done = trio.Event()

                    async def stop():
                        await server.shutdown(grace=3.0)
                        done.set()

                    start = trio.current_time()
                    outer.start_soon(stop)
                    for client in (a, b):
                        assert await client.expect(CloseRelay) == CloseRelay(
                            resp.relay_id, "server_shutdown"
                        )
                        err = await client.expect(Error)
                        assert err.code == "server_shutdown"
                        assert await client.expect_closed() == 1001
                    # New connections are no longer accepted.
                    with pytest.raises(OSError):
                        async with connect(server):
                            pass
                    await done.wait()
                    # The mute peer (no close echo) cannot hold shutdown beyond the grace.
                    assert trio.current_time() - start <= 3.0 + 0.1
            # serve_relay returned: the server's nursery has exited.
            assert server.statistics().sessions == 0


async def test_shutdown_with_no_sessions_is_immediate(nursery):
    with trio.fail_after(5):
        server = await nursery.start(serve_relay, make_config())
        assert server.statistics() == type(server.statistics())(0, 0, 0, 0)
        await server.shutdown(grace=10.0)
        await server.shutdown(grace=10.0)  # idempotent
