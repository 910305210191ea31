"""TURN (RFC 8656): the server core (allocations relaying UDP for clients over UDP or
TCP) and the client core (one allocation, used by the ICE agent for relay candidates).

Sans-IO like every core in :mod:`darkswap_trio.proto`: the relay's trio driver
(``relay/_turn.py``) and the peer connection's driver own the sockets and the clock.
"""

from .auth import NonceIssuer as NonceIssuer
from .auth import rest_api_credentials as rest_api_credentials
from .auth import rest_api_password as rest_api_password
from .client import TurnClient as TurnClient
from .client import TurnClientSettings as TurnClientSettings
from .client_events import Allocated as Allocated
from .client_events import AllocationEnded as AllocationEnded
from .client_events import AllocationFailed as AllocationFailed
from .client_events import PeerData as PeerData
from .client_events import PermissionFailed as PermissionFailed
from .client_events import TurnClientEvent as TurnClientEvent
from .codec import StreamDeframer as StreamDeframer
from .codec import TurnMessage as TurnMessage
from .codec import parse_channel_data_untrusted as parse_channel_data_untrusted
from .codec import parse_turn_untrusted as parse_turn_untrusted
from .events import AllocationClosed as AllocationClosed
from .events import AllocationRequested as AllocationRequested
from .events import ClientKey as ClientKey
from .events import LimitHit as LimitHit
from .events import ToClient as ToClient
from .events import ToPeer as ToPeer
from .events import TurnServerSettings as TurnServerSettings
from .events import TurnStatistics as TurnStatistics
from .policy import PeerPolicy as PeerPolicy
from .policy import canonical_peer_ip as canonical_peer_ip
from .server import TurnServer as TurnServer
