"""darkswap-trio: peers that reach each other through any NAT, on trio.

Direct WebRTC data channels when the network allows it, relay circuits when it
does not, and the relay server (package ``relay``) that provides signaling,
circuit relay and STUN.
"""

from ._identity import Keypair as Keypair
from ._identity import PeerId as PeerId
from ._identity import load_or_create_keypair as load_or_create_keypair
from ._identity import parse_peer_id as parse_peer_id
from .proto.errors import ParseError as ParseError
from .proto.errors import PeerIdError as PeerIdError

__version__ = "0.1.0"
