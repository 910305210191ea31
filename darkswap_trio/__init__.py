"""darkswap-trio: peers that reach each other through any NAT, on trio.

Direct WebRTC data channels when the network allows it, relay circuits when it
does not, and the relay server (package ``relay``) that provides signaling,
circuit relay and STUN.
"""

from ._circuit import CircuitClosedError as CircuitClosedError
from ._circuit import CircuitStatistics as CircuitStatistics
from ._circuit import RelayCircuit as RelayCircuit
from ._config import Config as Config
from ._config import ConfigError as ConfigError
from ._config import P2PConfig as P2PConfig
from ._config import RelayAddress as RelayAddress
from ._config import RelayManagerConfig as RelayManagerConfig
from ._config import parse_relay_address as parse_relay_address
from ._datachannel import DataChannel as DataChannel
from ._datachannel import DataChannelStatistics as DataChannelStatistics
from ._dtls import DatagramTransport as DatagramTransport
from ._dtls import DtlsError as DtlsError
from ._dtls import DtlsTransport as DtlsTransport
from ._dtls import generate_dtls_certificate as generate_dtls_certificate
from ._ice import IceError as IceError
from ._ice import IceTransport as IceTransport
from ._ice import IceTransportStatistics as IceTransportStatistics
from ._identity import Keypair as Keypair
from ._identity import PeerId as PeerId
from ._identity import load_or_create_keypair as load_or_create_keypair
from ._identity import parse_peer_id as parse_peer_id
from ._link_recovery import ConnectionDowngraded as ConnectionDowngraded
from ._link_recovery import LinkInterrupted as LinkInterrupted
from ._link_recovery import LinkRestored as LinkRestored
from ._metrics import ConnectionMetrics as ConnectionMetrics
from ._network import ConnectionUpgraded as ConnectionUpgraded
from ._network import NetworkEvent as NetworkEvent
from ._network import P2PNetwork as P2PNetwork
from ._network import PeerConnected as PeerConnected
from ._network import PeerDisconnected as PeerDisconnected
from ._network import PeerUnreachable as PeerUnreachable
from ._peer_connection import ConnectionFailed as ConnectionFailed
from ._peer_connection import PeerConnection as PeerConnection
from ._peer_connection import PeerConnectionConfig as PeerConnectionConfig
from ._peer_connection import PeerConnectionStatistics as PeerConnectionStatistics
from ._peer_connection import SignalingStateError as SignalingStateError
from ._peer_connection import open_peer_connection as open_peer_connection
from ._peer_link import MessageTooLarge as MessageTooLarge
from ._peer_link import PeerLink as PeerLink
from ._peer_link import PeerLinkStatistics as PeerLinkStatistics
from ._pool import ConnectionPool as ConnectionPool
from ._pool import PoolStatistics as PoolStatistics
from ._relay_manager import CircuitClosed as CircuitClosed
from ._relay_manager import CircuitCreated as CircuitCreated
from ._relay_manager import DataReceived as DataReceived
from ._relay_manager import NoRelayAvailable as NoRelayAvailable
from ._relay_manager import PeerNotFound as PeerNotFound
from ._relay_manager import RelayEvent as RelayEvent
from ._relay_manager import RelayManager as RelayManager
from ._relay_manager import RelayManagerNotStarted as RelayManagerNotStarted
from ._relay_manager import RelayServer as RelayServer
from ._relay_manager import RelayServerStatus as RelayServerStatus
from ._relay_manager import ServerConnected as ServerConnected
from ._relay_manager import ServerDisconnected as ServerDisconnected
from ._relay_manager import ServerFailed as ServerFailed
from ._relay_manager import UnknownCircuit as UnknownCircuit
from ._relay_session import CircuitRefused as CircuitRefused
from ._relay_session import RelayAuthenticationError as RelayAuthenticationError
from ._relay_session import RelayError as RelayError
from ._relay_session import RelaySession as RelaySession
from ._relay_session import open_relay_session as open_relay_session
from ._tcp_signaling import SignalMessage as SignalMessage
from ._tcp_signaling import TcpSignaling as TcpSignaling
from ._tcp_signaling import open_tcp_signaling as open_tcp_signaling
from ._topics import NoTopicPeers as NoTopicPeers
from ._topics import TopicMessage as TopicMessage
from ._topics import TopicSubscription as TopicSubscription
from ._webrtc_transport import DirectConnection as DirectConnection
from ._webrtc_transport import WebRtcSignalingClient as WebRtcSignalingClient
from ._webrtc_transport import WebRtcTransport as WebRtcTransport
from ._websocket import WebSocketConnection as WebSocketConnection
from ._websocket import WebSocketRequest as WebSocketRequest
from ._websocket import WebSocketStatistics as WebSocketStatistics
from ._websocket import open_websocket as open_websocket
from ._websocket import serve_websocket as serve_websocket
from .proto.dtls_certificate import DtlsCertificate as DtlsCertificate
from .proto.errors import DtlsParseError as DtlsParseError
from .proto.errors import GossipParseError as GossipParseError
from .proto.errors import ParseError as ParseError
from .proto.errors import PeerIdError as PeerIdError
from .proto.errors import SdpParseError as SdpParseError
from .proto.errors import SignalingParseError as SignalingParseError
from .proto.errors import StunParseError as StunParseError
from .proto.errors import WebSocketParseError as WebSocketParseError

__version__ = "0.1.0"
