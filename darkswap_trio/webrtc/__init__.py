"""WebRTC data channels on trio: PeerConnection (ICE + DTLS + SCTP + DCEP) and its parts.

Most programs use :class:`darkswap_trio.P2PNetwork`, which opens these for them; this
package is for programs that exchange offers and answers themselves (with a browser,
aiortc, or another PeerConnection) over signaling of their own.
"""

from ..proto.dtls import DtlsCertificate as DtlsCertificate
from ._datachannel import DataChannel as DataChannel
from ._datachannel import DataChannelStatistics as DataChannelStatistics
from ._peer_connection import ConnectionFailed as ConnectionFailed
from ._peer_connection import PeerConnection as PeerConnection
from ._peer_connection import PeerConnectionConfig as PeerConnectionConfig
from ._peer_connection import PeerConnectionStatistics as PeerConnectionStatistics
from ._peer_connection import SignalingStateError as SignalingStateError
from ._peer_connection import TurnServerConfig as TurnServerConfig
from ._peer_connection import open_peer_connection as open_peer_connection
from ._tcp_signaling import SignalMessage as SignalMessage
from ._tcp_signaling import TcpSignaling as TcpSignaling
from ._tcp_signaling import open_tcp_signaling as open_tcp_signaling

__all__ = [
    "ConnectionFailed",
    "DataChannel",
    "DataChannelStatistics",
    "DtlsCertificate",
    "PeerConnection",
    "PeerConnectionConfig",
    "PeerConnectionStatistics",
    "SignalMessage",
    "SignalingStateError",
    "TcpSignaling",
    "TurnServerConfig",
    "open_peer_connection",
    "open_tcp_signaling",
]
