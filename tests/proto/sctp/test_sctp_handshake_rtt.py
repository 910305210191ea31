"""The setup handshake's round trips are RTT samples (Karn applies: not after T1).

Without them a new association's first DATA waited out RTO.Initial (1 s), then 2 s
after a second loss, with no RTT for the tail loss probe or time-based loss
detection: a data channel's DCEP OPEN lost twice arrived 3 s late, exactly when a
PeerLink gives up on a silent direct path (the lossy NAT lab test's flake).
"""

from __future__ import annotations

from darkswap_trio.proto.sctp import MessageReceived
from darkswap_trio.testing._sctp_pair import SctpPair


def test_handshake_gives_an_rtt_sample() -> None:
    pair = SctpPair(seed=1, delay=0.01)
    pair.connect()
    for side in (pair.a, pair.b):
        stats = side.statistics()
        assert stats.srtt is not None and 0.015 <= stats.srtt <= 0.025
        assert stats.rto < 1.0  # RTO.Min now, not RTO.Initial


def test_resent_init_is_no_sample() -> None:
    """The INIT lost once: T1 resent it, so its INIT-ACK is no sample (Karn). The
    COOKIE-ECHO was not resent: its COOKIE-ACK is."""
    pair = SctpPair(seed=1, delay=0.01)
    pair.ab.up = False
    pair.a.connect(pair.now)
    pair.run_for(0.5)  # a's INIT lost
    pair.ab.up = True
    pair.run_until(lambda: pair.a.statistics().srtt is not None, 10)
    assert 0.015 <= pair.a.statistics().srtt <= 0.025  # not T1's second plus


def test_first_message_lost_twice_arrives_well_before_three_seconds() -> None:
    pair = SctpPair(seed=1, delay=0.005)
    pair.connect()
    sent = pair.now
    pair.a.send(1, 51, b"open", sent)
    pair.ab.up = False  # the message and the retransmissions of the next 1.1 s lost
    pair.run_for(1.1)
    pair.ab.up = True
    pair.run_until(lambda: pair.messages("b"), 10)
    assert isinstance(pair.messages("b")[0], MessageReceived)
    assert pair.now - sent < 2.0  # RTO.Initial then twice that: 3 s
