"""ICE (RFC 8445) as a sans-IO core: the agent, its check list and the STUN it speaks.

Drivers use only the names below; the underscored modules are the agent's parts."""

from ._agent import IceAgent as IceAgent
from ._checklist import Candidate as Candidate
from ._connectivity import TA as TA
from ._events import CandidateGathered as CandidateGathered
from ._events import ConsentLost as ConsentLost
from ._events import DataReceived as DataReceived
from ._events import GatheringComplete as GatheringComplete
from ._events import IceEvent as IceEvent
from ._events import IceState as IceState
from ._events import IceStateChanged as IceStateChanged
from ._events import IceStatistics as IceStatistics
from ._events import SelectedPairChanged as SelectedPairChanged
