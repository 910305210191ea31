"""Sans-IO SCTP association for WebRTC data channels (RFC 8261 / RFC 9260 subset).

Surface: ``connect``, ``receive``, ``send``, ``reset_streams``, ``shutdown``, ``abort``,
then drain ``poll_transmit`` (one bundled packet per call), ``poll_event`` and ``poll_timeout``.

Both ends may send INIT (WebRTC does); the collision is resolved by the state cookie
(RFC 9260 5.2). This end keeps a single verification tag and initial TSN for its whole
life, which is what 5.2.1 asks of a colliding INIT-ACK and keeps the cookie checks
simple.

Parts, each owning its state: :class:`AssociationSetup` (tags, cookie, T1),
:class:`SctpSender` (queue, congestion control, loss recovery), :class:`SctpReceiver`
(reassembly, window), :class:`SackScheduler` (when to SACK), :class:`StreamResetter`,
:class:`PathHeartbeat` and :class:`AssociationTeardown` (T2). The association routes chunks to
them, applies the state transitions of :mod:`._state` and bundles what they want
sent: control, SACK, FORWARD-TSN, then DATA filling the packet.
``max_packets_per_sack`` (``None``: one stretch SACK per poll) is :mod:`._acks`'s.
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
from collections.abc import Callable

from ..errors import SctpParseError
from ._acks import SackScheduler
from ._chunks import (
    DATA_IMMEDIATE,
    AbortChunk,
    Chunk,
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
)
from ._events import Closed, Connected, MessageReceived, SctpEvent, SctpState, SctpStatistics
from ._handshake import STREAMS, AssociationSetup, PeerParams
from ._heartbeat import PathHeartbeat
from ._packets import (
    parse_lone_data_untrusted,
    parse_packet_untrusted,
    parse_plain_sack_untrusted,
    parse_sack_data_untrusted,
    seal_packet,
)
from ._reconfig import StreamResetter
from ._sender import OutboundMessage, SctpSender
from ._state import (
    DATA_STATES,
    LIVE_STATES,
    RECEIVE_STATES,
    SHUTDOWN_WAITING,
    Trigger,
    allows,
    next_state,
)
from ._streams import IN_ORDER, SctpReceiver
from ._teardown import AssociationTeardown, abort_reason, unknown_chunk_action
from ._timers import AssociationTimers

__all__ = ["SctpAssociation"]

_SETUP_STATES = (SctpState.CLOSED, SctpState.COOKIE_WAIT, SctpState.COOKIE_ECHOED)
_SEND_STATES = (*_SETUP_STATES, SctpState.ESTABLISHED)


class SctpAssociation(AssociationTimers):
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
        self._max_retransmissions = max_retransmissions
        self._control: list[bytes] = []  # encoded chunks for the next packet
        self._solo: deque[tuple[int, bytes]] = deque()  # (vtag, chunk) sent alone
        self._setup = setup = AssociationSetup(
            self._control,
            self._solo,
            rng,
            self._window,
            zero_checksum,
            initial_tsn,
            rto_initial,
            max_init_retransmissions,
            cookie_lifetime,
        )
        self._local_tag = setup.local_tag
        # What every packet for us starts with: ports and our tag (INIT aside).
        self._inbound_header = struct.pack("!HHI", remote_port, local_port, self._local_tag)
        self._peer_tag = 0
        #: Streams we may send on: the peer's inbound stream count, once known.
        self.outbound_streams = STREAMS
        self._state = SctpState.CLOSED
        self._now = 0.0
        self._events: deque[SctpEvent] = deque()
        self._sender = SctpSender(
            setup.local_tsn, max_packet_size, self._events, rto_initial, rto_min, rto_max
        )
        self._receiver: SctpReceiver | None = None
        self._resetter = StreamResetter(self._sender, self._events, self._control)
        self._teardown = AssociationTeardown(self._control, max_retransmissions)
        self._acks = SackScheduler(self._window, max_packet_size, delayed_ack, max_packets_per_sack)
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
        if not allows(self._state, Trigger.CONNECT):
            return
        self._state = next_state(self._state, Trigger.CONNECT)
        self._setup.start(now)

    def send(
        self,
        stream_id: int,
        ppid: int,
        data: bytes,
        now: float,
        *,
        ordered: bool = True,
        max_retransmits: int | None = None,
        lifetime: float | None = None,
    ) -> None:
        """Queue one message. ``lifetime`` (seconds from ``now``) / ``max_retransmits``
        make it partially reliable (RFC 3758). Raises ValueError for bad arguments and
        once the association is closing or closed."""
        self._now = now
        if self._state not in _SEND_STATES:
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
        if self._state in _SETUP_STATES:
            self._terminate("shutdown before the association was established", graceful=True)
        elif allows(self._state, Trigger.SHUTDOWN_CALLED):
            self._state = next_state(self._state, Trigger.SHUTDOWN_CALLED)
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
        state = self._state
        if state is SctpState.ESTABLISHED:
            if not self._control and not self._acks.due and self._sender.quiet():
                if not self._resetter.queued:
                    return None  # what the code below would find, for less
        elif state is SctpState.TERMINATED:
            return None
        if self._resetter.queued and state is SctpState.ESTABLISHED:
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
        can_send_data = self._state in DATA_STATES
        acks = self._acks
        if (
            (acks.due or acks.unacked)
            and self._receiver is not None
            and (room >= 16 and (acks.due or (can_send_data and sender.wants_to_send())))
        ):
            sack = acks.build(self._receiver, room)
            parts.append(sack)
            room -= len(sack)
        if sender.forward_tsn_due and self._state in LIVE_STATES:
            forward_tsn = sender.forward_tsn_chunk(self._now)
            if forward_tsn is not None:
                encoded = forward_tsn.encode()
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

    def poll_event(self) -> SctpEvent | None:
        """The next event, or None. Taking a MessageReceived frees receive window (and
        may make a window-update SACK due: call :meth:`poll_transmit` afterwards)."""
        if not self._events:
            return None
        event = self._events.popleft()
        if type(event) is MessageReceived and self._receiver is not None:
            receiver = self._receiver
            receiver.release(len(event.data))
            self._acks.window_opened(receiver.a_rwnd)
        return event

    # --- input -----------------------------------------------------------------------

    def receive(self, packet: bytes, now: float) -> None:
        """Handle one packet from the transport; malformed or foreign packets are dropped."""
        self._now = now
        if self._state is SctpState.ESTABLISHED:
            # The bulk of a transfer, and a conversation's SACK+DATA, decoded cheaply:
            # what the loop below does for them (ESTABLISHED: no shutdown to check).
            inbound, zero = self._inbound_header, self._zero_checksum
            first = packet[12] if len(packet) > 12 else -1  # the first chunk's type
            lone = parse_lone_data_untrusted(packet, inbound, zero) if first == 0 else None
            if first == 3 and (both := parse_sack_data_untrusted(packet, inbound, zero)):
                self._sender.handle_sack(both[0], both[1], [], now)
                lone = both[2]
            if lone is not None:
                self._packets_received += 1
                self._bytes_received += len(packet)
                receiver = self._receiver
                acks = self._acks
                if acks.due and acks.unacked >= acks.max_packets:
                    self._solo.append((self._peer_tag, acks.build(receiver, self._mtu - 12)))  # type: ignore[arg-type]
                verdict = receiver.receive_data(lone)  # type: ignore[union-attr]
                unacked = acks.unacked = acks.unacked + 1  # acks.after_data(), inlined
                self._resetter.after_data()
                if unacked >= 2 or verdict != IN_ORDER or lone.flags & DATA_IMMEDIATE:
                    acks.due = True
                elif acks.deadline is None:
                    acks.deadline = now + acks.delayed_ack
                return
            sack = parse_plain_sack_untrusted(packet, inbound, zero) if first == 3 else None
            if sack is not None:
                self._packets_received += 1
                self._bytes_received += 28
                self._sender.handle_sack(sack[0], sack[1], [], now)
                return
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
        if not self._setup.tag_ok(header.verification_tag, chunks, self._peer_tag):
            return
        self._packets_received += 1
        self._bytes_received += len(packet)
        receiver = self._receiver
        got_data = urgent = False
        for chunk in chunks:
            if type(chunk) is DataChunk:
                if receiver is None or self._state not in RECEIVE_STATES:
                    continue
                acks = self._acks
                if not got_data and acks.due and acks.unacked >= acks.max_packets:
                    # The driver is handing over a batch: do not let the SACK stretch.
                    self._solo.append((self._peer_tag, acks.build(receiver, self._mtu - 12)))
                got_data = True
                # Gaps, duplicates and drops are reported at once, as the peer asks to be.
                if receiver.receive_data(chunk) != IN_ORDER or chunk.flags & DATA_IMMEDIATE:
                    urgent = True
            elif type(chunk) is SackChunk:
                self._on_sack(chunk)
            else:
                handler = _HANDLERS.get(type(chunk))
                if handler is not None:
                    handler(self, chunk)
                elif type(chunk) is UnknownChunk:
                    if not self._on_unknown(chunk):
                        break
                if self.state is SctpState.TERMINATED:  # the property: a handler may end it
                    return
                receiver = self._receiver
        if got_data:
            self._resetter.after_data()
            self._acks.after_data(urgent or self._state is SctpState.SHUTDOWN_SENT, now)

    # --- data path control -----------------------------------------------------------

    def _on_sack(self, chunk: SackChunk) -> None:
        if self._state not in DATA_STATES and self._state is not SctpState.SHUTDOWN_SENT:
            return
        self._sender.handle_sack(chunk.cum_tsn, chunk.a_rwnd, chunk.gaps, self._now)
        self._check_shutdown()

    def _on_forward_tsn(self, chunk: ForwardTsnChunk) -> None:
        receiver = self._receiver
        if receiver is None or self._state not in RECEIVE_STATES:
            return
        receiver.forward_tsn(chunk.new_cum_tsn, chunk.streams)
        self._acks.after_forward_tsn()
        self._resetter.after_data()

    def _on_heartbeat(self, chunk: HeartbeatChunk) -> None:
        self._control.append(HeartbeatAckChunk(chunk.info).encode())

    def _on_heartbeat_ack(self, chunk: HeartbeatAckChunk) -> None:
        rtt = self._heartbeat.on_ack_untrusted(chunk.info, self._now)
        if rtt is not None:
            self._sender.update_rtt(rtt)
            self._sender.consecutive_timeouts = 0  # RFC 9260 8.1: the peer is reachable

    def _on_reconfig(self, chunk: ReconfigChunk) -> None:
        if self._receiver is not None and self._state in LIVE_STATES:
            self._resetter.handle_chunk(chunk)

    # --- setup (the work is AssociationSetup's) ----------------------------------------

    def _on_init(self, chunk: InitChunk) -> None:
        if self._state not in _SETUP_STATES and chunk.initiate_tag != self._peer_tag:
            return  # a restarted peer: not supported (see module docstring)
        a_rwnd = self._receiver.a_rwnd if self._receiver else self._window
        self._setup.on_init(chunk, self._now, a_rwnd)

    def _on_init_ack(self, chunk: InitAckChunk) -> None:
        if allows(self._state, Trigger.INIT_ACK):
            rtt = self._setup.answered(self._now)  # before the COOKIE-ECHO's starts
            peer = self._setup.on_init_ack(chunk, self._now)
            if peer is not None:
                if rtt is not None:
                    self._sender.update_rtt(rtt)
                self._set_peer(peer)
                self._state = next_state(self._state, Trigger.INIT_ACK)

    def _on_cookie_echo(self, chunk: CookieEchoChunk) -> None:
        setting_up = allows(self._state, Trigger.COOKIE_ECHO)
        peer_tag = self._peer_tag if self._receiver is not None else None
        echoed = self._setup.on_cookie_echo(chunk, self._now, setting_up, peer_tag)
        if echoed is not None:
            if echoed.peer is not None:
                self._set_peer(echoed.peer)
            self._establish(Trigger.COOKIE_ECHO)

    def _on_cookie_ack(self, chunk: CookieAckChunk) -> None:
        if allows(self._state, Trigger.COOKIE_ACK):
            rtt = self._setup.answered(self._now)
            if rtt is not None:
                self._sender.update_rtt(rtt)
            self._establish(Trigger.COOKIE_ACK)

    def _set_peer(self, peer: PeerParams) -> None:
        self._peer_tag = peer.tag
        # RFC 9653: both announced it, so our packets may carry a zero checksum.
        self._send_zero_checksum = peer.zero_checksum and self._zero_checksum
        self.outbound_streams = min(STREAMS, peer.inbound_streams)
        self._receiver = SctpReceiver(peer.initial_tsn, self._window, self._events)
        self._resetter.start(self._setup.local_tsn, self._receiver)
        self._sender.peer_known(peer.a_rwnd, peer.forward_tsn)

    def _establish(self, trigger: Trigger) -> None:
        self._state = next_state(self._state, trigger)
        self._setup.established()
        self._heartbeat.start(self._now)
        self._events.append(Connected())

    # --- teardown (T2 is ShutdownTimer's) ----------------------------------------------

    def _check_shutdown(self) -> None:
        if self._state not in SHUTDOWN_WAITING or not self._sender.idle():
            return
        self._state = next_state(self._state, Trigger.SENDER_IDLE)
        assert self._receiver is not None
        self._teardown.send(self._state, self._receiver.cum_tsn, self._now, self._sender.rtt.rto)

    def _on_shutdown(self, chunk: ShutdownChunk) -> None:
        if not allows(self._state, Trigger.SHUTDOWN):
            return
        sender = self._sender
        sender.handle_sack(chunk.cum_tsn, sender.peer_rwnd + sender.flight, [], self._now)
        self._state = next_state(self._state, Trigger.SHUTDOWN)
        if self._state is SctpState.SHUTDOWN_ACK_SENT:  # SHUTDOWNs crossed (9.2)
            self._teardown.send(self._state, 0, self._now, sender.rtt.rto)
        else:
            self._check_shutdown()

    def _on_shutdown_ack(self, chunk: ShutdownAckChunk) -> None:
        if allows(self._state, Trigger.SHUTDOWN_ACK):
            self._solo.append((self._peer_tag, ShutdownCompleteChunk().encode()))
            self._terminate("shutdown complete", graceful=True, trigger=Trigger.SHUTDOWN_ACK)

    def _on_shutdown_complete(self, chunk: ShutdownCompleteChunk) -> None:
        if allows(self._state, Trigger.SHUTDOWN_COMPLETE):
            self._terminate("shutdown complete", graceful=True, trigger=Trigger.SHUTDOWN_COMPLETE)

    def _on_abort(self, chunk: AbortChunk) -> None:
        self._terminate(abort_reason(chunk))

    def _on_unknown(self, chunk: UnknownChunk) -> bool:
        report, go_on = unknown_chunk_action(chunk)
        if report is not None:
            self._control.append(report)
        return go_on

    def _terminate(
        self, reason: str, graceful: bool = False, trigger: Trigger = Trigger.ABORT
    ) -> None:
        if self._state is SctpState.TERMINATED:
            return
        self._state = next_state(self._state, trigger)
        self._setup.t1_deadline = self._teardown.deadline = self._acks.deadline = None
        self._heartbeat.deadline = self._resetter.deadline = None
        self._sender.stop_timers()
        self._events.append(Closed(reason, graceful))

    def statistics(self) -> SctpStatistics:
        """A frozen snapshot of counters, windows and RTT estimates."""
        receiver = self._receiver
        return SctpStatistics(
            state=self._state,
            local_rwnd=receiver.a_rwnd if receiver else self._window,
            heartbeat_rtt=self._heartbeat.rtt,
            packets_sent=self._packets_sent,
            packets_received=self._packets_received,
            bytes_sent=self._bytes_sent,
            bytes_received=self._bytes_received,
            messages_received=receiver.messages_received if receiver else 0,
            **self._sender.statistics(),  # type: ignore[arg-type]
        )


_HANDLERS: dict[type[Chunk], Callable[..., None]] = {  # each takes the chunk type it is keyed by
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
    ErrorChunk: lambda self, chunk: None,  # operation errors (stale cookie...) are not fatal
}
