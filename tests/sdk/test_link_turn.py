"""P2PNetworks whose direct attempts use TURN relay candidates only
(``p2p.ice_transport_policy = "relay"``): the link goes direct through the relay's
TURN server and its metrics say so; TURN settings are checked with the config."""

from __future__ import annotations

import time

import pytest
import trio
from sdk_peers import FAST

from darkswap_trio import Config, ConfigError, P2PConfig, P2PNetwork
from darkswap_trio.proto.turn import rest_api_credentials
from darkswap_trio.webrtc import PeerConnectionConfig

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
SECRET = b"sdk-turn-test-secret"


async def serve_relay_with_turn(tmp_path, task_status=trio.TASK_STATUS_IGNORED):
    from relay import RelayConfig, serve_relay

    secret_file = tmp_path / "turn_secret"
    secret_file.write_bytes(SECRET)
    config = RelayConfig(host="127.0.0.1", port=0, stun_port=0, metrics_port=None)
    config.turn.enabled = True
    config.turn.secret_file = str(secret_file)
    config.turn.allow_loopback_peers = True  # tests only
    await serve_relay(config.validate(), task_status=task_status)


def relay_only_network(server, peer_id: str) -> P2PNetwork:
    username, password = rest_api_credentials(SECRET, peer_id, 600, time.time())
    p2p = P2PConfig(
        relay_servers=[server.multiaddr],
        turn_servers=[f"turn:127.0.0.1:{server.stun_port}?transport=udp"],
        turn_username=username,
        turn_credential=password,
        ice_transport_policy="relay",
    )
    loopback = PeerConnectionConfig(host_addresses=["127.0.0.1"])
    return P2PNetwork(Config(p2p=p2p, relay_manager=FAST), peer_connection_config=loopback)


async def test_a_link_goes_direct_through_turn_and_reports_it(tmp_path) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_relay_with_turn, tmp_path)
            async with (
                relay_only_network(server, "alice") as a,
                relay_only_network(server, "bob") as b,
            ):
                await a.wait_relay_connected()
                await b.wait_relay_connected()
                link = await a.connect_to_peer(b.local_peer_id)
                incoming = await b.accept_peer()
                await link.wait_direct()
                await incoming.wait_direct()
                for i in range(10):
                    await link.send(b"ping %d" % i)
                    assert await incoming.receive() == b"ping %d" % i
                    await incoming.send(b"pong %d" % i)
                    assert await link.receive() == b"pong %d" % i
                for side in (link, incoming):
                    metrics = side.metrics()
                    assert metrics.connection_type == "direct"
                    assert metrics.local_candidate_type == "relay"
                    assert metrics.remote_candidate_type == "relay"
                assert server.turn.core.statistics().allocations >= 2
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"turn_servers": ["turn:127.0.0.1"]}, "turn_username"),
        (
            {"turn_servers": ["stun:x"], "turn_username": "u", "turn_credential": "p"},
            "must start with 'turn:'",
        ),
        ({"ice_transport_policy": "relay"}, "needs p2p.turn_servers or p2p.turn_from_relay"),
        ({"ice_transport_policy": "direct"}, "'all' or 'relay'"),
    ],
)
def test_turn_settings_are_validated(settings, message) -> None:
    with pytest.raises(ConfigError, match=message):
        P2PConfig(**settings).validate()


def test_turn_settings_from_toml() -> None:
    config = Config.from_toml(
        '[p2p]\nturn_servers = ["turn:198.51.100.9:3478?transport=udp"]\n'
        'turn_username = "1700000000:me"\nturn_credential = "c2VjcmV0"\n'
        'ice_transport_policy = "relay"\n'
    )
    (server,) = config.p2p.turn_server_configs()
    assert (server.parsed.host, server.parsed.port) == ("198.51.100.9", 3478)
    assert server.username == "1700000000:me"


async def test_turn_servers_asked_from_the_relay(tmp_path) -> None:
    """``turn_from_relay``: no TURN server configured, the relay hands out credentials
    and URIs over signaling, and the relay-only link goes direct through them."""

    def network(server) -> P2PNetwork:
        p2p = P2PConfig(
            relay_servers=[server.multiaddr], turn_from_relay=True, ice_transport_policy="relay"
        )
        loopback = PeerConnectionConfig(host_addresses=["127.0.0.1"])
        return P2PNetwork(Config(p2p=p2p, relay_manager=FAST), peer_connection_config=loopback)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_relay_with_turn, tmp_path)
            async with network(server) as a, network(server) as b:
                await a.wait_relay_connected()
                await b.wait_relay_connected()
                link = await a.connect_to_peer(b.local_peer_id)
                incoming = await b.accept_peer()
                await link.wait_direct()
                await link.send(b"through the relay's TURN")
                assert await incoming.receive() == b"through the relay's TURN"
                metrics = link.metrics()
                assert (metrics.local_candidate_type, metrics.remote_candidate_type) == (
                    "relay",
                    "relay",
                )
            nursery.cancel_scope.cancel()


async def test_relay_only_without_turn_from_the_relay_stays_on_the_circuit(tmp_path) -> None:
    """The relay serves no TURN: the relay-only direct attempt fails at once, and the
    link keeps working over the relay circuit."""
    from darkswap_trio.testing import running_relay

    p2p = {"turn_from_relay": True, "ice_transport_policy": "relay"}
    loopback = PeerConnectionConfig(host_addresses=["127.0.0.1"])
    with trio.fail_after(30):
        async with running_relay() as server:
            configs = [
                Config(p2p=P2PConfig(relay_servers=[server.multiaddr], **p2p), relay_manager=FAST)
                for _ in range(2)
            ]
            async with (
                P2PNetwork(configs[0], peer_connection_config=loopback) as a,
                P2PNetwork(configs[1], peer_connection_config=loopback) as b,
            ):
                await a.wait_relay_connected()
                await b.wait_relay_connected()
                link = await a.connect_to_peer(b.local_peer_id)
                incoming = await b.accept_peer()
                await link.send(b"over the circuit")
                assert await incoming.receive() == b"over the circuit"
                assert link.connection_type == "relay"
                assert link.metrics().local_candidate_type is None
