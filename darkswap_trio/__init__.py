"""darkswap-trio: peers that reach each other through any NAT, on trio.

Direct WebRTC data channels when the network allows it, relay circuits when it
does not, and the relay server (package ``relay``) that provides signaling,
circuit relay and STUN.

The top level is the P2P SDK: the network, its links and pool, the relay manager and its
circuits, configuration, identities, events and errors. The lower layers have their own
public modules: :mod:`darkswap_trio.webrtc` (PeerConnection, data channels, ICE and DTLS
transports), :mod:`darkswap_trio.websocket` (the WebSocket library the relay runs on),
:mod:`darkswap_trio.proto` (the sans-IO cores; their parse errors in
:mod:`darkswap_trio.proto.errors`) and :mod:`darkswap_trio.testing`.
"""

import importlib as _importlib
import typing as _typing

from ._config import Config as Config
from ._config import ConfigError as ConfigError
from ._config import P2PConfig as P2PConfig
from ._config import RelayAddress as RelayAddress
from ._config import RelayManagerConfig as RelayManagerConfig
from ._config import parse_relay_address as parse_relay_address
from ._identity import Keypair as Keypair
from ._identity import PeerId as PeerId
from ._identity import load_or_create_keypair as load_or_create_keypair
from ._identity import parse_peer_id as parse_peer_id
from ._settings import apply_settings as apply_settings
from .proto.errors import ParseError as ParseError
from .proto.errors import PeerIdError as PeerIdError

# The rest loads on first use (PEP 562): the P2P network pulls in the whole WebRTC stack
# (ICE, DTLS, SCTP: ~0.6 s of imports), which a relay server, or a program that only
# opens relay sessions, never runs. ``from darkswap_trio import X`` works as before.
_LAZY: dict[str, tuple[str, ...]] = {
    "._p2p._dial_race": ("PeerUnreachable",),
    "._p2p._direct": (
        "DirectConnection",
        "WebRtcSignalingClient",
        "WebRtcTransport",
        "WebRtcTransportStatistics",
    ),
    "._p2p._metrics": ("ConnectionMetrics",),
    "._p2p._network": ("P2PNetwork",),
    "._p2p._network_events": (
        "ConnectionDowngraded",
        "ConnectionUpgraded",
        "LinkInterrupted",
        "LinkRestored",
        "NetworkEvent",
        "PeerConnected",
        "PeerDisconnected",
    ),
    "._p2p._peer_link": ("MessageTooLarge", "PeerLink", "PeerLinkStatistics"),
    "._p2p._pool": ("ConnectionPool", "PoolStatistics"),
    "._p2p._topics": ("NoTopicPeers", "TopicMessage", "TopicSubscription"),
    "._relay_client._circuit": ("CircuitClosedError", "CircuitStatistics", "RelayCircuit"),
    "._relay_client._manager": (
        "CircuitCreated",
        "CircuitEnded",
        "DataReceived",
        "NoRelayAvailable",
        "PeerNotFound",
        "RelayEvent",
        "RelayManager",
        "RelayServerState",
        "RelayServerStatus",
        "ServerConnected",
        "ServerDisconnected",
        "ServerFailed",
        "UnknownCircuit",
    ),
    "._relay_client._session": (
        "CircuitRefused",
        "RelayAuthenticationError",
        "RelayError",
        "RelaySession",
        "RelaySessionStatistics",
        "open_relay_session",
    ),
    "._relay_client._turn_credentials": ("TurnCredentials", "TurnUnavailable"),
    "._service": ("NotStarted",),
}
_MODULE_OF = {name: module for module, names in _LAZY.items() for name in names}

if _typing.TYPE_CHECKING:  # what type checkers and IDEs see: the same names, imported eagerly
    from ._p2p._dial_race import PeerUnreachable as PeerUnreachable
    from ._p2p._direct import DirectConnection as DirectConnection
    from ._p2p._direct import WebRtcSignalingClient as WebRtcSignalingClient
    from ._p2p._direct import WebRtcTransport as WebRtcTransport
    from ._p2p._direct import WebRtcTransportStatistics as WebRtcTransportStatistics
    from ._p2p._metrics import ConnectionMetrics as ConnectionMetrics
    from ._p2p._network import P2PNetwork as P2PNetwork
    from ._p2p._network_events import ConnectionDowngraded as ConnectionDowngraded
    from ._p2p._network_events import ConnectionUpgraded as ConnectionUpgraded
    from ._p2p._network_events import LinkInterrupted as LinkInterrupted
    from ._p2p._network_events import LinkRestored as LinkRestored
    from ._p2p._network_events import NetworkEvent as NetworkEvent
    from ._p2p._network_events import PeerConnected as PeerConnected
    from ._p2p._network_events import PeerDisconnected as PeerDisconnected
    from ._p2p._peer_link import MessageTooLarge as MessageTooLarge
    from ._p2p._peer_link import PeerLink as PeerLink
    from ._p2p._peer_link import PeerLinkStatistics as PeerLinkStatistics
    from ._p2p._pool import ConnectionPool as ConnectionPool
    from ._p2p._pool import PoolStatistics as PoolStatistics
    from ._p2p._topics import NoTopicPeers as NoTopicPeers
    from ._p2p._topics import TopicMessage as TopicMessage
    from ._p2p._topics import TopicSubscription as TopicSubscription
    from ._relay_client._circuit import CircuitClosedError as CircuitClosedError
    from ._relay_client._circuit import CircuitStatistics as CircuitStatistics
    from ._relay_client._circuit import RelayCircuit as RelayCircuit
    from ._relay_client._manager import CircuitCreated as CircuitCreated
    from ._relay_client._manager import CircuitEnded as CircuitEnded
    from ._relay_client._manager import DataReceived as DataReceived
    from ._relay_client._manager import NoRelayAvailable as NoRelayAvailable
    from ._relay_client._manager import PeerNotFound as PeerNotFound
    from ._relay_client._manager import RelayEvent as RelayEvent
    from ._relay_client._manager import RelayManager as RelayManager
    from ._relay_client._manager import RelayServerState as RelayServerState
    from ._relay_client._manager import RelayServerStatus as RelayServerStatus
    from ._relay_client._manager import ServerConnected as ServerConnected
    from ._relay_client._manager import ServerDisconnected as ServerDisconnected
    from ._relay_client._manager import ServerFailed as ServerFailed
    from ._relay_client._manager import UnknownCircuit as UnknownCircuit
    from ._relay_client._session import CircuitRefused as CircuitRefused
    from ._relay_client._session import RelayAuthenticationError as RelayAuthenticationError
    from ._relay_client._session import RelayError as RelayError
    from ._relay_client._session import RelaySession as RelaySession
    from ._relay_client._session import RelaySessionStatistics as RelaySessionStatistics
    from ._relay_client._session import open_relay_session as open_relay_session
    from ._relay_client._turn_credentials import TurnCredentials as TurnCredentials
    from ._relay_client._turn_credentials import TurnUnavailable as TurnUnavailable
    from ._service import NotStarted as NotStarted

__version__ = "0.1.0"

__all__ = [
    "CircuitClosedError",
    "CircuitCreated",
    "CircuitEnded",
    "CircuitRefused",
    "CircuitStatistics",
    "Config",
    "ConfigError",
    "ConnectionDowngraded",
    "ConnectionMetrics",
    "ConnectionPool",
    "ConnectionUpgraded",
    "DataReceived",
    "DirectConnection",
    "Keypair",
    "LinkInterrupted",
    "LinkRestored",
    "MessageTooLarge",
    "NetworkEvent",
    "NoRelayAvailable",
    "NoTopicPeers",
    "NotStarted",
    "P2PConfig",
    "P2PNetwork",
    "ParseError",
    "PeerConnected",
    "PeerDisconnected",
    "PeerId",
    "PeerIdError",
    "PeerLink",
    "PeerLinkStatistics",
    "PeerNotFound",
    "PeerUnreachable",
    "PoolStatistics",
    "RelayAddress",
    "RelayAuthenticationError",
    "RelayCircuit",
    "RelayError",
    "RelayEvent",
    "RelayManager",
    "RelayManagerConfig",
    "RelayServerState",
    "RelayServerStatus",
    "RelaySession",
    "RelaySessionStatistics",
    "ServerConnected",
    "ServerDisconnected",
    "ServerFailed",
    "TopicMessage",
    "TopicSubscription",
    "TurnCredentials",
    "TurnUnavailable",
    "UnknownCircuit",
    "WebRtcSignalingClient",
    "WebRtcTransport",
    "WebRtcTransportStatistics",
    "apply_settings",
    "load_or_create_keypair",
    "open_relay_session",
    "parse_peer_id",
    "parse_relay_address",
]


def __getattr__(name: str) -> object:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(module, __name__), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
