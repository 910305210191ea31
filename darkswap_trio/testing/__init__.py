"""Public test helpers: an in-memory network, a simulated ICE agent pair, an in-process relay."""

from ._ice_pair import IcePairSimulator as IcePairSimulator
from ._ice_pair import LinkModel as LinkModel
from ._ice_pair import SimulatedPeer as SimulatedPeer
from ._relay import running_relay as running_relay
from ._virtualnet import VirtualNat as VirtualNat
from ._virtualnet import VirtualNet as VirtualNet
from ._virtualnet import VirtualNetStatistics as VirtualNetStatistics
from ._virtualnet import VirtualSocket as VirtualSocket
