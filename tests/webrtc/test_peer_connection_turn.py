"""Peer connections through TURN relay candidates over real loopback sockets: two of
ours with ``ice_transport_policy="relay"`` through our relay's TURN server and
through coturn; the TURN configuration checked where it is made."""

from __future__ import annotations

from dataclasses import replace

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from turn_servers import (
    TURNSERVER,
    running_coturn,
    running_our_turn,
    self_signed_certificate,
    turn_config,
)

from darkswap_trio.webrtc import (
    PeerConnection,
    PeerConnectionConfig,
    TurnServerConfig,
    open_peer_connection,
)
from darkswap_trio.webrtc._turn_servers import parse_turn_url

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def relay_only(port: int, peer_id: str, transport: str = "udp") -> PeerConnectionConfig:
    return PeerConnectionConfig(
        host_addresses=["127.0.0.1"],
        turn_servers=[turn_config(port, peer_id, transport)],
        ice_transport_policy="relay",
    )


async def connect_and_exchange(a: PeerConnection, b: PeerConnection) -> None:
    offer = await a.create_offer()
    await b.set_remote_description(offer, "offer")
    answer = await b.create_answer()
    await a.set_remote_description(answer, "answer")

    async def trickle(source: PeerConnection, sink: PeerConnection) -> None:
        async for candidate in source.local_candidates():
            if candidate is not None:
                assert " typ relay " in candidate, candidate  # the policy: nothing else
            sink.add_ice_candidate(candidate)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle, a, b)
        nursery.start_soon(trickle, b, a)
        await a.wait_connected()
        await b.wait_connected()
    ours = await a.create_data_channel("through-turn")
    theirs = await b.accept_data_channel()
    for i in range(20):
        await ours.send(b"a->b %d" % i)
        assert await theirs.receive() == b"a->b %d" % i
        await theirs.send(b"b->a %d" % i)
        assert await ours.receive() == b"b->a %d" % i
    big = bytes(range(256)) * 200  # 51 KB: many SCTP packets through the allocation
    await ours.send(big)
    assert await theirs.receive() == big
    for pc in (a, b):
        ice = pc.statistics().ice
        assert ice is not None
        assert (ice.selected_local_type, ice.selected_remote_type) == ("relay", "relay")
        assert ice.selected_local is not None and ice.selected_local[1] != pc.local_address[1]


@pytest.mark.parametrize(
    "transports", [("udp", "udp"), ("tcp", "tcp"), ("udp", "tcp")], ids=["udp", "tcp", "udp-tcp"]
)
async def test_two_peer_connections_through_our_turn_server(tmp_path, transports) -> None:
    with trio.fail_after(30):
        async with running_our_turn(tmp_path) as server:
            port = server.stun_port
            async with (
                open_peer_connection(relay_only(port, "alice", transports[0])) as a,
                open_peer_connection(relay_only(port, "bob", transports[1])) as b,
            ):
                await connect_and_exchange(a, b)
                stats = server.turn.core.statistics()
                assert stats.allocations == 2 and stats.channels >= 2
                clients = sorted(a.client[0] for a in server.turn.core._allocations.values())
                assert clients == sorted(transports)
                assert server.turn.core.counters["bytes_to_peer"] > 51200
            # Closing freed both allocations (Refresh with LIFETIME 0).
            with trio.fail_after(5):
                while server.turn.core.statistics().allocations:
                    await trio.sleep(0.01)


@pytest.mark.skipif(TURNSERVER is None, reason="coturn's turnserver not installed")
@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_two_peer_connections_through_coturn(tmp_path, transport) -> None:
    with trio.fail_after(30):
        async with running_coturn(tmp_path) as port:
            async with (
                open_peer_connection(relay_only(port, "alice", transport)) as a,
                open_peer_connection(relay_only(port, "bob", transport)) as b,
            ):
                await connect_and_exchange(a, b)


async def test_two_peer_connections_through_our_turn_server_over_tls(tmp_path) -> None:
    cert, key, trusted = self_signed_certificate(tmp_path)
    with trio.fail_after(30):
        async with running_our_turn(tmp_path, tls=(cert, key)) as server:
            configs = [
                PeerConnectionConfig(
                    host_addresses=["127.0.0.1"],
                    turn_servers=[turn_config(server.turn_tls_port, name, tls=trusted)],
                    ice_transport_policy="relay",
                )
                for name in ("alice", "bob")
            ]
            async with open_peer_connection(configs[0]) as a, open_peer_connection(configs[1]) as b:
                await connect_and_exchange(a, b)
                clients = {a.client[0] for a in server.turn.core._allocations.values()}
                assert clients == {"tls"}


@pytest.mark.skipif(TURNSERVER is None, reason="coturn's turnserver not installed")
async def test_two_peer_connections_through_coturn_over_tls(tmp_path) -> None:
    cert, key, trusted = self_signed_certificate(tmp_path)
    with trio.fail_after(30):
        async with running_coturn(tmp_path, tls=(cert, key)) as port:
            configs = [
                PeerConnectionConfig(
                    host_addresses=["127.0.0.1"],
                    turn_servers=[turn_config(port + 1, name, tls=trusted)],
                    ice_transport_policy="relay",
                )
                for name in ("alice", "bob")
            ]
            async with open_peer_connection(configs[0]) as a, open_peer_connection(configs[1]) as b:
                await connect_and_exchange(a, b)


@pytest.mark.skipif(TURNSERVER is None, reason="coturn's turnserver not installed")
async def test_an_untrusted_tls_certificate_gives_no_relay_candidate(tmp_path) -> None:
    cert, key, _ = self_signed_certificate(tmp_path)
    with trio.fail_after(30):
        async with running_coturn(tmp_path, tls=(cert, key)) as port:
            config = PeerConnectionConfig(
                host_addresses=["127.0.0.1"],
                turn_servers=[
                    replace(turn_config(port, "alice"), url=f"turns:127.0.0.1:{port + 1}")
                ],
            )
            async with open_peer_connection(config) as pc:
                await pc.create_offer()
                candidates = [c async for c in pc.local_candidates()]
                assert candidates[-1] is None
                assert all(" typ host" in c for c in candidates[:-1])


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("stun:127.0.0.1", "must start with 'turn:'"),
        ("turn:", "no valid host"),
        ("turn:127.0.0.1:0", "not 1-65535"),
        ("turn:127.0.0.1:x", "not 1-65535"),
        ("turn:::1:3478", "brackets"),
        ("turn:[::1", "bracketed"),
        ("turn:127.0.0.1?transport=sctp", "transport=udp or tcp"),
        ("turns:127.0.0.1?transport=udp", "DTLS"),
    ],
)
def test_bad_turn_urls_are_refused_where_configured(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TurnServerConfig(url, "user", "secret")


def test_turn_config_is_checked() -> None:
    good = TurnServerConfig("turn:[::1]:3479?transport=UDP", "u", "p")
    assert (good.parsed.host, good.parsed.port, good.parsed.transport) == ("::1", 3479, "udp")
    assert TurnServerConfig("turn:relay.example", "u", "p").parsed.port == 3478
    tls = TurnServerConfig("turns:relay.example", "u", "p").parsed
    assert (tls.port, tls.transport, tls.tls) == (5349, "tcp", True)
    with pytest.raises(ValueError, match="username"):
        TurnServerConfig("turn:127.0.0.1", "", "p")
    with pytest.raises(ValueError, match="relay"):
        PeerConnectionConfig(ice_transport_policy="relay")
    with pytest.raises(ValueError, match="ice_transport_policy"):
        PeerConnectionConfig(ice_transport_policy="none")  # type: ignore[arg-type]
    twice = [TurnServerConfig(f"turn:127.0.0.1?transport={t}", "u", "p") for t in ("udp", "tcp")]
    with pytest.raises(ValueError, match="listed twice"):
        PeerConnectionConfig(turn_servers=twice)
    with pytest.raises(ValueError, match="TurnServerConfig"):
        PeerConnectionConfig(turn_servers=["turn:127.0.0.1"])  # type: ignore[list-item]


@given(st.text(max_size=80) | st.from_regex(r"turns?:[\[\]0-9a-f:.]{0,40}(\?transport=\w{0,5})?"))
def test_any_turn_url_parses_or_raises_value_error(text: str) -> None:
    try:
        url = parse_turn_url(text)
    except ValueError:
        return
    assert url.host and 0 < url.port < 65536 and url.transport in ("udp", "tcp")
