"""SCTP send side: outbound queue, fragmentation, SACK processing, RTO, congestion control.

Messages wait whole in per-stream FIFOs, served round robin one message at a time (a
big transfer on one data channel does not starve the others; fragments of a message
keep consecutive TSNs, as DATA without I-DATA requires). They are cut into DATA
chunks only when a packet has room, so fragments fill packets exactly, even behind a
SACK. A TSN and, for ordered messages, an SSN are assigned at first transmission: a
message that expires before it leaves costs nothing on the wire. Each sent chunk
keeps its encoded bytes for retransmission. Congestion control follows RFC 9260 7.2
(with byte counting in slow start); partial reliability RFC 3758. The sender runs the
T3, reordering and tail-probe timers; loss detection and the RTT estimate are
:mod:`._loss`'s.
"""

from __future__ import annotations

import heapq
from collections import deque

from ._chunks import DATA_BEGINNING, DATA_END, DATA_HEADER, DATA_UNORDERED, ForwardTsnChunk
from ._events import BufferedAmountLow, SctpEvent
from ._loss import RttEstimator, count_missing, detect_lost_by_time
from ._outbound import OutboundMessage as OutboundMessage  # the association builds them
from ._outbound import SentChunk
from ._streams import MASK32, unwrap32

_PADDING = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")
# Never cut a fragment smaller than this to squeeze it into a packet's tail.
_MIN_FRAGMENT = 256
# Tail loss probes: what a peer may delay a lone SACK by, and the probes sent before
# only the T3 timer is left (a SACK of new data starts over).
_DELAYED_SACK_ALLOWANCE = 0.2
_MAX_PROBES = 2


class SctpSender:
    """Everything we send as DATA; the association asks it to fill packets and feeds SACKs.

    Owns the outbound queues, the chunks in flight, congestion control and the T3,
    reordering and probe timers; ``rtt`` (:class:`RttEstimator`) is its RTT part.
    """

    def __init__(
        self,
        initial_tsn: int,
        max_packet_size: int,
        events: deque[SctpEvent],
        rto_initial: float,
        rto_min: float,
        rto_max: float,
    ) -> None:
        self.mtu = max_packet_size
        self.next_tsn = initial_tsn
        self.cum_acked = initial_tsn - 1
        self.sent: dict[int, SentChunk] = {}  # insertion order == TSN order
        self._queues: dict[int, deque[OutboundMessage]] = {}  # per stream, unsent messages
        self._rotation: deque[int] = deque()  # streams with queued messages, in turn order
        self.flight = 0
        self.cwnd = min(4 * max_packet_size, max(2 * max_packet_size, 4404))
        self.ssthresh = 1 << 30
        self.partial_bytes_acked = 0
        self.peer_rwnd = 1 << 30
        self.fast_recovery_exit: int | None = None
        self.forward_tsn_supported = True
        self.advanced_ack_point = self.cum_acked
        self.forward_tsn_due = False
        self.t3_deadline: float | None = None
        # Time-based loss detection (see _detect_lost_by_time): its timer, and the
        # highest TSN the peer acknowledged, cumulatively or in a gap block.
        self.reorder_deadline: float | None = None
        self.highest_acked = initial_tsn - 1
        self.reorder_timeouts = 0
        # Tail loss probe (see handle_probe_timeout): its timer and count.
        self.probe_deadline: float | None = None
        self.tail_probes = 0
        self._probes_unanswered = 0
        self.rtt = RttEstimator(rto_initial, rto_min, rto_max)
        self.consecutive_timeouts = 0
        self.retransmissions = 0
        self.fast_retransmits = 0
        self.t3_timeouts = 0
        self.abandoned_messages = 0
        self.messages_sent = 0
        self._events = events
        self._rtx_heap: list[int] = []
        self._fast_rtx_budget = False
        self._ssn: dict[int, int] = {}
        self._buffered: dict[int, int] = {}
        self._low_threshold: dict[int, int] = {}
        self.buffered_total = 0
        self._rtt_probe_tsn: int | None = None
        self._rtt_probe_time = 0.0

    # --- association side ------------------------------------------------------------

    def peer_known(self, a_rwnd: int, forward_tsn_supported: bool) -> None:
        """The handshake told us the peer's window and whether it takes FORWARD-TSN."""
        self.peer_rwnd = a_rwnd
        self.ssthresh = max(a_rwnd, 4 * self.mtu)
        self.forward_tsn_supported = forward_tsn_supported

    def stop_timers(self) -> None:
        self.t3_deadline = self.reorder_deadline = self.probe_deadline = None

    def update_rtt(self, rtt: float) -> None:
        """An RTT sample (ours, or a heartbeat's)."""
        self.rtt.update(rtt)

    def statistics(self) -> dict[str, int | float | None]:
        """The sender's fields of :class:`~._events.SctpStatistics`."""
        rtt = self.rtt
        return {
            "cwnd": self.cwnd,
            "ssthresh": self.ssthresh,
            "flight_size": self.flight,
            "peer_rwnd": self.peer_rwnd,
            "rto": rtt.rto,
            "srtt": rtt.srtt,
            "retransmissions": self.retransmissions,
            "fast_retransmits": self.fast_retransmits,
            "t3_timeouts": self.t3_timeouts,
            "abandoned_messages": self.abandoned_messages,
            "messages_sent": self.messages_sent,
            "buffered_amount": self.buffered_total,
        }

    # --- application side ------------------------------------------------------------

    def enqueue(self, message: OutboundMessage) -> None:
        queue = self._queues.get(message.stream_id)
        if queue is None:
            queue = self._queues[message.stream_id] = deque()
            self._rotation.append(message.stream_id)
        queue.append(message)
        size = len(message.data)
        sid = message.stream_id
        self._buffered[sid] = self._buffered.get(sid, 0) + size
        self.buffered_total += size

    def buffered_amount(self, stream_id: int) -> int:
        return self._buffered.get(stream_id, 0)

    def set_low_threshold(self, stream_id: int, threshold: int) -> None:
        self._low_threshold[stream_id] = threshold

    def has_unsent(self, stream_id: int) -> bool:
        return stream_id in self._queues

    def reset_ssn(self, stream_ids: tuple[int, ...]) -> None:
        for sid in stream_ids or list(self._ssn):
            self._ssn.pop(sid, None)

    def idle(self) -> bool:
        return not self._rotation and not self.sent

    def _release(self, stream_id: int, size: int) -> None:
        before = self._buffered.get(stream_id, 0)
        after = before - size
        self._buffered[stream_id] = after
        self.buffered_total -= size
        threshold = self._low_threshold.get(stream_id, 0)
        if after <= threshold < before:
            self._events.append(BufferedAmountLow(stream_id))

    # --- transmission ----------------------------------------------------------------

    def wants_to_send(self) -> bool:
        if self._rtx_heap:
            return True
        return bool(self._rotation) and self.flight < self.cwnd

    def quiet(self) -> bool:
        """True if :meth:`fill` would add nothing and change nothing (no retransmission,
        nothing queued, T3 running if anything is in flight): most polls of a
        conversation, after the one packet it had to send."""
        return (
            not self._rtx_heap
            and not self._rotation
            and not self._fast_rtx_budget
            and not self.forward_tsn_due
            and (self.t3_deadline is not None or not self.sent)
        )

    def fill(self, parts: list[bytes], room: int, now: float) -> int:
        """Append DATA chunks (retransmissions first) that fit ``room``; returns room left."""
        heap = self._rtx_heap
        sent = self.sent
        while heap:
            chunk = sent.get(heap[0])
            if chunk is None or not chunk.retransmit:
                heapq.heappop(heap)
                continue
            if len(chunk.wire) > room:
                return room
            if not self._fast_rtx_budget and self.flight >= self.cwnd:
                return room
            heapq.heappop(heap)
            chunk.retransmit = False
            chunk.in_flight = True
            chunk.sent_count += 1
            chunk.sent_after = self.next_tsn - 1
            chunk.sent_time = now
            chunk.missing_reports = 0
            self.flight += chunk.size
            self.retransmissions += 1
            if chunk.tsn == self._rtt_probe_tsn:
                self._rtt_probe_tsn = None  # Karn: no RTT sample from a retransmission
            parts.append(chunk.wire)
            room -= len(chunk.wire)
        self._fast_rtx_budget = False
        if self.t3_deadline is None and sent:
            self.t3_deadline = now + self.rtt.rto
        rotation = self._rotation
        if not rotation or room <= 16:
            return room
        # The per-packet loop of a transfer: counters in locals, stored once at the end.
        queues, ssns = self._queues, self._ssn
        flight, cwnd, peer_rwnd, next_tsn = self.flight, self.cwnd, self.peer_rwnd, self.next_tsn
        first_tsn = next_tsn
        while rotation and room > 16:
            if flight >= cwnd or (flight and peer_rwnd <= 0):
                break
            message = queues[rotation[0]][0]
            data = message.data
            start = message.offset
            remaining = len(data) - start
            if start == 0 and message.expiry is not None and now >= message.expiry:
                self._dequeue(message, rotate=False)
                self.abandoned_messages += 1
                self._release(message.stream_id, len(data))
                continue
            size = room - 16
            if remaining > size and size < _MIN_FRAGMENT:
                break
            if start == 0:
                flags = DATA_BEGINNING
                if message.unordered:
                    flags |= DATA_UNORDERED
                else:
                    sid = message.stream_id
                    message.ssn = ssns.get(sid, 0)
                    ssns[sid] = (message.ssn + 1) & 0xFFFF
            else:
                flags = DATA_UNORDERED if message.unordered else 0
            if remaining <= size:
                size = remaining
                flags |= DATA_END
                self._dequeue(message, rotate=True)
                self.messages_sent += 1
            message.offset = start + size
            length = 16 + size
            wire = DATA_HEADER.pack(
                0, flags, length, next_tsn & MASK32, message.stream_id, message.ssn, message.ppid
            ) + (data[start : start + size] if size != len(data) else data)
            if length & 3:
                wire += _PADDING[length & 3]
            chunk = SentChunk(next_tsn, message, size, wire, now)
            sent[next_tsn] = chunk
            next_tsn += 1
            if message.chunks is not None:
                message.chunks.append(chunk)
            flight += size
            peer_rwnd -= size
            parts.append(wire)
            room -= len(wire)
        self.flight, self.peer_rwnd, self.next_tsn = flight, peer_rwnd, next_tsn
        if next_tsn != first_tsn:
            if self._rtt_probe_tsn is None:
                self._rtt_probe_tsn = first_tsn
                self._rtt_probe_time = now
            if self.t3_deadline is None:
                self.t3_deadline = now + self.rtt.rto
            pto = self.rtt.pto
            if pto is not None:  # RFC 8985 7.2: restarted by new data
                self.probe_deadline = now + (
                    pto if flight > self.mtu else self._probe_timeout(pto, flight)
                )
        return room

    def _dequeue(self, message: OutboundMessage, rotate: bool) -> None:
        """Remove the head message of its stream (``rotate``: the next stream's turn)."""
        sid = message.stream_id
        queue = self._queues[sid]
        queue.popleft()
        if not queue:
            del self._queues[sid]
            self._rotation.remove(sid)
        elif rotate and self._rotation[0] == sid:
            self._rotation.rotate(-1)

    def forward_tsn_chunk(self, now: float) -> ForwardTsnChunk | None:
        """RFC 3758 3.5 C4: the chunk telling the peer to skip abandoned TSNs, if any."""
        self.forward_tsn_due = False
        if self.advanced_ack_point <= self.cum_acked:
            return None
        pto = self.rtt.pto
        if self.probe_deadline is None and pto is not None:
            self.probe_deadline = now + self._probe_timeout(pto, self.flight)
        streams: dict[int, int] = {}
        for tsn in range(self.cum_acked + 1, self.advanced_ack_point + 1):
            message = self.sent[tsn].message
            if not message.unordered:
                streams[message.stream_id] = message.ssn
        return ForwardTsnChunk(self.advanced_ack_point & MASK32, sorted(streams.items()))

    # --- acknowledgements ------------------------------------------------------------

    def handle_sack(
        self, cum_tsn: int, a_rwnd: int, gaps: list[tuple[int, int]], now: float
    ) -> bool:
        """Process a SACK; returns whether any data was newly acknowledged."""
        cum = unwrap32(cum_tsn, self.cum_acked)
        if cum < self.cum_acked or cum >= self.next_tsn:
            return False  # stale, or acknowledges what we never sent
        sent = self.sent
        flight_before = self.flight
        newly = 0
        chunk: SentChunk | None
        advanced = cum > self.cum_acked
        if advanced:
            if cum == self.cum_acked + 1:
                # One chunk: a conversation's SACK, most of the time.
                chunk = sent.pop(cum)
                if not chunk.acked and not chunk.abandoned:
                    chunk.acked = True
                    newly = chunk.size
                    if chunk.in_flight:
                        self.flight -= newly
                    self._release(chunk.message.stream_id, newly)
            else:
                # A whole window, maybe: per-stream sums, released once.
                released: dict[int, int] = {}
                flight = self.flight
                for tsn in range(self.cum_acked + 1, cum + 1):
                    chunk = sent.pop(tsn)
                    if not chunk.acked and not chunk.abandoned:
                        chunk.acked = True
                        size = chunk.size
                        newly += size
                        if chunk.in_flight:
                            flight -= size
                        sid = chunk.message.stream_id
                        released[sid] = released.get(sid, 0) + size
                self.flight = flight
                for sid, size in released.items():
                    self._release(sid, size)
            self.cum_acked = cum
            if self._rtt_probe_tsn is not None and self._rtt_probe_tsn <= cum:
                self.rtt.update(now - self._rtt_probe_time)
                self._rtt_probe_tsn = None
            if self.advanced_ack_point < cum:
                self.advanced_ack_point = cum
        if gaps:
            gap_acked: list[SentChunk] = []  # newly acked by gap blocks, ascending
            last = self.next_tsn - 1
            for start, end in gaps:
                for tsn in range(cum + start, min(cum + end, last) + 1):
                    chunk = sent.get(tsn)
                    if chunk is not None and not chunk.acked:
                        chunk.acked = True
                        gap_acked.append(chunk)
                        if not chunk.abandoned:
                            newly += chunk.size
                            if chunk.in_flight:
                                chunk.in_flight = False
                                self.flight -= chunk.size
                            chunk.retransmit = False
                            self._release(chunk.message.stream_id, chunk.size)
            if gap_acked:
                probe = self._rtt_probe_tsn
                if probe is not None and gap_acked[0].tsn <= probe <= gap_acked[-1].tsn:
                    # A gap-acked probe is a sample now: waiting for the cumulative ack
                    # would add the whole loss recovery to the RTT and inflate the RTO.
                    if sent[probe].acked:
                        self.rtt.update(now - self._rtt_probe_time)
                        self._rtt_probe_tsn = None
                if count_missing(sent, cum, gap_acked, self.mtu, self._mark_for_retransmit, now):
                    self._on_loss_detected()
                if gap_acked[-1].tsn > self.highest_acked:
                    self.highest_acked = gap_acked[-1].tsn
        if cum > self.highest_acked:
            self.highest_acked = cum
        if self.highest_acked > cum:
            self._detect_lost_by_time(now)
        else:
            self.reorder_deadline = None
        if newly or advanced:
            self.consecutive_timeouts = 0
        if newly:
            if advanced and self.fast_recovery_exit is None:
                if self.cwnd <= self.ssthresh:
                    # Byte counting (RFC 3465 style) rather than one MTU per SACK: a
                    # receiver that drains a burst before answering sends one stretch
                    # SACK for many packets, and slow start must stay exponential.
                    if flight_before + self.mtu >= self.cwnd:
                        self.cwnd += min(newly, self.cwnd)
                else:
                    self.partial_bytes_acked += newly
                    full = flight_before + self.mtu >= self.cwnd
                    if self.partial_bytes_acked >= self.cwnd and full:
                        self.partial_bytes_acked -= self.cwnd
                        self.cwnd += self.mtu
        if self.fast_recovery_exit is not None and cum >= self.fast_recovery_exit:
            self.fast_recovery_exit = None
        rwnd = a_rwnd - self.flight
        self.peer_rwnd = rwnd if rwnd > 0 else 0
        if not sent:
            self.t3_deadline = self.probe_deadline = None
        else:
            if advanced:
                self.t3_deadline = now + self.rtt.rto
            pto = self.rtt.pto
            if newly and pto is not None:
                self.probe_deadline = now + self._probe_timeout(pto, self.flight)
                self._probes_unanswered = 0
        if self.abandoned_messages:  # else no chunk is abandoned: the point is cum_acked
            self._advance_ack_point()
        return newly > 0

    def _mark_for_retransmit(self, chunk: SentChunk, now: float) -> bool:
        """Queue a lost chunk again, or abandon its message if its PR policy says so."""
        if self._out_of_retransmissions(chunk, now):
            self._abandon(chunk.message)
            return False
        if chunk.in_flight:
            chunk.in_flight = False
            self.flight -= chunk.size
        if not chunk.retransmit:
            chunk.retransmit = True
            heapq.heappush(self._rtx_heap, chunk.tsn)
        return True

    def _out_of_retransmissions(self, chunk: SentChunk, now: float) -> bool:
        """Whether a partially reliable chunk's message must be abandoned, not resent."""
        message = chunk.message
        return (
            message.chunks is not None
            and self.forward_tsn_supported
            and (
                (message.max_retransmits is not None and chunk.sent_count > message.max_retransmits)
                or (message.expiry is not None and now >= message.expiry)
            )
        )

    def _abandon(self, message: OutboundMessage) -> None:
        if message.abandoned:
            return
        message.abandoned = True
        self.abandoned_messages += 1
        for chunk in message.chunks or ():
            if chunk.abandoned:
                continue
            # Gap-acked fragments are abandoned too: the message is lost as a whole, and
            # the FORWARD-TSN can then skip all of it at once (RFC 3758 3.5 C3).
            chunk.abandoned = True
            if not chunk.acked:
                chunk.retransmit = False
                if chunk.in_flight:
                    chunk.in_flight = False
                    self.flight -= chunk.size
                if chunk.tsn in self.sent:
                    self._release(message.stream_id, chunk.size)
        unsent = len(message.data) - message.offset
        queue = self._queues.get(message.stream_id)
        if unsent and message.offset and queue and queue[0] is message:
            self._dequeue(message, rotate=True)
            self._release(message.stream_id, unsent)
            # The unsent tail has no TSN, so the peer may already have every TSN we sent
            # and would ignore a FORWARD-TSN that does not move its cumulative TSN,
            # keeping the head fragments forever. Burn one TSN (never sent) for the tail:
            # the FORWARD-TSN then always moves the peer past this message.
            tail = SentChunk(self.next_tsn, message, 0, b"", 0.0)
            tail.sent_count = 0
            tail.in_flight = False
            tail.abandoned = True
            self.sent[self.next_tsn] = tail
            self.next_tsn += 1

    def _advance_ack_point(self) -> None:
        point = max(self.advanced_ack_point, self.cum_acked)
        sent = self.sent
        while True:
            chunk = sent.get(point + 1)
            if chunk is None or not chunk.abandoned:
                break
            point += 1
        self.advanced_ack_point = point
        if point > self.cum_acked:
            self.forward_tsn_due = True

    # --- loss recovery: timers and the reaction to loss ---------------------------------

    def handle_t3_timeout(self, now: float) -> None:
        """RFC 9260 6.3.3: back off, collapse cwnd, mark everything outstanding for rtx."""
        self.t3_timeouts += 1
        self.consecutive_timeouts += 1
        self.rtt.back_off()
        self.reorder_deadline = self.probe_deadline = None
        if not self.sent:
            self.t3_deadline = None
            return
        self.ssthresh = max(self.cwnd // 2, 4 * self.mtu)
        self.cwnd = self.mtu
        self.partial_bytes_acked = 0
        self.fast_recovery_exit = None
        self._rtt_probe_tsn = None
        for chunk in list(self.sent.values()):
            if not chunk.acked and not chunk.abandoned:
                self._mark_for_retransmit(chunk, now)
        self._advance_ack_point()
        self.t3_deadline = now + self.rtt.rto

    def _on_loss_detected(self) -> None:
        """RFC 9260 7.2.4 steps 2-3: send the retransmissions now; halve cwnd once a window."""
        self.fast_retransmits += 1
        self._fast_rtx_budget = True
        if self.fast_recovery_exit is None:
            self.ssthresh = max(self.cwnd // 2, 4 * self.mtu)
            self.cwnd = self.ssthresh
            self.partial_bytes_acked = 0
            self.fast_recovery_exit = self.next_tsn - 1

    def _detect_lost_by_time(self, now: float) -> None:
        srtt = self.rtt.srtt
        if srtt is None:
            self.reorder_deadline = None  # no RTT yet: the T3 timer stays in charge
            return
        marked, self.reorder_deadline = detect_lost_by_time(
            self.sent, self.cum_acked, self.highest_acked, srtt, self._mark_for_retransmit, now
        )
        if marked:
            self._on_loss_detected()

    def handle_reorder_timeout(self, now: float) -> None:
        """The reordering window of a chunk reported missing has passed."""
        self.reorder_deadline = None
        self.reorder_timeouts += 1
        if self.highest_acked > self.cum_acked:
            self._detect_lost_by_time(now)

    def _probe_timeout(self, pto: float, flight: int) -> float:
        """RFC 8985 7.2 PTO: two smoothed RTTs (``pto``), plus the peer's delayed-SACK
        allowance when a single packet is in flight (its SACK may be held back)."""
        return pto if flight > self.mtu else pto + _DELAYED_SACK_ALLOWANCE

    def handle_probe_timeout(self, now: float) -> None:
        """Tail loss probe (RFC 8985 7): no SACK newly acknowledged data for a PTO.

        Resend the highest outstanding chunk: the peer answers a duplicate or a filled
        hole with a SACK at once. Without it, a stalled window whose last SACKs were lost
        (the window is a few packets at 10% loss), or lost last chunks of a transfer,
        wait for the T3 timer. Not a congestion signal: cwnd is left alone.

        RFC 8985 sends one probe, then leaves it to the RTO. We send a second one after
        twice the PTO if the first went unanswered: at 10% loss a probe or its SACK is
        lost one time in five, and a T3 costs a hundred round trips here.
        """
        self.probe_deadline = None
        probed = False
        for chunk in reversed(self.sent.values()):
            # A probe is no evidence of loss: never the one that abandons a message.
            if (
                chunk.in_flight
                and not chunk.acked
                and not chunk.abandoned
                and (not self._out_of_retransmissions(chunk, now))
            ):
                self._mark_for_retransmit(chunk, now)
                self._fast_rtx_budget = probed = True
                break
        else:
            if self.advanced_ack_point > self.cum_acked:
                # Only abandoned data is outstanding: the FORWARD-TSN or its SACK was lost.
                self.forward_tsn_due = probed = True
        if probed:
            self.tail_probes += 1
            self._probes_unanswered += 1
            pto = self.rtt.pto
            if pto is not None and self._probes_unanswered < _MAX_PROBES:
                self.probe_deadline = now + 2 * self._probe_timeout(pto, self.flight)
