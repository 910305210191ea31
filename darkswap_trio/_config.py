"""SDK configuration: Config / P2PConfig / RelayManagerConfig, loadable from TOML.

Relay servers are given as multiaddrs and mapped to WebSocket URLs:
``/ip4|ip6|dns|dns4|dns6/HOST/tcp/PORT[/tls|/wss|/ws]/p2p/PEERID`` ->
``ws://HOST:PORT/signaling`` (or ``wss://`` with ``/tls`` or ``/wss``). The ``/p2p/``
part is mandatory: it is the identity the relay must prove during the handshake.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from multiaddr import Multiaddr
from multiaddr.exceptions import Error as MultiaddrError

from ._identity import PeerId
from ._settings import apply_settings
from .proto.errors import PeerIdError

if TYPE_CHECKING:  # imported where TURN URLs are parsed: the WebRTC stack is heavy to import
    from .webrtc._turn_servers import TurnServerConfig

DEFAULT_RELAY_PORT = 9002
SIGNALING_PATH = "/signaling"
_HOST_PROTOCOLS = ("ip4", "ip6", "dns", "dns4", "dns6")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names it."""


@dataclass(frozen=True)
class RelayAddress:
    """A relay server: where to connect and which PeerId it must prove."""

    multiaddr: str
    host: str
    port: int
    secure: bool
    peer_id: PeerId

    @property
    def url(self) -> str:
        scheme = "wss" if self.secure else "ws"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}{SIGNALING_PATH}"

    def __str__(self) -> str:
        return self.multiaddr


def bootstrap_peer_id(text: str) -> str:
    """The peer id of a bootstrap peer given as a PeerId or a multiaddr ending in /p2p/<id>."""
    if not isinstance(text, str):
        raise ConfigError(f"bootstrap peer must be a string, got {text!r}")
    candidate = text.rsplit("/p2p/", 1)[1] if text.startswith("/") and "/p2p/" in text else text
    try:
        return str(PeerId.from_string(candidate))
    except PeerIdError as exc:
        raise ConfigError(
            f"bootstrap peer {text!r} is not a peer id or a /p2p/ multiaddr: {exc}"
        ) from None


def parse_relay_address(text: str) -> RelayAddress:
    """Map a relay multiaddr to a :class:`RelayAddress`; ConfigError names a bad one."""
    if not isinstance(text, str):
        raise ConfigError(f"relay address must be a string, got {text!r}")
    return _parse_relay_address(text)


# Cached: parsing a multiaddr costs ~0.1-0.2 ms (the multiaddr package), a tenth of a
# registration, and a peer dials the same few relays again and again. RelayAddress
# and its PeerId are immutable, so sharing one is safe; errors are not cached.
@functools.lru_cache(maxsize=256)
def _parse_relay_address(text: str) -> RelayAddress:
    try:
        parts = [(proto.name, value) for proto, value in Multiaddr(text).items()]
    except (MultiaddrError, ValueError, TypeError) as exc:
        raise ConfigError(f"invalid relay multiaddr {text!r}: {exc}") from None
    names = [name for name, _ in parts]
    if not parts or names[0] not in _HOST_PROTOCOLS:
        raise ConfigError(
            f"relay multiaddr {text!r} must start with /ip4, /ip6, /dns, /dns4 or /dns6"
        )
    host = str(parts[0][1])
    port = DEFAULT_RELAY_PORT
    rest = parts[1:]
    if rest and rest[0][0] == "tcp":
        port = int(rest[0][1])
        rest = rest[1:]
    secure = False
    peer_text: str | None = None
    for name, value in rest:
        if name in ("tls", "wss"):
            secure = True
        elif name == "ws":
            pass
        elif name == "p2p":
            peer_text = str(value)
        else:
            raise ConfigError(f"relay multiaddr {text!r}: unsupported component /{name}")
    if names[-1] != "p2p" or peer_text is None:
        raise ConfigError(f"relay multiaddr {text!r} lacks a trailing /p2p/<relay peer id>")
    try:
        peer_id = PeerId.from_string(peer_text)
    except PeerIdError as exc:
        raise ConfigError(f"relay multiaddr {text!r} has an invalid peer id: {exc}") from None
    if not 0 < port < 65536:
        raise ConfigError(f"relay multiaddr {text!r} has an invalid port {port}")
    return RelayAddress(text, host, port, secure, peer_id)


@dataclass
class RelayManagerConfig:
    """How the RelayManager talks to relays (the guide's fields and defaults)."""

    connection_timeout: float = 30.0  # connect + handshake, seconds
    ping_interval: float = 30.0  # seconds between Pings used for latency and liveness
    reconnect_interval: float = 5.0  # first backoff step, seconds (doubles, jittered)
    max_reconnect_attempts: int = 5  # consecutive failures before a relay is Failed
    # backoff cap, seconds: 8 s (jittered down to 4 s) keeps a relay restart within the
    # 10 s in which links re-open (README, "Links that survive")
    max_reconnect_interval: float = 8.0
    token_refresh_margin: float = 60.0  # refresh a JWT this long before it expires

    def validate(self) -> RelayManagerConfig:
        for name in (
            "connection_timeout",
            "ping_interval",
            "reconnect_interval",
            "max_reconnect_interval",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(
                    f"relay_manager.{name} must be positive, got {getattr(self, name)}"
                )
        if self.max_reconnect_attempts < 0:
            raise ConfigError("relay_manager.max_reconnect_attempts must not be negative")
        if self.token_refresh_margin < 0:
            raise ConfigError("relay_manager.token_refresh_margin must not be negative")
        return self


@dataclass
class P2PConfig:
    """Peer-level settings: identity, relays, and the direct path."""

    relay_servers: list[str] = field(default_factory=list)
    key_file: str | None = None  # identity key; None = ephemeral
    stun_servers: list[str] = field(default_factory=list)  # "host:port"
    # TURN servers for relay candidates ("turn:host:port?transport=udp"), all with the
    # same long-term credentials (e.g. `darkswap-relay turn-credentials`); "relay"
    # makes direct attempts use relay candidates only (README, "TURN relay candidates").
    turn_servers: list[str] = field(default_factory=list)
    turn_username: str = ""
    turn_credential: str = ""
    # Ask the relay that signals a direct attempt for TURN credentials and URIs
    # (docs/PROTOCOL.md 13.6), added to turn_servers.
    turn_from_relay: bool = False
    ice_transport_policy: str = "all"
    enable_direct: bool = True
    enable_relay: bool = True
    max_connections: int = 100
    connection_idle_timeout: float = 300.0
    event_buffer: int = 256  # bound on queued events for a slow consumer
    # Seconds for one direct (WebRTC) attempt. Only an Offer that is never answered
    # (a peer with direct disabled, or gone) runs into it: with an Answer, ICE fails
    # 4.5 s after end-of-candidates and DTLS retransmits at 1 and 3 s (README, "Real NATs").
    direct_connect_timeout: float = 10.0
    direct_delay: float = 0.0  # head start given to the relay path by connect_to_peer
    direct_answer_timeout: float = 10.0  # an answer to a peer's Offer not connected by then ends
    direct_max_half_open: int = 16  # answers not yet connected; the oldest is evicted beyond
    # PeerLink (docs/PROTOCOL.md, "PeerLink protocol"; README, "Links that survive")
    link_max_message_size: int = 1 << 20  # largest message on a link, on either path
    link_window: int = 4 << 20  # unacknowledged bytes a link keeps (>= 2 messages)
    link_ping_interval: float = 1.0  # silence on the direct path before an ack request
    link_path_timeout: float = 3.0  # silence on the direct path before it is declared dead
    link_recovery_timeout: float = 30.0  # a link with no path for this long is over
    direct_retry_interval: float = 2.0  # first wait before retrying direct after a downgrade
    direct_retry_max_interval: float = 60.0  # cap of that (doubling) wait
    # Incoming relay circuits we did not ask for (README, "Unsolicited relay circuits"):
    # plain (non-link) circuits are accepted if True, refused if False, or per peer id by
    # a callable(peer_id) -> bool; an incoming circuit must send its first message, and a
    # plain one some message either way, within relay_circuit_idle_timeout, and at most
    # max_unclaimed_relay_circuits per peer may wait for their first message.
    accept_relay_circuits: bool | Callable[[str], bool] = True
    relay_circuit_idle_timeout: float = 120.0
    max_unclaimed_relay_circuits: int = 4
    # Topics (README, "Topics: publish/subscribe"): peers dialed at start and kept
    # linked (PeerIds, or multiaddrs ending in /p2p/<peer id>), and the bound on each
    # subscription's unread messages (the oldest are dropped, and counted, beyond it).
    bootstrap_peers: list[str] = field(default_factory=list)
    topic_queue_size: int = 1024

    def relay_addresses(self) -> list[RelayAddress]:
        return [parse_relay_address(a) for a in self.relay_servers]

    def turn_server_configs(self) -> list[TurnServerConfig]:
        """``turn_servers`` with the credentials; ConfigError for bad ones."""
        if self.ice_transport_policy not in ("all", "relay"):
            raise ConfigError(
                f"p2p.ice_transport_policy must be 'all' or 'relay', not "
                f"{self.ice_transport_policy!r}"
            )
        if self.turn_servers and not (self.turn_username and self.turn_credential):
            raise ConfigError("p2p.turn_servers need p2p.turn_username and p2p.turn_credential")
        from .webrtc._turn_servers import TurnServerConfig

        configs = []
        for url in self.turn_servers:
            try:
                configs.append(
                    TurnServerConfig(url, str(self.turn_username), str(self.turn_credential))
                )
            except ValueError as exc:
                raise ConfigError(f"p2p.turn_servers: {exc}") from None
        if self.ice_transport_policy == "relay" and not (configs or self.turn_from_relay):
            raise ConfigError(
                "p2p.ice_transport_policy = 'relay' needs p2p.turn_servers or p2p.turn_from_relay"
            )
        return configs

    def bootstrap_peer_ids(self) -> list[str]:
        return [bootstrap_peer_id(text) for text in self.bootstrap_peers]

    def validate(self) -> P2PConfig:
        self.relay_addresses()
        if self.max_connections < 1:
            raise ConfigError("p2p.max_connections must be at least 1")
        if self.event_buffer < 1:
            raise ConfigError("p2p.event_buffer must be at least 1")
        if self.direct_connect_timeout <= 0 or self.direct_delay < 0:
            raise ConfigError("p2p.direct_connect_timeout must be positive, direct_delay >= 0")
        if self.direct_answer_timeout <= 0 or self.direct_max_half_open < 1:
            raise ConfigError(
                "p2p.direct_answer_timeout must be positive, direct_max_half_open >= 1"
            )
        if self.connection_idle_timeout <= 0:
            raise ConfigError("p2p.connection_idle_timeout must be positive")
        if self.link_max_message_size < 1 or self.link_window < 2 * (
            self.link_max_message_size + 4
        ):
            raise ConfigError(
                "p2p.link_max_message_size must be positive and p2p.link_window "
                "at least twice that (plus 8 bytes)"
            )
        if not 0 < self.link_ping_interval < self.link_path_timeout:
            raise ConfigError(
                "p2p.link_ping_interval must be positive and below p2p.link_path_timeout"
            )
        if self.link_recovery_timeout <= 0:
            raise ConfigError("p2p.link_recovery_timeout must be positive")
        if not 0 < self.direct_retry_interval <= self.direct_retry_max_interval:
            raise ConfigError(
                "p2p.direct_retry_interval must be positive and <= direct_retry_max_interval"
            )
        if not isinstance(self.accept_relay_circuits, bool) and not callable(
            self.accept_relay_circuits
        ):
            raise ConfigError(
                "p2p.accept_relay_circuits must be a bool or a callable(peer_id) -> bool"
            )
        if not self.relay_circuit_idle_timeout > 0 or self.max_unclaimed_relay_circuits < 1:
            raise ConfigError(
                "p2p.relay_circuit_idle_timeout must be positive and "
                "p2p.max_unclaimed_relay_circuits at least 1"
            )
        self.turn_server_configs()
        self.bootstrap_peer_ids()
        if self.topic_queue_size < 1:
            raise ConfigError("p2p.topic_queue_size must be at least 1")
        return self


@dataclass
class Config:
    p2p: P2PConfig = field(default_factory=P2PConfig)
    relay_manager: RelayManagerConfig = field(default_factory=RelayManagerConfig)

    def validate(self) -> Config:
        self.p2p.validate()
        self.relay_manager.validate()
        return self

    @classmethod
    def from_toml(cls, source: str | Path) -> Config:
        """Load from a TOML file path (a ``Path``, or a ``str`` without a newline) or
        from TOML text (a ``str`` with a newline). A missing or unreadable file is a
        ConfigError naming the path and the OS error, never a TOML syntax error."""
        if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source):
            path = Path(source)
            try:
                text = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                raise ConfigError(f"config file {str(path)!r} does not exist") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"cannot read config file {str(path)!r}: {exc}") from exc
            origin = f"config file {str(path)!r}"
        elif isinstance(source, str):
            text, origin = source, "config text"
        else:
            raise TypeError(f"from_toml takes a path or TOML text, not {type(source).__name__}")
        try:
            table = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{origin} is not valid TOML: {exc}") from None
        config = cls()
        apply_settings(config, table, ConfigError)
        return config.validate()


def stun_host_port(text: str) -> tuple[str, int]:
    """``host:port`` / ``[v6]:port`` / bare host (port 3478, the STUN default)."""
    if text.count(":") > 1 and not text.startswith("["):
        return text, 3478  # a bare IPv6 literal
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or (text.startswith("[") and not host.endswith("]")):
        return text.strip("[]"), 3478
    return host.strip("[]"), int(port)
