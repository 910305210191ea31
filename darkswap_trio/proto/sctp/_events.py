"""Events and statistics of :class:`~darkswap_trio.proto.sctp._association.SctpAssociation`."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class SctpState(enum.Enum):
    CLOSED = "closed"  # not connected yet: answers INIT with a cookie, keeps no state
    COOKIE_WAIT = "cookie-wait"
    COOKIE_ECHOED = "cookie-echoed"
    ESTABLISHED = "established"
    SHUTDOWN_PENDING = "shutdown-pending"
    SHUTDOWN_SENT = "shutdown-sent"
    SHUTDOWN_RECEIVED = "shutdown-received"
    SHUTDOWN_ACK_SENT = "shutdown-ack-sent"
    TERMINATED = "terminated"  # closed for good (shutdown, abort or failure)


@dataclass(frozen=True, slots=True)
class Connected:
    """The association is established; data can flow."""


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A complete user message. It counts against our receive window until polled."""

    stream_id: int
    ppid: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamsReset:
    """The peer reset these (our incoming) streams: RFC 6525, a data channel closing."""

    stream_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class OutgoingStreamsReset:
    """Our reset request for these outgoing streams was answered; SSNs restart at 0.

    ``accepted`` is False when the peer denied the request.
    """

    stream_ids: tuple[int, ...]
    accepted: bool = True


@dataclass(frozen=True, slots=True)
class BufferedAmountLow:
    """``buffered_amount(stream_id)`` fell to or below the stream's low threshold."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class Closed:
    """The association is gone. ``graceful`` is True only after a SHUTDOWN exchange."""

    reason: str
    graceful: bool = False


SctpEvent = (
    Connected | MessageReceived | StreamsReset | OutgoingStreamsReset | BufferedAmountLow | Closed
)


@dataclass(frozen=True, slots=True)
class SctpStatistics:
    state: SctpState
    cwnd: int
    ssthresh: int
    flight_size: int
    peer_rwnd: int
    local_rwnd: int
    rto: float
    srtt: float | None
    heartbeat_rtt: float | None
    retransmissions: int
    fast_retransmits: int
    t3_timeouts: int
    abandoned_messages: int
    packets_sent: int
    packets_received: int
    bytes_sent: int
    bytes_received: int
    messages_sent: int
    messages_received: int
    buffered_amount: int
