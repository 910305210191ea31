"""The SCTP association's transition table (darkswap_trio/proto/sctp/_state.py)."""

from __future__ import annotations

import pytest

from darkswap_trio.proto.sctp import SctpState, _association
from darkswap_trio.proto.sctp._state import (
    TRANSITIONS,
    SctpStateError,
    Trigger,
    allows,
    next_state,
)
from darkswap_trio.testing._sctp_pair import SctpPair


def test_every_state_but_terminated_can_abort():
    for state in SctpState:
        if state is SctpState.TERMINATED:
            assert not allows(state, Trigger.ABORT)
        else:
            assert next_state(state, Trigger.ABORT) is SctpState.TERMINATED


def test_a_transition_the_table_lacks_raises():
    with pytest.raises(SctpStateError, match="closed on shutdown-ack"):
        next_state(SctpState.CLOSED, Trigger.SHUTDOWN_ACK)
    assert not allows(SctpState.ESTABLISHED, Trigger.COOKIE_ACK)


def test_terminated_is_final():
    assert not any(state is SctpState.TERMINATED for state, _ in TRANSITIONS)


def test_graceful_close_walks_the_table(monkeypatch):
    steps: list[tuple[SctpState, Trigger, SctpState]] = []

    def recording(state: SctpState, trigger: Trigger) -> SctpState:
        after = next_state(state, trigger)
        steps.append((state, trigger, after))
        return after

    monkeypatch.setattr(_association, "next_state", recording)
    pair = SctpPair()
    pair.connect()
    pair.a.send(1, 51, b"last words", pair.now)
    pair.a.shutdown()
    while pair.step():
        pass
    assert pair.a.state is pair.b.state is SctpState.TERMINATED
    assert [trigger for _, trigger, _ in steps] == [
        Trigger.CONNECT,
        Trigger.CONNECT,  # both send INIT
        Trigger.INIT_ACK,
        Trigger.INIT_ACK,
        Trigger.COOKIE_ECHO,
        Trigger.COOKIE_ECHO,  # the crossing cookies establish both
        Trigger.SHUTDOWN_CALLED,  # a: SHUTDOWN-PENDING until "last words" is acked
        Trigger.SENDER_IDLE,  # a: SHUTDOWN-SENT
        Trigger.SHUTDOWN,
        Trigger.SENDER_IDLE,  # b: SHUTDOWN-RECEIVED, SHUTDOWN-ACK-SENT
        Trigger.SHUTDOWN_ACK,  # a: TERMINATED
        Trigger.SHUTDOWN_COMPLETE,  # b: TERMINATED
    ]
