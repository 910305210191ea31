"""Sans-IO SCTP association for WebRTC data channels (RFC 8261 / RFC 9260 subset).

Surface: :meth:`SctpAssociation.connect`, :meth:`~SctpAssociation.receive`,
:meth:`~SctpAssociation.send`, :meth:`~SctpAssociation.reset_streams`,
:meth:`~SctpAssociation.shutdown`, :meth:`~SctpAssociation.abort`, then drain
:meth:`~SctpAssociation.poll_transmit` (one bundled packet per call),
:meth:`~SctpAssociation.poll_event` and :meth:`~SctpAssociation.poll_timeout`.

Both ends may send INIT (WebRTC does); the collision is resolved by the state cookie
(RFC 9260 5.2). This end keeps a single verification tag and initial TSN for its whole
life, which is what 5.2.1 asks of a colliding INIT-ACK and keeps the cookie checks
simple.

Speed: chunks are bundled (control, SACK, FORWARD-TSN, then DATA filling the packet),
SACKs are delayed (every second packet, at once on gaps/duplicates, else after
``delayed_ack``) and ride on outgoing DATA. A driver may hand over a batch of datagrams
before polling: the SACK then goes out with whatever is sent next, but still at least
every ``max_packets_per_sack`` packets (a standalone SACK queued mid-batch), because
RFC-strict senders (browsers, aiortc) grow their window per SACK, not per byte.
``max_packets_per_sack=None`` gives one SACK per poll: fewer packets, stretch SACKs.
``zero_checksum`` (RFC 9653, DTLS as the alternate error detection method): we announce
that we accept a zero checksum, and send zero once the peer announced the same (DTLS
already authenticates every packet; the CRC32c would only cost both ends time).

Scope cuts: one path (no multi-homing), no association restart (a COOKIE-ECHO with a
new peer tag after establishment is ignored), no I-DATA/AUTH/ASCONF, stream-add and
incoming-reset requests are denied, unrecognized INIT parameters are ignored rather
than reported.
"""

from __future__ import annotations

import random
import struct
from collections import deque

from ..errors import SctpParseError
from ._chunks import (
    DATA_IMMEDIATE,
    AbortChunk,
    CookieAckChunk,
    CookieEchoChunk,
    DataChunk,
    ErrorChunk,
    ForwardTsnChunk,
    HeartbeatAckChunk,
    HeartbeatChunk,
    InitAckChunk,
    InitChunk,
    ReconfigChunk,
    SackChunk,
    ShutdownAckChunk,
    ShutdownChunk,
    ShutdownCompleteChunk,
    UnknownChunk,
    parse_lone_data_untrusted,
    parse_packet_untrusted,
    parse_plain_sack_untrusted,
    seal_packet,
)
from ._events import (
    BufferedAmountLow,
    Closed,
    Connected,
    MessageReceived,
    OutgoingStreamsReset,
    SctpEvent,
    SctpState,
    SctpStatistics,
    StreamsReset,
)
from ._handshake import STREAMS, AssociationSetup
from ._heartbeat import PathHeartbeat
from ._reconfig import StreamResetter
from ._sender import OutboundMessage, SctpSender
from ._streams import DROPPED, IN_ORDER, MASK32, SctpReceiver
from ._teardown import AssociationTeardown

__all__ = [
    "BufferedAmountLow", "Closed", "Connected", "MessageReceived", "OutgoingStreamsReset",
    "SctpAssociation", "SctpEvent", "SctpState", "SctpStatistics", "StreamsReset",
]

# Tuples, not sets: membership is then an identity scan (Enum.__hash__ is Python code).
_DATA_STATES = (SctpState.ESTABLISHED, SctpState.SHUTDOWN_PENDING, SctpState.SHUTDOWN_RECEIVED)
_RECEIVE_STATES = (
    SctpState.ESTABLISHED, SctpState.COOKIE_ECHOED, SctpState.SHUTDOWN_PENDING,
    SctpState.SHUTDOWN_SENT,
)
_LIVE_STATES = (*_RECEIVE_STATES, SctpState.SHUTDOWN_RECEIVED)


class SctpAssociation(AssociationTeardown, AssociationSetup):
    """One SCTP association over an already secured datagram transport (DTLS).

    ``is_client`` is the DTLS role; SCTP itself is symmetric in WebRTC (both ends may
    call :meth:`connect`), the role only matters to the data channel layer above.
    ``max_packet_size`` is the whole SCTP packet (DTLS budget ~1200 minus its overhead).
    ``receive_window`` bounds what we buffer for the application (default
    max(1 MiB, 2 * max_message_size)); undrained events shrink the advertised window.
    Sending is not bounded here: the caller applies backpressure with
    :meth:`buffered_amount` and :class:`BufferedAmountLow`. ``rng`` (default
    ``random.SystemRandom()``) draws the verification tag, initial TSN and cookie key;
    pass a seeded ``random.Random`` for reproducible tests. ``initial_tsn`` is for tests.
    Every method takes or remembers ``now`` (seconds, any monotonic clock).
    """

    def __init__(
        self,
        is_client: bool,
        local_port: int = 5000,
        remote_port: int = 5000,
        max_message_size: int = 262144,
        rng: random.Random | None = None,
        *,
        max_packet_size: int = 1188,
        receive_window: int | None = None,
        rto_initial: float = 1.0,
        rto_min: float = 0.4,
        rto_max: float = 60.0,
        delayed_ack: float = 0.2,
        max_packets_per_sack: int | None = 2,
        heartbeat_interval: float = 30.0,
        max_retransmissions: int = 10,
        max_init_retransmissions: int = 8,
        cookie_lifetime: float = 60.0,
        initial_tsn: int | None = None,
        zero_checksum: bool = True,
    ) -> None:
        rng = rng if rng is not None else random.SystemRandom()
        self.is_client = is_client
        self.local_port = local_port
        self.remote_port = remote_port
        self.max_message_size = max_message_size
        self._mtu = max_packet_size
        self._zero_checksum = zero_checksum  # RFC 9653 with DTLS: announced, so accepted
        self._send_zero_checksum = False  # the peer announced it too
        self._window = receive_window or max(1 << 20, 2 * max_message_size)
        self._rto_initial = rto_initial
        self._delayed_ack = delayed_ack
        self._max_packets_per_sack = max_packets_per_sack or 1 << 30
        self._max_retransmissions = max_retransmissions
        self._max_init_retransmissions = max_init_retransmissions
        self._cookie_lifetime = cookie_lifetime
        self._local_tag = rng.randrange(1, 1 << 32)
        # What every packet for us starts with: ports and our tag (INIT aside).
        self._inbound_header = struct.pack("!HHI", remote_port, local_port, self._local_tag)
        self._local_tsn = rng.randrange(0, 1 << 32) if initial_tsn is None else initial_tsn
        self._secret = rng.getrandbits(256).to_bytes(32, "big")
        self._peer_tag = 0
        #: Streams we may send on: the peer's inbound stream count, once known.
        self.outbound_streams = STREAMS
        self._state = SctpState.CLOSED
        self._now = 0.0
        self._events: deque[SctpEvent] = deque()
        self._sender = SctpSender(
            self._local_tsn, max_packet_size, self._events, rto_initial, rto_min, rto_max
        )
        self._receiver: SctpReceiver | None = None
        self._control: list[bytes] = []  # encoded chunks for the next packet
        self._resetter = StreamResetter(self._sender, self._events, self._control)
        self._solo: deque[tuple[int, bytes]] = deque()  # (vtag, chunk) sent alone
        self._init_chunk = InitChunk(
            self._local_tag, self._window, STREAMS, STREAMS, self._local_tsn,
            self._extension_params(),
        ).encode()
        self._cookie_echo = b""
        self._t1_deadline: float | None = None
        self._t1_count = 0
        self._t1_rto = rto_initial
        self._t2_deadline: float | None = None
        self._t2_count = 0
        self._sack_deadline: float | None = None
        self._sack_due = False
        self._unacked_packets = 0
        self._last_advertised_rwnd = self._window
        self._heartbeat = PathHeartbeat(heartbeat_interval, max_retransmissions)
        self._packets_sent = self._packets_received = 0
        self._bytes_sent = self._bytes_received = 0

    @property
    def state(self) -> SctpState:
        return self._state

    # --- application calls -----------------------------------------------------------

    def connect(self, now: float) -> None:
        """Send INIT (both WebRTC ends may do this; collisions are handled)."""
        self._now = now
        if self._state is not SctpState.CLOSED:
            return
        self._state = SctpState.COOKIE_WAIT
        self._solo.append((0, self._init_chunk))
        self._t1_deadline = now + self._t1_rto

    def send(
        self, stream_id: int, ppid: int, data: bytes, now: float, *, ordered: bool = True,
        max_retransmits: int | None = None, lifetime: float | None = None,
    ) -> None:
        """Queue one message. ``lifetime`` (seconds from ``now``) / ``max_retransmits``
        make it partially reliable (RFC 3758). Raises ValueError for bad arguments and
        once the association is closing or closed."""
        self._now = now
        if self._state not in (
            SctpState.CLOSED, SctpState.COOKIE_WAIT, SctpState.COOKIE_ECHOED,
            SctpState.ESTABLISHED,
        ):
            raise ValueError(f"cannot send in state {self._state.value}")
        if not 0 <= stream_id < self.outbound_streams or not 0 <= ppid <= 0xFFFFFFFF:
            raise ValueError("stream id or PPID out of range")
        if not data:
            raise ValueError("SCTP cannot carry an empty message (use the WebRTC empty PPIDs)")
        if len(data) > self.max_message_size:
            raise ValueError("message larger than max_message_size")
        if stream_id in self._resetter.queued:
            raise ValueError("stream is being reset")
        expiry = None if lifetime is None else now + lifetime
        self._sender.enqueue(
            OutboundMessage(stream_id, ppid, bytes(data), not ordered, expiry, max_retransmits)
        )

    def buffered_amount(self, stream_id: int | None = None) -> int:
        """Bytes queued or in flight and not yet acknowledged (all streams when None)."""
        if stream_id is None:
            return self._sender.buffered_total
        return self._sender.buffered_amount(stream_id)

    def set_buffered_amount_low_threshold(self, stream_id: int, threshold: int) -> None:
        """Emit BufferedAmountLow when the stream's buffered amount falls to ``threshold``."""
        self._sender.set_low_threshold(stream_id, threshold)

    def reset_streams(self, stream_ids: list[int]) -> None:
        """Reset our outgoing streams (close data channels) after their queued data."""
        self._resetter.request(stream_ids)

    def shutdown(self) -> None:
        """Graceful close: queued data is delivered first, then SHUTDOWN."""
        if self._state in (SctpState.CLOSED, SctpState.COOKIE_WAIT, SctpState.COOKIE_ECHOED):
            self._terminate("shutdown before the association was established", graceful=True)
        elif self._state is SctpState.ESTABLISHED:
            self._state = SctpState.SHUTDOWN_PENDING
            self._check_shutdown()

    def abort(self, reason: str = "") -> None:
        """Send ABORT (when the peer is known) and close at once."""
        if self._state is SctpState.TERMINATED:
            return
        if self._peer_tag:
            cause = (12, reason.encode("utf-8", "replace")[:256])
            self._control.clear()
            self._solo.append((self._peer_tag, AbortChunk([cause]).encode()))
        self._terminate(f"aborted locally: {reason}")

    # --- output ----------------------------------------------------------------------

    def poll_transmit(self) -> bytes | None:
        """The next packet to send (chunks bundled up to max_packet_size), or None."""
        if self._solo:
            vtag, chunk = self._solo.popleft()
            return self._seal(vtag, chunk)
        if self._state is SctpState.TERMINATED:
            return None
        if self._resetter.queued and self._state is SctpState.ESTABLISHED:
            self._resetter.poll(self._now)
        parts: list[bytes] = []
        # Every chunk is padded to 4 bytes: a budget that is not a multiple of 4 could
        # be overshot by the padding of the last DATA chunk.
        room = (self._mtu - 12) & ~3
        control = self._control
        if control:
            while control and len(control[0]) <= room:
                chunk = control.pop(0)
                parts.append(chunk)
                room -= len(chunk)
            if control and not parts and len(control[0]) > room:
                # Too big for any packet (an echo of a huge peer HEARTBEAT, say): drop it
                # rather than block every chunk behind it.
                control.pop(0)
        sender = self._sender
        can_send_data = self._state in _DATA_STATES
        if (self._sack_due or self._unacked_packets) and self._receiver is not None and (
            room >= 16
            and (self._sack_due or (can_send_data and sender.wants_to_send()))
        ):
            sack = self._build_sack(room)
            parts.append(sack)
            room -= len(sack)
        if sender.forward_tsn_due and self._state in _LIVE_STATES:
            chunk = sender.forward_tsn_chunk(self._now)
            if chunk is not None:
                encoded = chunk.encode()
                if len(encoded) <= room:
                    parts.append(encoded)
                    room -= len(encoded)
                else:
                    sender.forward_tsn_due = True  # the next packet
        if can_send_data:
            sender.fill(parts, room, self._now)
            if sender.idle():
                self._check_shutdown()
        if not parts:
            return None
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        return self._seal(self._peer_tag, body, self._send_zero_checksum)

    def _seal(self, vtag: int, body: bytes, zero_checksum: bool = False) -> bytes:
        # Packets sent alone (INIT, INIT-ACK, ABORT, replies to strays) always get a
        # real CRC32c: RFC 9653 forbids zero on an INIT and the others may go to a peer
        # that never announced zero checksums.
        packet = seal_packet(self.local_port, self.remote_port, vtag, body, zero_checksum)
        self._packets_sent += 1
        self._bytes_sent += len(packet)
        return packet

    def _build_sack(self, room: int) -> bytes:
        receiver = self._receiver
        assert receiver is not None
        dups = receiver.take_dups()[: (room - 16) // 8]
        gaps = receiver.gap_blocks()[: (room - 16) // 4 - len(dups)]
        rwnd = receiver.a_rwnd
        sack = SackChunk(receiver.cum_tsn & MASK32, rwnd, gaps, dups)
        self._sack_due = False
        self._sack_deadline = None
        self._unacked_packets = 0
        self._last_advertised_rwnd = rwnd
        return sack.encode()

    def poll_event(self) -> SctpEvent | None:
        """The next event, or None. Taking a MessageReceived frees receive window (and
        may make a window-update SACK due: call :meth:`poll_transmit` afterwards)."""
        if not self._events:
            return None
        event = self._events.popleft()
        if type(event) is MessageReceived and self._receiver is not None:
            receiver = self._receiver
            receiver.release(len(event.data))
            # Window update: tell a sender we stalled that room opened again.
            if self._last_advertised_rwnd < self._mtu * 4 and (
                receiver.a_rwnd >= self._last_advertised_rwnd + self._window // 4
            ):
                self._sack_due = True
        return event

    def poll_timeout(self) -> float | None:
        """The earliest deadline at which :meth:`handle_timeout` must be called."""
        if self._state is SctpState.TERMINATED:
            return None
        deadlines = [
            d for d in (
                self._t1_deadline, self._t2_deadline, self._sender.t3_deadline,
                self._sender.reorder_deadline, self._sender.probe_deadline,
                self._sack_deadline, self._heartbeat.deadline,
                self._resetter.deadline,
            ) if d is not None
        ]
        return min(deadlines) if deadlines else None

    # --- input -----------------------------------------------------------------------

    def receive(self, packet: bytes, now: float) -> None:
        """Handle one packet from the transport; malformed or foreign packets are dropped."""
        self._now = now
        if self._state is SctpState.ESTABLISHED:
            # The bulk of a transfer, decoded cheaply: what the loop below does for them.
            chunk = parse_lone_data_untrusted(packet, self._inbound_header, self._zero_checksum)
            if chunk is not None:
                self._packets_received += 1
                self._bytes_received += len(packet)
                if self._sack_due and self._unacked_packets >= self._max_packets_per_sack:
                    self._solo.append((self._peer_tag, self._build_sack(self._mtu - 12)))
                verdict = self._receiver.receive_data(chunk)  # type: ignore[union-attr]
                unacked = self._unacked_packets = self._unacked_packets + 1  # _after_data()
                self._resetter.after_data()
                if unacked >= 2 or verdict != IN_ORDER or chunk.flags & DATA_IMMEDIATE:
                    self._sack_due = True
                elif self._sack_deadline is None:
                    self._sack_deadline = now + self._delayed_ack
                return
            sack = parse_plain_sack_untrusted(packet, self._inbound_header, self._zero_checksum)
            if sack is not None:
                self._packets_received += 1
                self._bytes_received += 28
                self._sender.handle_sack(sack[0], sack[1], [], now)
                return  # ESTABLISHED: no shutdown to check
        try:
            header, chunks = parse_packet_untrusted(
                packet, accept_zero_checksum=self._zero_checksum
            )
        except SctpParseError:
            return
        if header.destination_port != self.local_port or header.source_port != self.remote_port:
            return
        if self._state is SctpState.TERMINATED:
            # Out of the blue (RFC 9260 8.4): answer a SHUTDOWN-ACK so the peer can finish.
            if type(chunks[0]) is ShutdownAckChunk:
                self._solo.append((header.verification_tag, ShutdownCompleteChunk(True).encode()))
            return
        if not self._verification_tag_ok(header.verification_tag, chunks):
            return
        self._packets_received += 1
        self._bytes_received += len(packet)
        receiver = self._receiver
        got_data = False
        out_of_order = False
        immediate = False
        for chunk in chunks:
            kind = type(chunk)
            if kind is DataChunk:
                if receiver is None or self._state not in _RECEIVE_STATES:
                    continue
                if not got_data and self._sack_due and (
                    self._unacked_packets >= self._max_packets_per_sack
                ):
                    # The driver is handing over a batch: do not let the SACK stretch.
                    self._solo.append((self._peer_tag, self._build_sack(self._mtu - 12)))
                got_data = True
                verdict = receiver.receive_data(chunk)
                if verdict != IN_ORDER:
                    out_of_order = True
                    if verdict == DROPPED:
                        immediate = True
                if chunk.flags & DATA_IMMEDIATE:
                    immediate = True
            elif kind is SackChunk:
                self._on_sack(chunk)
            else:
                handler = _HANDLERS.get(kind)
                if handler is not None:
                    handler(self, chunk)
                elif kind is UnknownChunk:
                    if not self._on_unknown(chunk):
                        break
                if self._state is SctpState.TERMINATED:
                    return
                receiver = self._receiver
        if got_data:
            self._after_data(out_of_order or immediate)

    def _verification_tag_ok(self, vtag: int, chunks: list) -> bool:
        first = type(chunks[0])
        if first is InitChunk:
            return vtag == 0 and len(chunks) == 1
        if first in (AbortChunk, ShutdownCompleteChunk) and chunks[0].t_bit:
            return vtag == self._peer_tag and vtag != 0
        return vtag == self._local_tag

    def _after_data(self, urgent: bool) -> None:
        receiver = self._receiver
        assert receiver is not None
        self._unacked_packets += 1
        self._resetter.after_data()
        if urgent or self._unacked_packets >= 2 or self._state is SctpState.SHUTDOWN_SENT:
            self._sack_due = True
        elif self._sack_deadline is None:
            self._sack_deadline = self._now + self._delayed_ack

    # --- data path control -----------------------------------------------------------

    def _on_sack(self, chunk: SackChunk) -> None:
        if self._state not in _DATA_STATES and self._state is not SctpState.SHUTDOWN_SENT:
            return
        self._sender.handle_sack(chunk.cum_tsn, chunk.a_rwnd, chunk.gaps, self._now)
        self._check_shutdown()

    def _on_forward_tsn(self, chunk: ForwardTsnChunk) -> None:
        receiver = self._receiver
        if receiver is None or self._state not in _RECEIVE_STATES:
            return
        receiver.forward_tsn(chunk.new_cum_tsn, chunk.streams)
        self._unacked_packets += 1
        self._sack_due = True
        self._resetter.after_data()

    def _on_heartbeat(self, chunk: HeartbeatChunk) -> None:
        self._control.append(HeartbeatAckChunk(chunk.info).encode())

    def _on_heartbeat_ack(self, chunk: HeartbeatAckChunk) -> None:
        rtt = self._heartbeat.on_ack_untrusted(chunk.info, self._now)
        if rtt is not None:
            self._sender.update_rtt(rtt)
            self._sender.consecutive_timeouts = 0  # RFC 9260 8.1: the peer is reachable

    def _on_reconfig(self, chunk: ReconfigChunk) -> None:
        if self._receiver is not None and self._state in _LIVE_STATES:
            self._resetter.handle_chunk(chunk)

    # --- timers ----------------------------------------------------------------------

    def handle_timeout(self, now: float) -> None:
        """Fire every timer whose deadline is at or before ``now``."""
        self._now = now
        if self._t1_deadline is not None and now >= self._t1_deadline:
            self._on_t1(now)
        if self._t2_deadline is not None and now >= self._t2_deadline:
            self._on_t2(now)
        sender = self._sender
        if sender.t3_deadline is not None and now >= sender.t3_deadline:
            sender.handle_t3_timeout(now)
            if sender.consecutive_timeouts > self._max_retransmissions:
                self._terminate("peer unreachable: too many retransmissions")
                return
        if sender.reorder_deadline is not None and now >= sender.reorder_deadline:
            sender.handle_reorder_timeout(now)
        if sender.probe_deadline is not None and now >= sender.probe_deadline:
            sender.handle_probe_timeout(now)
        if self._sack_deadline is not None and now >= self._sack_deadline:
            self._sack_deadline = None
            self._sack_due = True
        if self._heartbeat.deadline is not None and now >= self._heartbeat.deadline:
            chunk = self._heartbeat.on_timer(now, sender.rto)
            if chunk is None:
                self._terminate("peer unreachable: heartbeats unanswered")
                return
            self._control.append(chunk)
        if self._resetter.deadline is not None and now >= self._resetter.deadline:
            self._resetter.handle_timeout(now)

    def statistics(self) -> SctpStatistics:
        """A frozen snapshot of counters, windows and RTT estimates."""
        s = self._sender
        return SctpStatistics(
            state=self._state, cwnd=s.cwnd, ssthresh=s.ssthresh, flight_size=s.flight,
            peer_rwnd=s.peer_rwnd,
            local_rwnd=self._receiver.a_rwnd if self._receiver else self._window,
            rto=s.rto, srtt=s.srtt, heartbeat_rtt=self._heartbeat.rtt,
            retransmissions=s.retransmissions, fast_retransmits=s.fast_retransmits,
            t3_timeouts=s.t3_timeouts, abandoned_messages=s.abandoned_messages,
            packets_sent=self._packets_sent, packets_received=self._packets_received,
            bytes_sent=self._bytes_sent, bytes_received=self._bytes_received,
            messages_sent=s.messages_sent,
            messages_received=self._receiver.messages_received if self._receiver else 0,
            buffered_amount=s.buffered_total,
        )


_HANDLERS = {
    InitChunk: SctpAssociation._on_init,
    InitAckChunk: SctpAssociation._on_init_ack,
    CookieEchoChunk: SctpAssociation._on_cookie_echo,
    CookieAckChunk: SctpAssociation._on_cookie_ack,
    ForwardTsnChunk: SctpAssociation._on_forward_tsn,
    HeartbeatChunk: SctpAssociation._on_heartbeat,
    HeartbeatAckChunk: SctpAssociation._on_heartbeat_ack,
    ReconfigChunk: SctpAssociation._on_reconfig,
    ShutdownChunk: SctpAssociation._on_shutdown,
    ShutdownAckChunk: SctpAssociation._on_shutdown_ack,
    ShutdownCompleteChunk: SctpAssociation._on_shutdown_complete,
    AbortChunk: SctpAssociation._on_abort,
    ErrorChunk: SctpAssociation._on_error,
}
