"""SCTP sender loss recovery in simulated time: a lossy transfer, and each rule alone.

The rules (darkswap_trio/proto/sctp/_loss.py): a lost retransmission is fast
retransmitted again once chunks sent after it are acknowledged; a chunk reported
missing is declared lost one smoothed RTT plus a reordering window after it was sent,
without waiting for three miss indications (RACK, RFC 8985 6.2); a tail loss probe
resends the highest outstanding chunk when no SACK acknowledges new data for two RTTs
(RFC 8985 7; a second probe after four); a gap-acknowledged chunk gives an RTT sample (Karn still applies).
"""

from __future__ import annotations

from collections import deque

import pytest

from darkswap_trio.proto.sctp import MessageReceived
from darkswap_trio.proto.sctp._sender import OutboundMessage, SctpSender
from darkswap_trio.testing._sctp_pair import SctpPair

MTU = 1188
TSN0 = 1000
SRTT = 0.01


def sender_with(messages: int, size: int = 1000) -> SctpSender:
    """A sender with ``messages`` one-chunk messages queued and an RTT of 10 ms known."""
    sender = SctpSender(TSN0, MTU, deque(), rto_initial=1.0, rto_min=0.4, rto_max=60.0)
    for i in range(messages):
        sender.enqueue(OutboundMessage(1, 53, bytes([i % 256]) * size, False, None, None))
    sender.update_rtt(SRTT)
    sender.cwnd = 1 << 20  # these tests are about loss detection, not the window
    return sender


def transmit(sender: SctpSender, now: float) -> list[int]:
    """One packet's worth of chunks (retransmissions first); the TSNs sent."""
    before = {tsn: chunk.sent_count for tsn, chunk in sender.sent.items()}
    parts: list[bytes] = []
    sender.fill(parts, (MTU - 12) & ~3, now)
    return sorted(
        tsn
        for tsn, chunk in sender.sent.items()
        if chunk.sent_count != before.get(tsn, 0) and chunk.wire in parts
    )


def sack(sender: SctpSender, cum: int, acked_above: list[int], now: float) -> None:
    """A SACK with cumulative TSN ``cum`` and gap blocks covering ``acked_above``."""
    gaps: list[tuple[int, int]] = []
    for tsn in sorted(acked_above):
        offset = tsn - cum
        if gaps and gaps[-1][1] == offset - 1:
            gaps[-1] = (gaps[-1][0], offset)
        else:
            gaps.append((offset, offset))
    sender.handle_sack(cum & 0xFFFFFFFF, 1 << 20, gaps, now)


def test_lost_retransmission_is_fast_retransmitted_again():
    sender = sender_with(12)
    now = 0.0
    for _ in range(4):
        transmit(sender, now)  # TSNs 1000-1003; 1000 is lost
    acked: list[int] = []
    for tsn in (1001, 1002, 1003):
        acked.append(tsn)
        sack(sender, TSN0 - 1, acked, now)
    assert transmit(sender, now) == [TSN0]  # third miss: fast retransmit
    assert sender.fast_retransmits == 1
    # The retransmission is lost too. Reports from chunks sent before it do not count...
    sack(sender, TSN0 - 1, acked, now)
    assert transmit(sender, now) == [1004]
    # ...reports from chunks sent after it do: three of them and it goes again, no T3.
    for tsn in (1004, 1005, 1006):
        if tsn != 1004:
            assert transmit(sender, now) == [tsn]
        acked.append(tsn)
        sack(sender, TSN0 - 1, acked, now)
    assert transmit(sender, now) == [TSN0]
    assert sender.sent[TSN0].sent_count == 3
    assert sender.t3_timeouts == 0


def test_missing_chunk_declared_lost_after_rtt_and_reordering_window():
    sender = sender_with(2)
    transmit(sender, 0.0)
    transmit(sender, 0.0)  # TSNs 1000, 1001: too few to ever give three miss reports
    sack(sender, TSN0 - 1, [1001], 0.002)
    assert sender.sent[TSN0].in_flight  # one report only, and maybe just reordered
    deadline = sender.reorder_deadline
    assert deadline == pytest.approx(SRTT + max(SRTT / 4, 0.001))
    sender.handle_reorder_timeout(deadline)
    assert transmit(sender, deadline) == [TSN0]
    assert sender.t3_deadline is not None and sender.t3_deadline > deadline
    # Loss halves the window once, as for a fast retransmit (RFC 9260 7.2.3).
    assert sender.cwnd == (1 << 20) // 2


def test_reordered_chunk_acknowledged_in_time_is_not_retransmitted():
    sender = sender_with(2)
    transmit(sender, 0.0)
    transmit(sender, 0.0)
    sack(sender, TSN0 - 1, [1001], 0.002)
    sack(sender, TSN0 + 1, [], 0.004)  # the late chunk arrived
    assert sender.reorder_deadline is None
    assert sender.retransmissions == 0


def test_tail_loss_probe_resends_the_last_chunk_without_touching_cwnd():
    sender = sender_with(3)
    for _ in range(3):
        transmit(sender, 0.0)
    # Every SACK for them is lost: the probe fires after two RTTs, long before T3.
    assert sender.probe_deadline == pytest.approx(2 * SRTT)
    assert sender.t3_deadline == pytest.approx(0.4)
    cwnd = sender.cwnd
    sender.handle_probe_timeout(sender.probe_deadline)
    assert transmit(sender, 0.02) == [1002]
    assert sender.tail_probes == 1 and sender.cwnd == cwnd
    # Unanswered: a second probe after twice the PTO, then only T3 is left.
    assert sender.probe_deadline == pytest.approx(0.02 + 4 * SRTT)
    sender.handle_probe_timeout(sender.probe_deadline)
    assert transmit(sender, 0.06) == [1002]
    assert sender.tail_probes == 2 and sender.probe_deadline is None
    sack(sender, 1002, [], 0.07)  # the probe's SACK acknowledges everything
    assert not sender.sent and sender.probe_deadline is None
    assert sender.t3_timeouts == 0 and sender.cwnd == cwnd


def test_probe_count_starts_over_when_new_data_is_acknowledged():
    sender = sender_with(6)
    for _ in range(3):
        transmit(sender, 0.0)
    for probe in range(2):
        sender.handle_probe_timeout(sender.probe_deadline)
        transmit(sender, 0.05 * (probe + 1))
    assert sender.probe_deadline is None
    sack(sender, TSN0, [], 0.2)  # new data acknowledged: the timer runs again
    assert sender.probe_deadline is not None
    assert 0.2 < sender.probe_deadline < sender.t3_deadline
    sender.handle_probe_timeout(sender.probe_deadline)
    assert sender.tail_probes == 3 and sender.probe_deadline is not None


def test_probe_never_abandons_a_partially_reliable_message():
    sender = SctpSender(TSN0, MTU, deque(), rto_initial=1.0, rto_min=0.4, rto_max=60.0)
    sender.update_rtt(SRTT)
    for i in range(2):
        sender.enqueue(OutboundMessage(1, 53, bytes([i]) * 1000, False, None, 0))
    sender.enqueue(OutboundMessage(2, 53, b"reliable", False, None, None))
    # Round robin: 1000 (stream 1, max_retransmits=0) and 1001 (stream 2, reliable)
    # share a packet, then 1002 (stream 1, max_retransmits=0).
    assert transmit(sender, 0.0) == [1000, 1001]
    assert transmit(sender, 0.0) == [1002]
    sender.handle_probe_timeout(sender.probe_deadline)
    assert sender.abandoned_messages == 0
    assert transmit(sender, 0.05) == [1001]  # the highest one that may be resent
    sender.handle_probe_timeout(sender.probe_deadline)
    assert sender.abandoned_messages == 0 and sender.tail_probes == 2


def test_gap_acked_probe_gives_an_rtt_sample():
    sender = sender_with(3)
    sender.rtt.srtt = None
    transmit(sender, 0.0)  # TSN 1000, the RTT probe
    transmit(sender, 0.0005)  # TSN 1001, lost
    sack(sender, TSN0, [], 0.001)
    assert sender.rtt.srtt == pytest.approx(0.001)
    transmit(sender, 0.002)  # TSN 1002, the next probe
    sack(sender, TSN0, [1002], 0.004)  # gap-acked while 1001 is missing: 2 ms
    assert sender.rtt.srtt == pytest.approx(0.875 * 0.001 + 0.125 * 0.002)
    srtt = sender.rtt.srtt
    sack(sender, 1002, [], 0.5)  # recovery time is not a round trip
    assert sender.rtt.srtt == srtt


@pytest.mark.parametrize("seed", range(4))
def test_transfer_through_loss_duplication_and_reordering_finishes_in_time(seed):
    # 10% loss, 5% duplication, 30% reordering, 1 ms RTT. The old sender needed 7-15 s
    # of simulated time and 12-18 T3 timeouts for these 2 MiB (a lost retransmission,
    # a stalled 4-packet window or lost SACKs all waited for T3 at 0.4 s and more).
    pair = SctpPair(seed=seed, loss=0.1, duplicate=0.05, reorder=0.3, delay=0.0005)
    pair.connect()
    start = pair.now
    total = 2 << 20
    for _ in range(total // 16384):
        pair.a.send(1, 53, bytes(16384), pair.now)
    received = 0

    def done() -> bool:
        nonlocal received
        received += sum(len(e.data) for e in pair.events["b"] if type(e) is MessageReceived)
        pair.events["b"].clear()
        return received >= total

    pair.run_until(done, max_time=60)
    stats = pair.a.statistics()
    assert received == total
    assert pair.now - start < 3.0
    assert stats.t3_timeouts <= 3
