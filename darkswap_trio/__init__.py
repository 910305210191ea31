"""darkswap-trio: peers that reach each other through any NAT, on trio.

Direct WebRTC data channels when the network allows it, relay circuits when it
does not, and the relay server (package ``relay``) that provides signaling,
circuit relay and STUN.
"""

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
from ._p2p._direct import DirectConnection as DirectConnection
from ._p2p._direct import WebRtcSignalingClient as WebRtcSignalingClient
from ._p2p._direct import WebRtcTransport as WebRtcTransport
from ._p2p._link_recovery import ConnectionDowngraded as ConnectionDowngraded
from ._p2p._link_recovery import LinkInterrupted as LinkInterrupted
from ._p2p._link_recovery import LinkRestored as LinkRestored
from ._p2p._metrics import ConnectionMetrics as ConnectionMetrics
from ._p2p._network import ConnectionUpgraded as ConnectionUpgraded
from ._p2p._network import NetworkEvent as NetworkEvent
from ._p2p._network import P2PNetwork as P2PNetwork
from ._p2p._network import PeerConnected as PeerConnected
from ._p2p._network import PeerDisconnected as PeerDisconnected
from ._p2p._network import PeerUnreachable as PeerUnreachable
from ._p2p._peer_link import MessageTooLarge as MessageTooLarge
from ._p2p._peer_link import PeerLink as PeerLink
from ._p2p._peer_link import PeerLinkStatistics as PeerLinkStatistics
from ._p2p._pool import ConnectionPool as ConnectionPool
from ._p2p._pool import PoolStatistics as PoolStatistics
from ._relay_client._circuit import CircuitClosedError as CircuitClosedError
from ._relay_client._circuit import CircuitStatistics as CircuitStatistics
from ._relay_client._circuit import RelayCircuit as RelayCircuit
from ._relay_client._manager import CircuitClosed as CircuitClosed
from ._relay_client._manager import CircuitCreated as CircuitCreated
from ._relay_client._manager import DataReceived as DataReceived
from ._relay_client._manager import NoRelayAvailable as NoRelayAvailable
from ._relay_client._manager import PeerNotFound as PeerNotFound
from ._relay_client._manager import RelayEvent as RelayEvent
from ._relay_client._manager import RelayManager as RelayManager
from ._relay_client._manager import RelayManagerNotStarted as RelayManagerNotStarted
from ._relay_client._manager import RelayServer as RelayServer
from ._relay_client._manager import RelayServerStatus as RelayServerStatus
from ._relay_client._manager import ServerConnected as ServerConnected
from ._relay_client._manager import ServerDisconnected as ServerDisconnected
from ._relay_client._manager import ServerFailed as ServerFailed
from ._relay_client._manager import UnknownCircuit as UnknownCircuit
from ._relay_client._session import CircuitRefused as CircuitRefused
from ._relay_client._session import RelayAuthenticationError as RelayAuthenticationError
from ._relay_client._session import RelayError as RelayError
from ._relay_client._session import RelaySession as RelaySession
from ._relay_client._session import open_relay_session as open_relay_session
from .proto.dtls._certificate import DtlsCertificate as DtlsCertificate
from .proto.errors import DtlsParseError as DtlsParseError
from .proto.errors import ParseError as ParseError
from .proto.errors import PeerIdError as PeerIdError
from .proto.errors import SdpParseError as SdpParseError
from .proto.errors import SignalingParseError as SignalingParseError
from .proto.errors import StunParseError as StunParseError
from .proto.errors import WebSocketParseError as WebSocketParseError
from .webrtc._datachannel import DataChannel as DataChannel
from .webrtc._datachannel import DataChannelStatistics as DataChannelStatistics
from .webrtc._peer_connection import ConnectionFailed as ConnectionFailed
from .webrtc._peer_connection import PeerConnection as PeerConnection
from .webrtc._peer_connection import PeerConnectionConfig as PeerConnectionConfig
from .webrtc._peer_connection import PeerConnectionStatistics as PeerConnectionStatistics
from .webrtc._peer_connection import SignalingStateError as SignalingStateError
from .webrtc._peer_connection import open_peer_connection as open_peer_connection
from .webrtc._tcp_signaling import SignalMessage as SignalMessage
from .webrtc._tcp_signaling import TcpSignaling as TcpSignaling
from .webrtc._tcp_signaling import open_tcp_signaling as open_tcp_signaling
from .websocket._endpoints import WebSocketConnection as WebSocketConnection
from .websocket._endpoints import WebSocketRequest as WebSocketRequest
from .websocket._endpoints import WebSocketStatistics as WebSocketStatistics
from .websocket._endpoints import open_websocket as open_websocket
from .websocket._endpoints import serve_websocket as serve_websocket

__version__ = "0.1.0"
