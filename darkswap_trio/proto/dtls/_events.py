"""Events, states and statistics of :class:`~darkswap_trio.proto.dtls._endpoint.DtlsEndpoint`."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "Closed",
    "DataReceived",
    "DtlsEvent",
    "DtlsState",
    "DtlsStateError",
    "DtlsStatistics",
    "Failed",
    "HandshakeComplete",
    "Role",
]

Role = Literal["client", "server"]


class DtlsState(enum.Enum):
    """Lifecycle of a :class:`DtlsEndpoint`."""

    NEW = "new"
    HANDSHAKING = "handshaking"
    CONNECTED = "connected"
    CLOSED = "closed"
    FAILED = "failed"


class DtlsStateError(RuntimeError):
    """A local call that the endpoint's current state does not allow."""


@dataclass(frozen=True)
class HandshakeComplete:
    """The handshake finished and the peer's certificate matched its fingerprint."""

    srtp_profile: str | None
    remote_fingerprint: str  # "sha-256 AB:CD:..."


@dataclass(frozen=True)
class DataReceived:
    """One application-data record from the peer."""

    data: bytes


@dataclass(frozen=True)
class Closed:
    """The peer closed the association with a close_notify alert."""

    reason: str


@dataclass(frozen=True)
class Failed:
    """The handshake or the association failed; the endpoint is unusable."""

    error: str


DtlsEvent = HandshakeComplete | DataReceived | Closed | Failed


@dataclass(frozen=True)
class DtlsStatistics:
    """Snapshot of an endpoint's counters."""

    state: DtlsState
    role: Role
    datagrams_sent: int
    bytes_sent: int
    datagrams_received: int
    bytes_received: int
    datagrams_dropped: int
    retransmissions: int
    application_bytes_sent: int
    application_bytes_received: int
    srtp_profile: str | None
