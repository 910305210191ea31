"""What the ICE agent hands back to its driver: transmits, events, state, statistics."""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from aioice.candidate import Candidate

__all__ = [
    "CandidateGathered",
    "ConsentLost",
    "DataReceived",
    "GatheringComplete",
    "IceEvent",
    "IceOutbox",
    "IceState",
    "IceStateChanged",
    "IceStatistics",
    "RoleChanged",
    "SelectedPairChanged",
    "Transmit",
]


class IceState(enum.Enum):
    """Overall agent state (a subset of RTCIceTransportState)."""

    NEW = "new"
    CHECKING = "checking"
    CONNECTED = "connected"
    FAILED = "failed"
    CLOSED = "closed"


@dataclass(frozen=True)
class Transmit:
    """A datagram to send to ``addr``, from the socket bound to ``local`` if given."""

    data: bytes
    addr: tuple[str, int]
    local: tuple[str, int] | None = None


@dataclass(frozen=True)
class CandidateGathered:
    """A local candidate to signal to the peer (trickle)."""

    candidate: Candidate


@dataclass(frozen=True)
class GatheringComplete:
    """Every local candidate has been gathered: signal end-of-candidates."""


@dataclass(frozen=True)
class IceStateChanged:
    state: IceState


@dataclass(frozen=True)
class SelectedPairChanged:
    """Data now flows between these candidates (first one means connected)."""

    local: Candidate
    remote: Candidate


@dataclass(frozen=True)
class RoleChanged:
    """A role conflict was resolved (RFC 8445 section 7.3.1.1)."""

    controlling: bool


@dataclass(frozen=True)
class ConsentLost:
    """No consent response for the consent timeout (RFC 7675): stop sending."""


@dataclass(frozen=True)
class DataReceived:
    """A non-STUN datagram (DTLS) from an address ICE has validated."""

    data: bytes
    addr: tuple[str, int]


IceEvent = (
    CandidateGathered
    | GatheringComplete
    | IceStateChanged
    | SelectedPairChanged
    | RoleChanged
    | ConsentLost
    | DataReceived
)


@dataclass(frozen=True)
class IceStatistics:
    """A snapshot of the agent's counters."""

    state: IceState
    controlling: bool
    local_candidates: int
    remote_candidates: int
    pairs: int
    succeeded_pairs: int
    checks_sent: int
    retransmissions: int
    requests_received: int
    responses_received: int
    role_conflicts: int
    datagrams_dropped: int
    selected_local: tuple[str, int] | None
    selected_remote: tuple[str, int] | None
    # "host", "srflx", "prflx" or "relay": a relay one means the data goes through TURN.
    selected_local_type: str | None = None
    selected_remote_type: str | None = None
    # The pair data goes on: the selected one, else (RFC 8445 section 12.1, data may
    # flow before nomination ends) the best valid pair. Its candidate types.
    active_local_type: str | None = None
    active_remote_type: str | None = None


# The agent's counters, fields of IceStatistics.
COUNTERS = (
    "checks_sent",
    "retransmissions",
    "requests_received",
    "responses_received",
    "role_conflicts",
    "datagrams_dropped",
)


# The queues are drained after every call; the bounds only stop a driver that forgot
# to drain from growing them without limit.
MAX_EVENTS = 1024
MAX_TRANSMITS = 1024


class IceOutbox:
    """What the agent's parts hand to the driver: datagrams and events, bounded."""

    def __init__(self) -> None:
        self.transmits: deque[Transmit] = deque()
        self.events: deque[IceEvent] = deque()

    def send(self, data: bytes, addr: tuple[str, int], local: tuple[str, int] | None) -> None:
        if len(self.transmits) < MAX_TRANSMITS:
            self.transmits.append(Transmit(data, addr, local))

    def emit(self, event: IceEvent) -> None:
        if len(self.events) < MAX_EVENTS:
            self.events.append(event)
