"""SCTP sender loss detection: RTO (RFC 9260 6.3), miss indications (7.2.4), and the
time-based detection of TCP's RACK (RFC 8985 6.2) that keeps a lossy link off the T3
timer.

:class:`RttEstimator` owns the round-trip estimate and the timeouts derived from it;
:func:`count_missing` and :func:`detect_lost_by_time` look at the sender's chunks in
flight and hand the lost ones to ``mark`` (the sender's, which queues them again or
abandons their message), returning whether any was marked so the sender can react
(congestion control and the timers are :class:`~._sender.SctpSender`'s).

Why the additions: at 10% loss the congestion window sits near its 4-packet floor,
so three miss indications often never arrive (too few packets after a hole, or their
SACKs lost too), and RFC 9260 lets a chunk be fast retransmitted only once, so a lost
retransmission (one in ten) waits for T3. Each T3 costs RTO.Min (0.4 s, against a
loopback RTT of milliseconds), doubles the RTO until the next RTT sample and drops
cwnd to one packet. Measured with benchmarks/bench_lossy_datachannel.py and the
SctpPair harness (tests/proto).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._outbound import SentChunk

    Mark = Callable[[SentChunk, float], bool]

# Floor of the reordering window of time-based loss detection (timer granularity).
_MIN_REORDER_WINDOW = 0.001
# Floor of the tail loss probe timeout.
_MIN_PROBE_TIMEOUT = 0.01


def _tsn_of(chunk: SentChunk) -> int:
    return chunk.tsn


class RttEstimator:
    """Smoothed RTT, RTO (RFC 9260 6.3.1) and the tail loss probe timeout ``pto``."""

    __slots__ = ("pto", "rto", "rto_max", "rto_min", "rttvar", "srtt")

    def __init__(self, rto_initial: float, rto_min: float, rto_max: float) -> None:
        self.rto = rto_initial
        self.rto_min = rto_min
        self.rto_max = rto_max
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.pto: float | None = None  # set with the first RTT sample

    def update(self, rtt: float) -> None:
        """RFC 9260 6.3.1 (alpha 1/8, beta 1/4), clamped to [rto_min, rto_max]."""
        if rtt < 0:
            return
        if self.srtt is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        # min(max(...)) as comparisons: this runs once per round trip of a conversation.
        rto = self.srtt + 4 * self.rttvar
        if rto < self.rto_min:
            rto = self.rto_min
        if rto > self.rto_max:
            rto = self.rto_max
        self.rto = rto
        # The tail loss probe timeout, computed here once rather than per packet.
        pto = 2 * self.srtt
        if pto < _MIN_PROBE_TIMEOUT:
            pto = _MIN_PROBE_TIMEOUT
        self.pto = pto if pto < rto else rto

    def back_off(self) -> None:
        """RFC 9260 6.3.3 E2: a T3 expiry doubles the RTO."""
        self.rto = min(self.rto * 2, self.rto_max)


def count_missing(
    sent: dict[int, SentChunk],
    cum: int,
    gap_acked: list[SentChunk],
    mtu: int,
    mark: Mark,
    now: float,
) -> bool:
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
    collapse of cwnd to one packet. Returns whether a chunk was marked lost.
    """
    marked = False
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
            if mark(chunk, now):
                marked = True
    return marked


def detect_lost_by_time(
    sent: dict[int, SentChunk],
    cum_acked: int,
    highest_acked: int,
    srtt: float,
    mark: Mark,
    now: float,
) -> tuple[bool, float | None]:
    """RACK-style loss detection (RFC 8985 6.2) beside the miss-indication count.

    A chunk still in flight is lost once a chunk sent after its latest transmission
    has been acknowledged and one smoothed RTT plus a reordering window has passed
    since that transmission. Three miss indications need three packets after the
    hole; with a window of a few packets (cwnd sits near its 4-MTU floor at 10%
    loss), or when the SACKs reporting them are lost too, they never come and only
    the T3 timer (RTO.Min 0.4 s, cwnd back to one packet) would recover.

    Returns whether a chunk was marked lost, and when the next one would be.
    """
    window = srtt + max(srtt / 4, _MIN_REORDER_WINDOW)
    earliest: float | None = None
    marked = False
    for tsn in range(cum_acked + 1, highest_acked):
        chunk = sent.get(tsn)
        if chunk is None or not chunk.in_flight or chunk.sent_after >= highest_acked:
            continue
        deadline = chunk.sent_time + window
        if deadline <= now:
            if mark(chunk, now):
                chunk.missing_reports = 0
                marked = True
        elif earliest is None or deadline < earliest:
            earliest = deadline
    return marked, earliest
