"""Relay server configuration: dataclasses with defaults, loadable from TOML.

Defaults are modelled on go-libp2p's relay v2 resource limits, scaled up for a
trading network where a relay circuit is the guaranteed path (not just a
hole-punching aid), and on coturn's history of abuse (per-IP quotas, bounded
buffers, short handshake deadlines).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import darkswap_trio
from darkswap_trio import apply_settings, parse_relay_address

from .cluster._config import ClusterConfig, redact_url_password

AuthMode = Literal["signature", "jwt", "open"]
AUTH_MODES: tuple[str, ...] = ("signature", "jwt", "open")
JWT_ALGORITHMS: tuple[str, ...] = ("EdDSA", "ES256", "HS256")


class ConfigError(darkswap_trio.ConfigError):
    """The relay's configuration is invalid; the message names the offending setting.

    A :class:`darkswap_trio.ConfigError` (itself a ValueError), so one ``except`` catches
    a bad setting of either the SDK or the relay.
    """


@dataclass
class LimitsConfig:
    # Sessions
    max_sessions: int = 10_000
    max_sessions_per_ip: int = 32  # counted from TCP accept, registered or not
    # Connections not yet registered (from accept): per IP, and in total. When the
    # total is reached, a newcomer displaces the oldest pending connection of the IP
    # holding the most pending ones (if that is more than the newcomer's IP would).
    max_pending_per_ip: int = 8
    max_pending_connections: int = 512
    handshake_timeout: float = 10.0  # seconds from TCP accept to Registered
    idle_timeout: float = 120.0  # a session with no inbound frame for this long is closed
    # A proven owner re-registering its peer id replaces a holder silent for this long.
    duplicate_probe_timeout: float = 3.0
    max_frame_size: int = 256 * 1024  # largest WebSocket message accepted (text or binary)
    # Token buckets: (rate per second, burst)
    connections_per_ip_rate: float = 5.0
    connections_per_ip_burst: int = 20
    messages_per_peer_rate: float = 200.0
    messages_per_peer_burst: int = 400
    # Budgets that survive reconnects (relay._abuse): messages of all sessions of one
    # address, registrations started per address, and relay-wide message and
    # registration rates above which addresses that spent over half their burst are shed. A session that keeps
    # exceeding a budget is closed 1008 and its address refused at accept for
    # abuse_penalty seconds.
    messages_per_ip_rate: float = 1000.0
    messages_per_ip_burst: int = 1000
    handshakes_per_ip_rate: float = 2.0
    handshakes_per_ip_burst: int = 32
    messages_total_rate: float = 20_000.0
    messages_total_burst: int = 20_000
    handshakes_total_rate: float = 200.0
    handshakes_total_burst: int = 400
    abuse_penalty: float = 30.0
    # Event-loop lag above which the relay-wide budgets shrink (relay._abuse); 0 = fixed.
    overload_lag: float = 0.05
    # SO_RCVBUF of accepted sockets (bytes; 0 = kernel autotuning, up to tcp_rmem's max).
    socket_receive_buffer: int = 256 * 1024
    # All inbound bytes of one session, per second (paced, never closed): 16 MiB/s is far
    # beyond a trading peer's order flow and keeps one session from taking a relay's uplink.
    bytes_per_peer_rate: float = 16.0 * 1024 * 1024
    bytes_per_peer_burst: int = 16 * 1024 * 1024
    # Circuits
    max_circuits: int = 4096
    max_circuits_per_peer: int = 16
    # Circuits one requester may hold to one target: a single identity cannot take all
    # of a target's max_circuits_per_peer slots (refused too_many_circuits_to_peer).
    max_circuits_per_pair: int = 4
    # A circuit with no data in either direction for this long closes (reason idle),
    # so unsolicited circuits do not hold slots for circuit_duration; 0 = never.
    circuit_idle_timeout: float = 300.0
    circuit_duration: float = 3600.0  # seconds; 0 = unlimited
    circuit_bytes: int = 1 << 30  # per circuit, both directions together; 0 = unlimited
    circuit_bandwidth: int = 0  # bytes/s per direction; 0 = unlimited
    # Flow-control credit per direction (bytes), chosen per circuit at open: the largest,
    # while the windows of all open circuits fit circuit_window_budget; less as it fills,
    # never below circuit_window_min (proto/circuits.py, "Adaptive windows"). 16 MiB: a
    # smaller window leaves a lone busy circuit waiting for credit whenever a loaded
    # machine delays its receiver, and costs the relay ~20% more CPU per byte (bench_relay).
    circuit_window: int = 16 * 1024 * 1024
    circuit_window_min: int = 64 * 1024
    circuit_window_budget: int = 256 * 1024 * 1024  # 0 = every circuit gets circuit_window
    circuit_max_data_frame: int = 64 * 1024  # largest payload of one circuit data frame
    circuit_stall_timeout: float = (
        30.0  # a direction with queued data and no progress for this long closes the circuit
    )
    # STUN binding service: answers per source IP, and in total (reflection budget).
    stun_per_ip_rate: float = 10.0
    stun_per_ip_burst: int = 20
    stun_total_rate: float = 5000.0
    stun_total_burst: int = 10000
    # Bound on how many distinct IPs / peers the rate limiters remember (LRU).
    limiter_table_size: int = 100_000
    # Topic rendezvous (docs/PROTOCOL.md 14.6): registrations live topic_ttl seconds
    # unless renewed; a TopicPeers answer names at most topic_sample peers.
    max_topics: int = 100_000
    max_topics_per_peer: int = 32
    max_peers_per_topic: int = 10_000
    topic_ttl: float = 300.0
    topic_sample: int = 16


@dataclass
class AuthConfig:
    mode: AuthMode = "signature"
    jwt_algorithm: str = "EdDSA"
    # PEM public key (EdDSA/ES256) or shared secret (HS256), inline or from a file.
    jwt_key: str | None = None
    jwt_key_file: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_leeway: float = 5.0


@dataclass
class TurnConfig:
    """TURN (RFC 8656) on the STUN port, UDP and TCP; see docs/PROTOCOL.md "TURN"."""

    enabled: bool = False
    realm: str = "darkswap"
    # The TURN REST API shared secret (credentials: ``darkswap-relay turn-credentials``).
    secret_file: str | None = None
    # Address relayed sockets are bound on and announced with (XOR-RELAYED-ADDRESS).
    # None: ``host`` when it is a specific address (required for a wildcard host).
    relay_address: str | None = None
    # Lets peers on 127.0.0.0/8 and ::1 be reached: tests and labs only, never in production.
    allow_loopback_peers: bool = False
    default_lifetime: int = 600
    max_lifetime: int = 3600
    max_allocations: int = 1000
    max_allocations_per_user: int = 10
    max_allocations_per_ip: int = 20
    max_permissions_per_allocation: int = 64
    max_channels_per_allocation: int = 64
    bandwidth_per_allocation: int = 4 * 1024 * 1024  # bytes/s, both directions; 0 = unlimited
    bandwidth_burst: int = 1024 * 1024
    max_tcp_connections: int = 1000
    max_tcp_connections_per_ip: int = 16
    # Also accept channel numbers 0x5000-0x7FFF (RFC 5766's range; RFC 8656 narrowed it
    # to 0x4000-0x4FFF): for older clients such as coturn's turnutils_uclient.
    rfc5766_channels: bool = False
    # TURN over TLS (turns:) on this TCP port, with the relay's tls_cert/tls_key; None: off.
    tls_port: int | None = None
    # Lifetime of the credentials handed out over signaling (TurnCredentials.ttl).
    credentials_ttl: int = 86400
    # The URIs TurnCredentials names (behind NAT or port mapping); []: derived from the
    # announced host and the bound ports (docs/PROTOCOL.md 13.6).
    uris: list[str] = field(default_factory=list)

    def validate(self, host: str, stun_port: int | None) -> None:
        if not self.enabled:
            return
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int) and not isinstance(value, bool) and value < 0:
                raise ConfigError(f"turn.{f.name} must not be negative, got {value}")
        if stun_port is None:
            raise ConfigError("turn.enabled needs the STUN port (TURN shares it): set stun_port")
        if not self.secret_file:
            raise ConfigError("turn.enabled needs turn.secret_file (the TURN REST API secret)")
        if self.tls_port is not None and (
            not isinstance(self.tls_port, int) or not 0 <= self.tls_port <= 65535
        ):
            raise ConfigError(f"turn.tls_port must be 0..65535, got {self.tls_port}")
        if not self.realm or '"' in self.realm or len(self.realm) > 127:
            raise ConfigError(
                f"turn.realm must be 1..127 characters without quotes: {self.realm!r}"
            )
        if len(self.uris) > 8 or not all(
            u.startswith(("turn:", "turns:"))
            and u.isascii()
            and u.isprintable()
            and " " not in u
            and len(u) <= 255
            for u in self.uris
        ):
            raise ConfigError("turn.uris: at most 8 turn:/turns: URIs, printable ASCII")
        if not 0 < self.credentials_ttl < 10 * 365 * 86400:
            raise ConfigError("turn.credentials_ttl must be a positive number of seconds")
        if not 0 < self.default_lifetime <= self.max_lifetime:
            raise ConfigError("turn.default_lifetime must be positive and <= turn.max_lifetime")
        address = self.relay_address if self.relay_address is not None else host
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            raise ConfigError(
                f"turn.relay_address must be an IPv4 address, got {address!r}"
            ) from None
        if ip.version != 4 or ip.is_unspecified:
            raise ConfigError(
                "turn.relay_address must be a specific IPv4 address (set it when host is a "
                f"wildcard or IPv6), got {address!r}"
            )

    def relay_ip(self, host: str) -> str:
        return self.relay_address if self.relay_address is not None else host


@dataclass
class MeshConfig:
    """Node-to-node mesh links of a relay cluster (docs/PROTOCOL.md section 15)."""

    # The cluster secret every node holds (a file; its bytes, whitespace stripped). Links
    # from nodes without it are refused. Optional when the directory knows the nodes.
    secret_file: str | None = None
    # A JSON table of nodes and of the node each peer is on (relay.cluster._mesh_locator):
    # a cluster without the Redis directory (tests, small fixed setups).
    static_directory: str | None = None
    open_timeout: float = 10.0  # locate + link + the far node's answer, per RelayRequest
    link_timeout: float = 15.0  # a link silent this long is dead (pings every third)
    max_backoff: float = 5.0  # cap of the wait between dials of an unreachable node
    max_pending_opens: int = 1024  # cross-node RelayRequests being opened at once
    # Mesh links over TLS 1.3 (relay.cluster._mesh_tls): each node serves them on a
    # listener of their own (the --advertise port; else any free port) with a certificate
    # of its node key. The same on every node; False (plain) only on a private network.
    tls: bool = False

    def validate(self) -> None:
        for name in ("open_timeout", "link_timeout", "max_backoff", "max_pending_opens"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"mesh.{name} must be positive")


@dataclass
class RelayConfig:
    host: str = "0.0.0.0"
    port: int = 9002
    # What peers are told to dial (READY line, logs): a multiaddr (``/p2p/<id>`` added if
    # missing) or ``host[:port]``, for a relay behind NAT, a proxy or a load balancer.
    # None: derived from host and the bound port (127.0.0.1 for a wildcard host).
    announce: str | None = None
    stun_port: int | None = 3478  # None disables the STUN service (TOML: false)
    # /metrics and /healthz: loopback by default, they are for the operator's scraper.
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = 9090  # None disables /metrics and /healthz (TOML: false)
    key_file: str | None = None  # relay identity; None = ephemeral key
    tls_cert: str | None = None
    tls_key: str | None = None
    shutdown_grace: float = 5.0  # seconds to drain on SIGINT/SIGTERM
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    turn: TurnConfig = field(default_factory=TurnConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)  # README "Relay cluster"
    mesh: MeshConfig = field(default_factory=MeshConfig)

    def validate(self) -> RelayConfig:
        """Check every setting; raise ConfigError naming the first bad one."""
        for name in ("port", "stun_port", "metrics_port"):
            value = getattr(self, name)
            if value is not None and not (0 <= value <= 65535):
                raise ConfigError(f"{name} must be 0..65535, got {value}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls_cert and tls_key must be given together")
        if self.auth.mode not in AUTH_MODES:
            raise ConfigError(f"auth.mode must be one of {AUTH_MODES}, got {self.auth.mode!r}")
        if self.auth.mode == "jwt":
            if self.auth.jwt_algorithm not in JWT_ALGORITHMS:
                raise ConfigError(
                    f"auth.jwt_algorithm must be one of {JWT_ALGORITHMS}, got {self.auth.jwt_algorithm!r}"
                )
            if not (self.auth.jwt_key or self.auth.jwt_key_file):
                raise ConfigError("auth.mode = 'jwt' needs auth.jwt_key or auth.jwt_key_file")
        if self.announce is not None:
            # Checked with a placeholder identity; the real one is added when serving.
            announce_multiaddr(self.announce, _PLACEHOLDER_PEER_ID, self.port or 1, False)
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log_format must be 'text' or 'json', got {self.log_format!r}")
        for f in dataclasses.fields(self.limits):
            value = getattr(self.limits, f.name)
            if value < 0:
                raise ConfigError(f"limits.{f.name} must not be negative, got {value}")
        if self.limits.circuit_max_data_frame + 64 > self.limits.max_frame_size:
            raise ConfigError("limits.circuit_max_data_frame must fit in limits.max_frame_size")
        if self.limits.circuit_window < self.limits.circuit_max_data_frame:
            raise ConfigError(
                "limits.circuit_window must be at least limits.circuit_max_data_frame"
            )
        if self.limits.topic_ttl <= 0:
            raise ConfigError(f"limits.topic_ttl must be positive, got {self.limits.topic_ttl}")
        if self.limits.topic_sample > 64:  # TopicPeers carries at most 64 ids (PROTOCOL 14.6)
            raise ConfigError(
                f"limits.topic_sample must be at most 64, got {self.limits.topic_sample}"
            )
        self.turn.validate(self.host, self.stun_port)
        self.cluster.validate(ConfigError)
        if self.turn.enabled and self.turn.tls_port is not None and self.tls_cert is None:
            raise ConfigError("turn.tls_port needs tls_cert and tls_key (TURN over TLS uses them)")
        self.mesh.validate()
        if self.mesh.tls and self.cluster.advertise and self.cluster.workers <= 1:
            if self.cluster.advertise.rsplit(":", 1)[-1] == str(self.port):
                raise ConfigError(
                    "mesh.tls serves mesh links on the --advertise port: it cannot be "
                    "the signaling port"
                )
        if self.cluster.workers > 1 and self.mesh.static_directory:
            raise ConfigError(
                "cluster.workers > 1 needs the Redis directory, not mesh.static_directory"
            )
        return self

    def jwt_key_material(self) -> str:
        if self.auth.jwt_key:
            return self.auth.jwt_key
        assert self.auth.jwt_key_file is not None
        return Path(self.auth.jwt_key_file).read_text()


def load_config(path: str | Path | None = None, **overrides: Any) -> RelayConfig:
    """Load a TOML file (optional) and apply top-level overrides (e.g. from flags)."""
    config = RelayConfig()
    if path is not None:
        try:
            table = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        # `stun_port = false` / `metrics_port = false` disable a service (TOML has no null).
        disabled = [k for k in ("stun_port", "metrics_port") if table.get(k) is False]
        for key in disabled:
            del table[key]
        apply_settings(config, table, ConfigError)
        for key in disabled:
            setattr(config, key, None)
    for key, value in overrides.items():
        if value is None:
            continue
        if key.startswith("auth_"):
            setattr(config.auth, key[len("auth_") :], value)
        elif key.startswith("turn_"):
            setattr(config.turn, key[len("turn_") :], value)
        elif key.startswith("cluster_"):
            setattr(config.cluster, key[len("cluster_") :], value)
        elif key.startswith("mesh_"):
            setattr(config.mesh, key[len("mesh_") :], value)
        else:
            setattr(config, key, value)
    return config.validate()


# A valid PeerId used only to check the syntax of `announce` before the key is loaded.
_PLACEHOLDER_PEER_ID = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"


def announce_multiaddr(announce: str, peer_id: str, port: int, tls: bool) -> str:
    """The multiaddr peers should dial, from ``announce`` (see RelayConfig.announce).

    ``/dns4/relay.example/tcp/443/wss`` gets ``/p2p/<peer_id>`` appended;
    ``relay.example:443`` becomes ``/dns/relay.example/tcp/443/ws/p2p/<peer_id>``
    (``/tls/ws`` when the relay itself serves TLS; ``port`` when none is given).
    The result must parse as an SDK relay address. Raises ConfigError.
    """
    text = announce.strip()
    if not text.startswith("/"):
        if text.startswith("["):  # [v6]:port
            host, _, rest = text[1:].partition("]")
            port_text = rest.removeprefix(":")
        elif text.count(":") == 1:  # host:port
            host, _, port_text = text.partition(":")
        else:  # a host name, IPv4 or bare IPv6 address
            host, port_text = text, ""
        if port_text:
            if not port_text.isdigit():
                raise ConfigError(f"announce: bad port in {announce!r}")
            port = int(port_text)
        try:
            proto = "ip6" if ipaddress.ip_address(host).version == 6 else "ip4"
        except ValueError:
            proto = "dns"
        text = f"/{proto}/{host}/tcp/{port}/{'tls/ws' if tls else 'ws'}"
    if "/p2p/" not in text:
        text = text.rstrip("/") + f"/p2p/{peer_id}"
    try:
        address = parse_relay_address(text)
    except darkswap_trio.ConfigError as exc:
        raise ConfigError(f"announce: {exc}") from None
    if str(address.peer_id) != peer_id and peer_id != _PLACEHOLDER_PEER_ID:
        raise ConfigError(
            f"announce: {announce!r} names peer {address.peer_id}, this relay is {peer_id}"
        )
    return text


# Limits that SIGHUP applies to a running relay. Each is read where it is used (new
# sessions, new circuits, each admission or circuit check); every other setting (a new
# LimitsConfig field too, until it is listed here) is fixed at start: the change is
# logged as ignored.
LIVE_LIMITS = frozenset(
    {
        "max_sessions",
        "max_sessions_per_ip",
        "max_pending_per_ip",
        "max_pending_connections",
        "idle_timeout",
        "duplicate_probe_timeout",
        "messages_per_peer_rate",
        "messages_per_peer_burst",
        "bytes_per_peer_rate",
        "bytes_per_peer_burst",
        "max_circuits",
        "max_circuits_per_peer",
        "max_circuits_per_pair",
        "circuit_idle_timeout",
        "circuit_duration",
        "circuit_bytes",
        "circuit_stall_timeout",
        "max_topics",
        "max_topics_per_peer",
        "max_peers_per_topic",
        "topic_ttl",
        "topic_sample",
        "circuit_window_min",
        "circuit_window_budget",
    }
)
# Auth settings a reload applies (to registrations from then on); the mode is fixed.
LIVE_AUTH = frozenset(
    {"jwt_algorithm", "jwt_key", "jwt_key_file", "jwt_audience", "jwt_issuer", "jwt_leeway"}
)
_SECRET_KEYS = frozenset({"auth.jwt_key"})


def flatten_config(config: RelayConfig) -> dict[str, Any]:
    """Every setting as ``{"port": 9002, "auth.mode": ..., "limits.max_sessions": ...}``."""
    flat: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            for sub in dataclasses.fields(value):
                flat[f"{f.name}.{sub.name}"] = getattr(value, sub.name)
        else:
            flat[f.name] = value
    return flat


def describe_config(config: RelayConfig) -> dict[str, Any]:
    """:func:`flatten_config` with secrets (an inline JWT key) replaced by ``"<set>"``."""
    flat = flatten_config(config)
    for key in _SECRET_KEYS:
        if flat.get(key) is not None:
            flat[key] = "<set>"
    if flat.get("cluster.redis_url"):
        flat["cluster.redis_url"] = redact_url_password(flat["cluster.redis_url"])
    return flat


def config_changes(old: RelayConfig, new: RelayConfig) -> tuple[list[str], list[str]]:
    """Settings that differ, split into (applied live, ignored until restart)."""
    before, after = flatten_config(old), flatten_config(new)
    applied: list[str] = []
    ignored: list[str] = []
    for key, value in after.items():
        if before.get(key) == value:
            continue
        section, _, name = key.partition(".")
        live = (section == "limits" and name in LIVE_LIMITS) or (
            section == "auth" and name in LIVE_AUTH
        )
        (applied if live else ignored).append(key)
    return applied, ignored
