"""Data channels over SCTP: DCEP (RFC 8832), PPIDs and the channel table (RFC 8831).

:class:`DataChannelRegistry` is sans-IO and has no timers: the SCTP association below
hands it complete user messages (``receive_message``) and incoming stream resets
(``receive_stream_reset``), and drains :meth:`DataChannelRegistry.poll_send` for
:class:`SctpMessage` / :class:`StreamReset` instructions. Channel lifecycle events
come out of :meth:`DataChannelRegistry.poll_event`. Drain both after every call.

Nothing a peer sends makes ``receive_*`` raise: malformed DCEP, unknown PPIDs, data
on unknown streams and oversized messages become :class:`ProtocolViolation` events
and are dropped. Local misuse (sending on a closed channel, a message larger than
the peer's ``a=max-message-size``) raises at the call site.
"""

from __future__ import annotations

import enum
import struct
from collections import deque
from dataclasses import dataclass

from .errors import DcepParseError

DCEP_OPEN = 0x03
DCEP_ACK = 0x02
_UNORDERED_BIT = 0x80
_OPEN_HEADER = struct.Struct("!BBHIHH")
MAX_STREAM_ID = 65534  # 65535 is reserved (RFC 8831 section 6.6)


class Ppid(enum.IntEnum):
    """SCTP payload protocol identifiers used by WebRTC (RFC 8831 section 8)."""

    DCEP = 50
    STRING = 51
    BINARY_PARTIAL = 52  # deprecated; received for interop with old peers, never sent
    BINARY = 53
    STRING_PARTIAL = 54  # deprecated; received for interop with old peers, never sent
    STRING_EMPTY = 56
    BINARY_EMPTY = 57


class Reliability(enum.IntEnum):
    """Channel type without the unordered bit (RFC 8832 section 5.1)."""

    RELIABLE = 0x00
    REXMIT = 0x01
    TIMED = 0x02


@dataclass(frozen=True)
class DcepOpen:
    """DATA_CHANNEL_OPEN. ``reliability_parameter`` is retransmits or lifetime (ms)."""

    label: str
    protocol: str = ""
    ordered: bool = True
    reliability: Reliability = Reliability.RELIABLE
    reliability_parameter: int = 0
    priority: int = 256

    def encode(self) -> bytes:
        """Wire form; ValueError if a field does not fit."""
        label, protocol = self.label.encode(), self.protocol.encode()
        if len(label) > 0xFFFF or len(protocol) > 0xFFFF:
            raise ValueError("label and protocol must each be at most 65535 UTF-8 bytes")
        if not 0 <= self.priority <= 0xFFFF or not 0 <= self.reliability_parameter <= 0xFFFFFFFF:
            raise ValueError("priority must fit 16 bits and reliability_parameter 32 bits")
        channel_type = self.reliability | (0 if self.ordered else _UNORDERED_BIT)
        header = _OPEN_HEADER.pack(
            DCEP_OPEN,
            channel_type,
            self.priority,
            self.reliability_parameter,
            len(label),
            len(protocol),
        )
        return header + label + protocol


@dataclass(frozen=True)
class DcepAck:
    """DATA_CHANNEL_ACK: a single byte."""

    def encode(self) -> bytes:
        """Wire form."""
        return bytes([DCEP_ACK])


def parse_dcep_untrusted(data: bytes) -> DcepOpen | DcepAck:
    """Parse a DCEP message (PPID 50); raises only :class:`DcepParseError`."""
    if not data:
        raise DcepParseError("empty DCEP message")
    if data[0] == DCEP_ACK:
        if len(data) != 1:
            raise DcepParseError(f"DATA_CHANNEL_ACK must be 1 byte, got {len(data)}")
        return DcepAck()
    if data[0] != DCEP_OPEN:
        raise DcepParseError(f"unknown DCEP message type 0x{data[0]:02x}")
    if len(data) < _OPEN_HEADER.size:
        raise DcepParseError(f"DATA_CHANNEL_OPEN shorter than {_OPEN_HEADER.size} bytes")
    _, channel_type, priority, parameter, label_len, protocol_len = _OPEN_HEADER.unpack_from(data)
    if len(data) != _OPEN_HEADER.size + label_len + protocol_len:
        raise DcepParseError("DATA_CHANNEL_OPEN length does not match label/protocol lengths")
    try:
        reliability = Reliability(channel_type & ~_UNORDERED_BIT)
    except ValueError:
        raise DcepParseError(f"unknown DCEP channel type 0x{channel_type:02x}") from None
    start = _OPEN_HEADER.size
    try:
        label = data[start : start + label_len].decode("utf-8")
        protocol = data[start + label_len :].decode("utf-8")
    except UnicodeDecodeError:
        raise DcepParseError("DCEP label or protocol is not valid UTF-8") from None
    return DcepOpen(
        label=label,
        protocol=protocol,
        ordered=not channel_type & _UNORDERED_BIT,
        reliability=reliability,
        # RFC 8832 5.1: the parameter is ignored for reliable channels.
        reliability_parameter=0 if reliability is Reliability.RELIABLE else parameter,
        priority=priority,
    )


def encode_user_message(message: str | bytes) -> tuple[Ppid, bytes]:
    """(PPID, payload) for a user message; empty ones carry one zero byte (RFC 8831 6.6)."""
    if isinstance(message, str):
        return (Ppid.STRING, message.encode()) if message else (Ppid.STRING_EMPTY, b"\x00")
    if isinstance(message, (bytes, bytearray, memoryview)):
        data = bytes(message)
        return (Ppid.BINARY, data) if data else (Ppid.BINARY_EMPTY, b"\x00")
    raise TypeError(f"a data channel message is str or bytes, not {type(message).__name__}")


def decode_user_message_untrusted(ppid: int, payload: bytes) -> str | bytes:
    """Inverse of :func:`encode_user_message`; raises only :class:`DcepParseError`."""
    if ppid in (Ppid.STRING, Ppid.STRING_PARTIAL):
        try:
            return bytes(payload).decode("utf-8")
        except UnicodeDecodeError:
            raise DcepParseError("string message is not valid UTF-8") from None
    if ppid in (Ppid.BINARY, Ppid.BINARY_PARTIAL):
        return bytes(payload)
    if ppid == Ppid.STRING_EMPTY:
        return ""
    if ppid == Ppid.BINARY_EMPTY:
        return b""
    raise DcepParseError(f"PPID {ppid} is not a data channel user message")


class ChannelState(enum.Enum):
    """W3C RTCDataChannelState, with OPENING for "connecting"."""

    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(frozen=True)
class ChannelInfo:
    """What was agreed for a channel; fixed for its lifetime."""

    stream_id: int
    label: str
    protocol: str
    ordered: bool
    max_retransmits: int | None
    max_packet_lifetime_ms: int | None
    priority: int
    negotiated: bool
    opened_locally: bool


# Instructions for the SCTP layer (poll_send).


@dataclass(frozen=True)
class SctpMessage:
    """Send one user message on ``stream_id`` with these delivery options."""

    stream_id: int
    ppid: int
    payload: bytes
    ordered: bool
    max_retransmits: int | None
    lifetime_ms: int | None


@dataclass(frozen=True)
class StreamReset:
    """Reset our outgoing stream ``stream_id`` (RFC 6525): how a channel closes."""

    stream_id: int


# Events (poll_event).


@dataclass(frozen=True)
class ChannelOpenedByPeer:
    """The peer opened a channel; it is open and our ACK is queued."""

    channel: ChannelInfo


@dataclass(frozen=True)
class ChannelAcknowledged:
    """A channel we opened is acknowledged (DATA_CHANNEL_ACK or first peer message)."""

    stream_id: int


@dataclass(frozen=True)
class MessageReceived:
    """One complete user message."""

    stream_id: int
    message: str | bytes


@dataclass(frozen=True)
class ChannelClosed:
    """Both directions of the channel's stream are reset; its id is free again."""

    stream_id: int


@dataclass(frozen=True)
class ProtocolViolation:
    """The peer sent something invalid; it was dropped (and the stream maybe reset)."""

    stream_id: int
    reason: str


DataChannelEvent = (
    ChannelOpenedByPeer | ChannelAcknowledged | MessageReceived | ChannelClosed | ProtocolViolation
)


class MessageTooLarge(ValueError):
    """The message exceeds the peer's ``a=max-message-size``."""


class ChannelStateError(RuntimeError):
    """The channel does not exist or is not in a state that allows this call."""


class ChannelLimitError(RuntimeError):
    """No stream id is free (channel count or negotiated stream limit reached)."""


class _Channel:
    """Mutable per-channel state, private to the registry."""

    def __init__(self, info: ChannelInfo, state: ChannelState) -> None:
        self.info = info
        self.state = state
        self.partial = bytearray()  # deprecated PPID 52/54 fragments
        self.discarding_partial = False


class DataChannelRegistry:
    """The table of data channels on one SCTP association (sans-IO).

    ``dtls_client`` picks stream-id parity (RFC 8832 section 6: the DTLS client uses
    even ids, the server odd ids). ``remote_max_message_size`` is the peer's
    ``a=max-message-size`` (0 = unlimited); ``local_max_message_size`` is ours,
    applied to reassembled deprecated partial messages and whole messages received.
    """

    def __init__(
        self,
        *,
        dtls_client: bool,
        remote_max_message_size: int = 65536,
        local_max_message_size: int = 262144,
        max_channels: int = 1024,
        stream_limit: int = MAX_STREAM_ID + 1,
    ) -> None:
        self.dtls_client = dtls_client
        self.remote_max_message_size = remote_max_message_size
        self.local_max_message_size = local_max_message_size
        self.max_channels = max_channels
        self._stream_limit = min(stream_limit, MAX_STREAM_ID + 1)
        self._channels: dict[int, _Channel] = {}
        self._sends: deque[SctpMessage | StreamReset] = deque()
        self._events: deque[DataChannelEvent] = deque()

    # ---- queries

    def poll_send(self) -> SctpMessage | StreamReset | None:
        """Next instruction for the SCTP layer, or None."""
        return self._sends.popleft() if self._sends else None

    def poll_event(self) -> DataChannelEvent | None:
        """Next event, or None."""
        return self._events.popleft() if self._events else None

    def channel(self, stream_id: int) -> ChannelInfo:
        """The channel on ``stream_id``; KeyError if there is none."""
        return self._channels[stream_id].info

    def state_of(self, stream_id: int) -> ChannelState:
        """State of the channel on ``stream_id``; ids not in the table are CLOSED."""
        channel = self._channels.get(stream_id)
        return channel.state if channel else ChannelState.CLOSED

    def channels(self) -> tuple[ChannelInfo, ...]:
        """All channels not yet closed, by stream id."""
        return tuple(self._channels[sid].info for sid in sorted(self._channels))

    def limit_streams(self, outbound_streams: int) -> None:
        """Restrict new ids to the stream count SCTP negotiated (ids < count)."""
        self._stream_limit = min(outbound_streams, MAX_STREAM_ID + 1)

    # ---- local calls

    def open_channel(
        self,
        label: str,
        *,
        protocol: str = "",
        ordered: bool = True,
        max_retransmits: int | None = None,
        max_packet_lifetime_ms: int | None = None,
        priority: int = 256,
        negotiated_id: int | None = None,
    ) -> int:
        """Open a channel and return its stream id.

        With ``negotiated_id`` the channel was agreed out of band: it is open at once
        and no DCEP is sent. Otherwise a DATA_CHANNEL_OPEN is queued and the channel
        stays OPENING (sending allowed, ordered) until the peer acknowledges.
        """
        if max_retransmits is not None and max_packet_lifetime_ms is not None:
            raise ValueError("set at most one of max_retransmits and max_packet_lifetime_ms")
        for name, value in (
            ("max_retransmits", max_retransmits),
            ("max_packet_lifetime_ms", max_packet_lifetime_ms),
        ):
            if value is not None and not 0 <= value <= 0xFFFFFFFF:
                raise ValueError(f"{name} must be 0..2**32-1")
        if not 0 <= priority <= 0xFFFF:
            raise ValueError("priority must be 0..65535")
        if len(self._channels) >= self.max_channels:
            raise ChannelLimitError(f"already {len(self._channels)} channels open")
        if negotiated_id is None:
            stream_id = self._free_stream_id()
        elif not 0 <= negotiated_id < self._stream_limit or negotiated_id in self._channels:
            raise ChannelLimitError(f"stream id {negotiated_id} is out of range or in use")
        else:
            stream_id = negotiated_id
        info = ChannelInfo(
            stream_id=stream_id,
            label=label,
            protocol=protocol,
            ordered=ordered,
            max_retransmits=max_retransmits,
            max_packet_lifetime_ms=max_packet_lifetime_ms,
            priority=priority,
            negotiated=negotiated_id is not None,
            opened_locally=True,
        )
        if negotiated_id is not None:
            self._channels[stream_id] = _Channel(info, ChannelState.OPEN)
            return stream_id
        if max_retransmits is not None:
            reliability, parameter = Reliability.REXMIT, max_retransmits
        elif max_packet_lifetime_ms is not None:
            reliability, parameter = Reliability.TIMED, max_packet_lifetime_ms
        else:
            reliability, parameter = Reliability.RELIABLE, 0
        open_message = DcepOpen(label, protocol, ordered, reliability, parameter, priority)
        payload = open_message.encode()  # ValueError for an oversized label, before any state
        self._channels[stream_id] = _Channel(info, ChannelState.OPENING)
        # RFC 8832 section 6: DCEP messages go reliable and ordered.
        self._sends.append(SctpMessage(stream_id, Ppid.DCEP, payload, True, None, None))
        return stream_id

    def send(self, stream_id: int, message: str | bytes) -> None:
        """Queue a user message (str or bytes, empty allowed) on an open channel.

        Raises :class:`MessageTooLarge` above the peer's max-message-size and
        :class:`ChannelStateError` unless the channel is OPENING or OPEN.
        """
        self._sends.append(SctpMessage(stream_id, *self.outgoing(stream_id, message)))

    def outgoing(
        self, stream_id: int, message: str | bytes
    ) -> tuple[int, bytes, bool, int | None, int | None]:
        """:meth:`send` without the queue, for a caller that hands the message to SCTP
        itself (the data path; only while :meth:`sends_pending` is False, or it would
        overtake what is queued): the fields of the :class:`SctpMessage` that
        :meth:`send` would queue, after the same checks."""
        channel = self._channels.get(stream_id)
        if channel is None or channel.state not in (ChannelState.OPENING, ChannelState.OPEN):
            state = channel.state.value if channel else "closed"
            raise ChannelStateError(f"cannot send on channel {stream_id}: it is {state}")
        ppid, payload = encode_user_message(message)
        limit = self.remote_max_message_size
        if limit and len(payload) > limit:
            raise MessageTooLarge(
                f"message of {len(payload)} bytes exceeds the peer's max-message-size "
                f"of {limit} bytes (a=max-message-size)"
            )
        info = channel.info
        # RFC 8832 section 6: until the ACK arrives, send ordered so OPEN arrives first.
        ordered = info.ordered or channel.state is ChannelState.OPENING
        return ppid, payload, ordered, info.max_retransmits, info.max_packet_lifetime_ms

    def sends_pending(self) -> bool:
        """Whether :meth:`poll_send` has an instruction waiting."""
        return bool(self._sends)

    def close_channel(self, stream_id: int) -> None:
        """Start closing: reset our outgoing stream; CLOSED when the peer resets its own."""
        channel = self._channels.get(stream_id)
        if channel is None or channel.state in (ChannelState.CLOSING, ChannelState.CLOSED):
            return
        channel.state = ChannelState.CLOSING
        self._sends.append(StreamReset(stream_id))

    # ---- input from the SCTP layer (untrusted: never raises for peer input)

    def receive_user_message(self, stream_id: int, ppid: int, payload: bytes) -> str | bytes | None:
        """:meth:`receive_message` for the data path: a whole string or binary message
        on an open channel is returned rather than queued as a :class:`MessageReceived`;
        for anything else (None) :meth:`receive_message` has queued what it made."""
        channel = self._channels.get(stream_id)
        if (
            channel is not None
            and channel.state is ChannelState.OPEN
            and not channel.partial
            and not channel.discarding_partial
            and (not self.local_max_message_size or len(payload) <= self.local_max_message_size)
        ):
            if ppid == Ppid.BINARY:
                return bytes(payload)
            if ppid == Ppid.STRING:
                try:
                    return bytes(payload).decode("utf-8")
                except UnicodeDecodeError:
                    pass  # reported below
        self.receive_message(stream_id, ppid, payload)
        return None

    def receive_message(self, stream_id: int, ppid: int, payload: bytes) -> None:
        """A complete SCTP user message arrived on ``stream_id``."""
        if ppid == Ppid.DCEP:
            self._receive_dcep(stream_id, bytes(payload))
            return
        channel = self._channels.get(stream_id)
        if channel is None:
            self._violation(stream_id, f"data (PPID {ppid}) on a stream with no channel")
            return
        if ppid in (Ppid.STRING_PARTIAL, Ppid.BINARY_PARTIAL):
            self._receive_partial(channel, payload)
            return
        if channel.partial or channel.discarding_partial:
            discarding = channel.discarding_partial
            payload = bytes(channel.partial) + bytes(payload)
            channel.partial.clear()
            channel.discarding_partial = False
            if discarding:
                return  # the rest of an oversized partial message, already reported
        limit = self.local_max_message_size
        if limit and len(payload) > limit:
            self._violation(stream_id, f"message of {len(payload)} bytes exceeds ours ({limit})")
            return
        try:
            message = decode_user_message_untrusted(ppid, payload)
        except DcepParseError as exc:
            self._violation(stream_id, str(exc))
            return
        if channel.state is ChannelState.OPENING:
            # The peer saw our OPEN before it could send here: treat it as the ACK
            # (as Chrome does; an unordered reply may overtake the ordered ACK).
            self._acknowledge(channel)
        self._events.append(MessageReceived(stream_id, message))

    def receive_stream_reset(self, stream_id: int) -> None:
        """The peer reset its outgoing stream ``stream_id`` (RE-CONFIG from SCTP)."""
        channel = self._channels.pop(stream_id, None)
        if channel is None:
            return
        if channel.state is not ChannelState.CLOSING:
            # The peer closed first: reset our direction too (RFC 8831 section 6.7).
            self._sends.append(StreamReset(stream_id))
        channel.state = ChannelState.CLOSED
        self._events.append(ChannelClosed(stream_id))

    # ---- internals

    def _free_stream_id(self) -> int:
        for stream_id in range(0 if self.dtls_client else 1, self._stream_limit, 2):
            if stream_id not in self._channels:
                return stream_id
        raise ChannelLimitError(f"no free stream id below {self._stream_limit}")

    def _violation(self, stream_id: int, reason: str) -> None:
        self._events.append(ProtocolViolation(stream_id, reason))

    def _acknowledge(self, channel: _Channel) -> None:
        channel.state = ChannelState.OPEN
        self._events.append(ChannelAcknowledged(channel.info.stream_id))

    def _receive_partial(self, channel: _Channel, payload: bytes) -> None:
        if channel.discarding_partial:
            return
        channel.partial += payload
        limit = self.local_max_message_size
        if limit and len(channel.partial) > limit:
            channel.partial.clear()
            channel.discarding_partial = True
            self._violation(channel.info.stream_id, f"partial message exceeds ours ({limit})")

    def _receive_dcep(self, stream_id: int, payload: bytes) -> None:
        channel = self._channels.get(stream_id)
        try:
            message = parse_dcep_untrusted(payload)
        except DcepParseError as exc:
            self._violation(stream_id, str(exc))
            if channel is None:
                self._sends.append(StreamReset(stream_id))  # refuse the would-be channel
            return
        if isinstance(message, DcepAck):
            if channel is not None and channel.info.opened_locally and not channel.info.negotiated:
                if channel.state is not ChannelState.OPENING:
                    return  # late: implied by a peer message, or we closed meanwhile
                self._acknowledge(channel)
                return
            self._violation(stream_id, "DATA_CHANNEL_ACK for no channel we are opening")
            return
        if channel is not None:
            self._violation(stream_id, "DATA_CHANNEL_OPEN on a stream already in use")
            return
        if len(self._channels) >= self.max_channels or stream_id > MAX_STREAM_ID:
            self._violation(stream_id, "DATA_CHANNEL_OPEN refused: channel limit reached")
            self._sends.append(StreamReset(stream_id))
            return
        rexmit = message.reliability is Reliability.REXMIT
        timed = message.reliability is Reliability.TIMED
        info = ChannelInfo(
            stream_id=stream_id,
            label=message.label,
            protocol=message.protocol,
            ordered=message.ordered,
            max_retransmits=message.reliability_parameter if rexmit else None,
            max_packet_lifetime_ms=message.reliability_parameter if timed else None,
            priority=message.priority,
            negotiated=False,
            opened_locally=False,
        )
        self._channels[stream_id] = _Channel(info, ChannelState.OPEN)
        self._sends.append(SctpMessage(stream_id, Ppid.DCEP, DcepAck().encode(), True, None, None))
        self._events.append(ChannelOpenedByPeer(info))
