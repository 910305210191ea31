"""SDK configuration: TOML loading, validation, and relay multiaddr -> URL mapping."""

import ipaddress
from urllib.parse import urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from darkswap_trio import (
    Config,
    ConfigError,
    Keypair,
    P2PConfig,
    RelayManagerConfig,
    parse_relay_address,
)

PEER = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"


def test_guide_defaults():
    cfg = RelayManagerConfig()
    assert (
        cfg.connection_timeout,
        cfg.ping_interval,
        cfg.reconnect_interval,
        cfg.max_reconnect_attempts,
    ) == (30, 30, 5, 5)


def test_toml_loading(tmp_path):
    path = tmp_path / "peer.toml"
    path.write_text(
        f"""
[p2p]
relay_servers = ["/ip4/127.0.0.1/tcp/9002/ws/p2p/{PEER}"]
max_connections = 10
[relay_manager]
ping_interval = 5
max_reconnect_attempts = 2
"""
    )
    cfg = Config.from_toml(path)
    assert cfg.p2p.max_connections == 10
    assert cfg.relay_manager.ping_interval == 5.0
    assert cfg.p2p.relay_addresses()[0].url == "ws://127.0.0.1:9002/signaling"


@pytest.mark.parametrize(
    "toml, needle",
    [
        ("[p2p]\nrelay_servers = ['/ip4/127.0.0.1/tcp/9002/ws']", "lacks a trailing /p2p/"),
        (
            "[p2p]\nrelay_servers = ['/ip4/127.0.0.1/tcp/9002/p2p/QmNotAPeer']",
            "/ip4/127.0.0.1/tcp/9002/p2p/QmNotAPeer",
        ),
        (
            "[p2p]\nrelay_servers = ['/ip4/127.0.0.1/udp/9002/p2p/" + PEER + "']",
            "unsupported component /udp",
        ),
        ("[p2p]\nmax_connection = 3", "unknown setting p2p.max_connection"),
        (
            "[relay_manager]\nping_interval = 'soon'",
            "relay_manager.ping_interval has the wrong type",
        ),
        ("[relay_manager]\nping_interval = 0", "relay_manager.ping_interval must be positive"),
        ("[p2p\n", "config text is not valid TOML"),
    ],
)
def test_bad_config_names_the_problem(toml, needle):
    with pytest.raises(ConfigError) as info:
        Config.from_toml(toml + "\n")
    assert needle in str(info.value)


def test_p2p_config_validates_addresses():
    with pytest.raises(ConfigError):
        P2PConfig(relay_servers=["/dns4/relay.example/tcp/443/wss"]).validate()


def test_relay_id_must_be_a_peer_id():
    with pytest.raises(ConfigError) as info:
        parse_relay_address(
            "/ip4/10.0.0.1/tcp/9002/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXT"
        )
    assert "invalid" in str(info.value)


# -- property: mapping matches a reference model ---------------------------------------------

dns_names = st.from_regex(
    r"\A[a-z]([a-z0-9-]{0,18}[a-z0-9])?(\.[a-z]([a-z0-9-]{0,8}[a-z0-9])?){0,3}\Z"
).filter(  # IDNA (RFC 5891 4.2.3.1) reserves "--" at a label's 3rd and 4th characters
    lambda name: all(label[2:4] != "--" for label in name.split("."))
)
hosts = st.one_of(
    st.tuples(st.just("ip4"), st.ip_addresses(v=4).map(str)),
    st.tuples(st.just("ip6"), st.ip_addresses(v=6).map(lambda a: str(ipaddress.IPv6Address(a)))),
    st.tuples(st.sampled_from(["dns", "dns4", "dns6"]), dns_names),
)
ports = st.none() | st.integers(1, 65535)
transports = st.sampled_from(["", "/ws", "/wss", "/tls", "/tls/ws"])
peers = st.builds(lambda: str(Keypair.generate().peer_id))


def reference_url(kind, host, port, transport):
    scheme = "wss" if ("wss" in transport or "tls" in transport) else "ws"
    shown = f"[{host}]" if kind == "ip6" else host
    return f"{scheme}://{shown}:{port or 9002}/signaling"


def same_url(actual, expected):
    """URL equality, with IP hosts compared as addresses (::ffff:0:0 == ::ffff:0.0.0.0)."""
    a, e = urlsplit(actual), urlsplit(expected)
    if (a.scheme, a.port, a.path) != (e.scheme, e.port, e.path):
        return False
    if e.netloc.startswith("["):
        return a.netloc.startswith("[") and ipaddress.ip_address(
            a.hostname
        ) == ipaddress.ip_address(e.hostname)
    return a.hostname == e.hostname


@given(hosts, ports, transports, peers)
def test_multiaddr_to_url_matches_reference(host, port, transport, peer):
    kind, value = host
    addr = f"/{kind}/{value}" + (f"/tcp/{port}" if port else "") + transport + f"/p2p/{peer}"
    relay = parse_relay_address(addr)
    assert same_url(relay.url, reference_url(kind, value, port, transport)), relay.url
    assert str(relay.peer_id) == peer
    assert relay.secure == (reference_url(kind, value, port, transport).startswith("wss"))


@given(st.text(max_size=80))
def test_any_text_is_a_config_error_or_an_address(text):
    try:
        parse_relay_address(text)
    except ConfigError:
        pass


def test_missing_config_file_says_so_with_its_path(tmp_path):
    missing = tmp_path / "missing.toml"
    for source in (missing, str(missing), "missing.toml"):
        with pytest.raises(ConfigError) as info:
            Config.from_toml(source)
        assert "does not exist" in str(info.value) and "missing.toml" in str(info.value)
        assert "TOML" not in str(info.value)


def test_unreadable_config_file_says_so_with_its_path(tmp_path):
    # A directory where the file should be: unreadable for root too (chmod is not).
    with pytest.raises(ConfigError) as info:
        Config.from_toml(tmp_path)
    assert f"cannot read config file {str(tmp_path)!r}" in str(info.value)
    assert isinstance(info.value.__cause__, OSError)


def test_config_file_with_bad_toml_names_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[p2p\n")
    with pytest.raises(ConfigError, match="bad.toml' is not valid TOML"):
        Config.from_toml(path)


def test_p2p_stun_servers_reach_a_given_peer_connection_config():
    """p2p.stun_servers apply to a PeerConnectionConfig that names none (the NAT lab
    passes host_addresses only); one that names its own keeps them."""
    from darkswap_trio import P2PNetwork
    from darkswap_trio.webrtc import PeerConnectionConfig

    config = P2PConfig(stun_servers=["203.0.113.1:3478"])
    hosts_only = PeerConnectionConfig(host_addresses=["198.51.100.2"])
    network = P2PNetwork(config, peer_connection_config=hosts_only)
    assert list(network.peer_connection_config.stun_servers) == [("203.0.113.1", 3478)]
    assert network.peer_connection_config.host_addresses == ["198.51.100.2"]
    own = PeerConnectionConfig(stun_servers=[("203.0.113.9", 3478)])
    network = P2PNetwork(config, peer_connection_config=own)
    assert network.peer_connection_config is own
