"""SCTP sender loss recovery: RTO (RFC 9260 6.3), fast retransmit (7.2.4), and two
additions from TCP's RACK-TLP (RFC 8985) that keep a lossy link off the T3 timer.

A mixin of :class:`~darkswap_trio.proto.sctp._sender.SctpSender`, kept apart from the
packet filling and SACK bookkeeping. Why the additions: at 10% loss the congestion
window sits near its 4-packet floor, so three miss indications often never arrive (too
few packets after a hole, or their SACKs lost too), and RFC 9260 lets a chunk be fast
retransmitted only once, so a lost retransmission (one in ten) waits for T3. Each T3
costs RTO.Min (0.4 s, against a loopback RTT of milliseconds), doubles the RTO until
the next RTT sample and drops cwnd to one packet. Measured with
benchmarks/bench_lossy_datachannel.py and the SctpPair harness (tests/proto).
"""

from __future__ import annotations

from bisect import bisect_right
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._sender import SentChunk

# Floor of the reordering window of time-based loss detection (timer granularity).
_MIN_REORDER_WINDOW = 0.001
# Tail loss probe timeout bounds: floor, and what a peer may delay a lone SACK by.
_MIN_PROBE_TIMEOUT = 0.01
_DELAYED_SACK_ALLOWANCE = 0.2
# Probes sent before only the T3 timer is left (a SACK of new data starts over).
_MAX_PROBES = 2


def _tsn_of(chunk: SentChunk) -> int:
    return chunk.tsn


class SenderLossRecovery:
    """Loss detection and timers of :class:`SctpSender` (its state lives there)."""

    mtu: int
    sent: dict[int, SentChunk]
    flight: int
    cwnd: int
    ssthresh: int
    partial_bytes_acked: int
    fast_recovery_exit: int | None
    next_tsn: int
    cum_acked: int
    advanced_ack_point: int
    forward_tsn_due: bool
    highest_acked: int
    t3_deadline: float | None
    reorder_deadline: float | None
    probe_deadline: float | None
    rto: float
    rto_min: float
    rto_max: float
    srtt: float | None
    rttvar: float
    consecutive_timeouts: int
    fast_retransmits: int
    t3_timeouts: int
    reorder_timeouts: int
    tail_probes: int
    _fast_rtx_budget: bool
    _rtt_probe_tsn: int | None
    _pto: float | None
    _probes_unanswered: int

    def _mark_for_retransmit(self, chunk: SentChunk, now: float) -> bool:
        raise NotImplementedError  # SctpSender's

    def _advance_ack_point(self) -> None:
        raise NotImplementedError  # SctpSender's

    def _out_of_retransmissions(self, chunk: SentChunk, now: float) -> bool:
        raise NotImplementedError  # SctpSender's

    def update_rtt(self, rtt: float) -> None:
        """RFC 9260 6.3.1 (alpha 1/8, beta 1/4), clamped to [rto_min, rto_max]."""
        if rtt < 0:
            return
        if self.srtt is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self.rto = min(max(self.srtt + 4 * self.rttvar, self.rto_min), self.rto_max)
        # The tail loss probe timeout, computed here once rather than per packet.
        self._pto = min(max(2 * self.srtt, _MIN_PROBE_TIMEOUT), self.rto)

    def handle_t3_timeout(self, now: float) -> None:
        """RFC 9260 6.3.3: back off, collapse cwnd, mark everything outstanding for rtx."""
        self.t3_timeouts += 1
        self.consecutive_timeouts += 1
        self.rto = min(self.rto * 2, self.rto_max)
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
        self.t3_deadline = now + self.rto

    def _count_missing(self, cum: int, gap_acked: list[SentChunk], now: float) -> None:
        """Miss indications (RFC 9260 7.2.4) for chunks below newly gap-acked ones.

        A SACK counts once per chunk, as the RFC says, or once per full packet of data
        it newly acknowledges above the chunk, whichever is more: like TCP's DupThresh
        in packets (RFC 6675), so stretch SACKs from a batching receiver still trigger
        fast retransmit after about three packets.

        Only chunks sent after a chunk's latest transmission count against it, so a
        retransmission that is lost too is fast retransmitted again once three packets
        sent after it arrive (lost-retransmission detection as in RACK, RFC 8985 6.2),
        where RFC 9260 7.2.4 rule 5 would leave it to the T3 timer: at 10% loss one
        retransmission in ten is lost, and each T3 costs at least RTO.Min plus a
        collapse of cwnd to one packet.
        """
        sent = self.sent
        marked = False
        mtu = self.mtu
        # Bytes newly gap-acked above each position: suffix sums over gap_acked.
        above_from = [0] * (len(gap_acked) + 1)
        for i in range(len(gap_acked) - 1, -1, -1):
            above_from[i] = above_from[i + 1] + gap_acked[i].size
        highest = gap_acked[-1].tsn
        index = 0
        for tsn in range(cum + 1, highest):
            while gap_acked[index].tsn < tsn:
                index += 1
            chunk = sent.get(tsn)
            if chunk is None or not chunk.in_flight:
                continue
            sent_after = chunk.sent_after
            if sent_after >= highest:
                continue  # nothing sent after its latest transmission was acked
            if sent_after < tsn:
                above = above_from[index]
            else:
                above = above_from[bisect_right(gap_acked, sent_after, key=_tsn_of)]
            chunk.missing_reports += max(1, above // mtu)
            if chunk.missing_reports >= 3:
                chunk.missing_reports = 0
                if not self._mark_for_retransmit(chunk, now):
                    continue
                marked = True
        if marked:
            self._on_loss_detected()

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
        """RACK-style loss detection (RFC 8985 6.2) beside the miss-indication count.

        A chunk still in flight is lost once a chunk sent after its latest transmission
        has been acknowledged and one smoothed RTT plus a reordering window has passed
        since that transmission. Three miss indications need three packets after the
        hole; with a window of a few packets (cwnd sits near its 4-MTU floor at 10%
        loss), or when the SACKs reporting them are lost too, they never come and only
        the T3 timer (RTO.Min 0.4 s, cwnd back to one packet) would recover.
        """
        srtt = self.srtt
        if srtt is None:
            self.reorder_deadline = None  # no RTT yet: the T3 timer stays in charge
            return
        window = srtt + max(srtt / 4, _MIN_REORDER_WINDOW)
        highest = self.highest_acked
        sent = self.sent
        earliest: float | None = None
        marked = False
        for tsn in range(self.cum_acked + 1, highest):
            chunk = sent.get(tsn)
            if chunk is None or not chunk.in_flight or chunk.sent_after >= highest:
                continue
            deadline = chunk.sent_time + window
            if deadline <= now:
                if self._mark_for_retransmit(chunk, now):
                    chunk.missing_reports = 0
                    marked = True
            elif earliest is None or deadline < earliest:
                earliest = deadline
        self.reorder_deadline = earliest
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
            if chunk.in_flight and not chunk.acked and not chunk.abandoned and (
                not self._out_of_retransmissions(chunk, now)
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
            pto = self._pto
            if pto is not None and self._probes_unanswered < _MAX_PROBES:
                self.probe_deadline = now + 2 * self._probe_timeout(pto, self.flight)
