"""1 MiB between two of our relay-only peer connections through our relay's TURN
server with at least one of them on TURN over TCP or TLS, over real loopback sockets:
neither the relay's queue towards a TCP client (``drop_tcp_backpressure``) nor ours
towards the server (``turn_stream_dropped``) may overflow. Both writers once sent one
frame per ``send_all`` and fell behind producers that queue a whole flight at once:
about 200 frames of 1 MiB dropped on either side, retransmitted by SCTP."""

from __future__ import annotations

import pytest
import trio
from test_peer_connection_turn import relay_only
from turn_servers import running_our_turn, self_signed_certificate, turn_config

from darkswap_trio.webrtc import (
    PeerConnection,
    PeerConnectionConfig,
    open_peer_connection,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TOTAL, SIZE = 1 << 20, 16384
MAX_DROPS = 20  # measured 0 with one write per writer wake, ~200 with one per frame


async def connect(a: PeerConnection, b: PeerConnection) -> None:
    await b.set_remote_description(await a.create_offer(), "offer")
    await a.set_remote_description(await b.create_answer(), "answer")

    async def trickle(source: PeerConnection, sink: PeerConnection) -> None:
        async for candidate in source.local_candidates():
            sink.add_ice_candidate(candidate)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle, a, b)
        nursery.start_soon(trickle, b, a)
        await a.wait_connected()
        await b.wait_connected()


async def bulk(a: PeerConnection, b: PeerConnection) -> None:
    ours = await a.create_data_channel("bulk")
    theirs = await b.accept_data_channel()

    async def send() -> None:
        for i in range(TOTAL // SIZE):
            await ours.send(bytes([i % 256]) * SIZE)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        for i in range(TOTAL // SIZE):
            assert await theirs.receive() == bytes([i % 256]) * SIZE


@pytest.mark.parametrize("transports", [("tcp", "tcp"), ("udp", "tcp"), ("tcp", "udp")])
async def test_a_mebibyte_over_turn_tcp_drops_nothing(tmp_path, transports) -> None:
    with trio.fail_after(30):
        async with running_our_turn(tmp_path) as server:
            port = server.stun_port
            async with (
                open_peer_connection(relay_only(port, "alice", transports[0])) as a,
                open_peer_connection(relay_only(port, "bob", transports[1])) as b,
            ):
                await connect(a, b)
                await bulk(a, b)
                counters = server.turn.core.counters
                assert counters["drop_tcp_backpressure"] <= MAX_DROPS, dict(counters)
                for pc in (a, b):
                    assert pc.statistics().turn_stream_dropped <= MAX_DROPS
                # Retransmissions put bytes on the wire twice: ~1.4 MiB with ~200 drops.
                assert counters["bytes_to_peer"] < TOTAL * 1.2


async def test_a_mebibyte_over_turn_tls_drops_nothing(tmp_path) -> None:
    cert, key, trusted = self_signed_certificate(tmp_path)
    with trio.fail_after(30):
        async with running_our_turn(tmp_path, tls=(cert, key)) as server:
            a_config, b_config = (
                PeerConnectionConfig(
                    host_addresses=["127.0.0.1"],
                    turn_servers=[turn_config(server.turn_tls_port, name, tls=trusted)],
                    ice_transport_policy="relay",
                )
                for name in ("alice", "bob")
            )
            async with open_peer_connection(a_config) as a, open_peer_connection(b_config) as b:
                await connect(a, b)
                await bulk(a, b)
                assert server.turn.core.counters["drop_tcp_backpressure"] <= MAX_DROPS
                assert a.statistics().turn_stream_dropped <= MAX_DROPS
                assert {x.client[0] for x in server.turn.core._allocations.values()} == {"tls"}
