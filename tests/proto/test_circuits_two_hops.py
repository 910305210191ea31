"""Two circuit tables in series, as two relay nodes hold a cross-node circuit: credit
on both hops (docs/PROTOCOL.md 15.4). Property: whatever the interleaving of sends,
forwarding over the link and credit returns, an honest sender never trips the far
node's credit check and neither node holds more than a window per direction."""

from __future__ import annotations

from collections import deque

from hypothesis import given
from hypothesis import strategies as st

from darkswap_trio.proto.circuits import (
    CircuitClosed,
    CircuitTable,
    DeliverCredit,
    DeliverData,
    Outcome,
)
from darkswap_trio.proto.signaling import CircuitLimits

WINDOW, FRAME = 4096, 1024
LIMITS = CircuitLimits(duration=0.0, data=0, bandwidth=0, window=WINDOW, max_data_frame=FRAME)
RID = b"\7" * 16


def node() -> CircuitTable:
    t = CircuitTable(limits=LIMITS, max_circuits=0, max_circuits_per_peer=0, stall_timeout=0)
    assert t.request("p", "q", RID, 0.0)
    t.poll_event()
    return t


def drain(t: CircuitTable) -> list:
    out = []
    while (e := t.poll_event()) is not None:
        assert not isinstance(e, CircuitClosed), e
        out.append(e)
    return out


@given(st.lists(st.tuples(st.sampled_from("sfrc"), st.integers(1, FRAME)), max_size=200))
def test_credit_holds_on_both_hops(actions):
    a, b = node(), node()  # a holds p (the sender), b holds q (the receiver)
    balance = WINDOW  # what p believes it may send
    to_b: deque[bytes] = deque()  # DATA on the link a -> b
    to_a: deque[int] = deque()  # CREDIT on the link b -> a
    at_q = 0  # bytes delivered to q and not yet credited
    for action, n in actions:
        if action == "s" and n <= balance:  # p sends within its credit
            balance -= n
            assert a.data(RID, "p", b"x" * n, 1.0) is Outcome.OK
            to_b.extend(e.payload for e in drain(a) if isinstance(e, DeliverData))
        elif action == "f" and to_b:  # the link delivers one frame to b
            assert b.data(RID, "p", to_b.popleft(), 1.0) is Outcome.OK
            at_q += sum(len(e.payload) for e in drain(b) if isinstance(e, DeliverData))
        elif action == "r" and at_q:  # q consumes and returns credit
            give = min(n, at_q)
            at_q -= give
            assert b.credit(RID, "q", give, 1.0) is Outcome.OK
            to_a.extend(e.increment for e in drain(b) if isinstance(e, DeliverCredit))
        elif action == "c" and to_a:  # the link delivers one CREDIT to a
            assert a.credit(RID, "q", to_a.popleft(), 1.0) is Outcome.OK
            balance += sum(e.increment for e in drain(a) if isinstance(e, DeliverCredit))
        # Nothing in flight beyond a window, on either node, and b is never ahead of a.
        assert 0 <= a.balance(RID, "p") <= b.balance(RID, "p") <= WINDOW
        assert balance == a.balance(RID, "p")
        assert sum(map(len, to_b)) + at_q + sum(to_a) + balance == WINDOW
