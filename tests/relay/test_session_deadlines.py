"""A registered session's reader waits on its idle deadline from the moment it registers
(not on the handshake deadline, which would wake every session once for nothing)."""

from __future__ import annotations

from contextlib import asynccontextmanager

import trio
from relayclient import connect, make_config, new_peer

from darkswap_trio.proto.signaling import Ping, Pong
from relay import serve_relay


@asynccontextmanager
async def registered(nursery, *, idle_timeout: float):
    """(server, peer, its session on the server): one registered peer, handshake 10 s."""
    server = await nursery.start(
        serve_relay, make_config(handshake_timeout=10.0, idle_timeout=idle_timeout)
    )
    async with connect(server) as peer:
        peer_id = str(new_peer().peer_id)
        await peer.register_legacy(peer_id)
        session = server.router.lookup(peer_id)
        assert session is not None
        yield server, peer, session


async def test_registration_moves_the_read_deadline_to_idle(nursery, autojump_clock):
    with trio.fail_after(1000):
        async with registered(nursery, idle_timeout=120.0) as (server, peer, session):
            registered_at = trio.current_time()
            scope = session._read_scope
            assert registered_at + 119 < scope.deadline <= registered_at + 120
            # Past the handshake deadline the reader is still in the same scope: no wake-up.
            await trio.sleep(15)
            assert session._read_scope is scope
            await peer.send(Ping())
            await peer.expect(Pong)
        await server.shutdown(1)


async def test_idle_deadline_without_idle_timeout_is_none(nursery, autojump_clock):
    with trio.fail_after(1000):
        async with registered(nursery, idle_timeout=0.0) as (server, peer, session):
            assert session._read_scope.deadline == float("inf")
            await trio.sleep(30)  # past the handshake deadline: still open
            await peer.send(Ping())
            await peer.expect(Pong)
        await server.shutdown(1)
