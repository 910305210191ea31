"""ICE + DTLS + SCTP + DCEP composed as one sans-IO core: a data-channel peer connection.

Drivers use only the names below; the underscored modules are the core's parts."""

from ..ice import CandidateGathered as CandidateGathered
from ..ice import GatheringComplete as GatheringComplete
from ..ice._events import Transmit as Transmit
from ._core import PeerCore as PeerCore
from ._events import BufferedAmountLow as BufferedAmountLow
from ._events import ChannelClosed as ChannelClosed
from ._events import ChannelMessage as ChannelMessage
from ._events import ChannelOpened as ChannelOpened
from ._events import PeerCounts as PeerCounts
from ._events import PeerEvent as PeerEvent
from ._events import StateChanged as StateChanged
