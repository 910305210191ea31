"""Public test helpers: one seeded link model (``LinkModel``, ``SimulatedLink``, ``Nat``)
under an in-memory trio network (``VirtualNet``), simulated ICE and SCTP pairs, an
in-process relay, and a loop that drives one core on a UDP socket for interop tests."""

from ._core_loop import CoreLoop as CoreLoop
from ._ice_pair import IcePairSimulator as IcePairSimulator
from ._ice_pair import SimulatedPeer as SimulatedPeer
from ._link import DelayLine as DelayLine
from ._link import LinkModel as LinkModel
from ._link import Nat as Nat
from ._link import SimulatedLink as SimulatedLink
from ._paths import blackhole_direct_path as blackhole_direct_path
from ._relay import running_relay as running_relay
from ._sctp_pair import Livelock as Livelock
from ._sctp_pair import SctpPair as SctpPair
from ._virtualnet import VirtualNat as VirtualNat
from ._virtualnet import VirtualNet as VirtualNet
from ._virtualnet import VirtualNetStatistics as VirtualNetStatistics
from ._virtualnet import VirtualSocket as VirtualSocket
