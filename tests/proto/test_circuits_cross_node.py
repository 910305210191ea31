"""The circuit core's support for cross-node circuits: per-circuit limits, narrow()."""

from __future__ import annotations

import pytest

from darkswap_trio.proto.circuits import (
    CircuitClosed,
    CircuitOpened,
    CircuitTable,
    CloseReason,
    DeliverData,
    Outcome,
)
from darkswap_trio.proto.signaling import CircuitLimits

LIMITS = CircuitLimits(duration=100.0, data=0, bandwidth=0, window=4096, max_data_frame=1024)
TIGHT = CircuitLimits(duration=10.0, data=0, bandwidth=0, window=2048, max_data_frame=512)
RID = b"\1" * 16


def table() -> CircuitTable:
    return CircuitTable(limits=LIMITS, max_circuits=0, max_circuits_per_peer=0, stall_timeout=5)


def events(t: CircuitTable) -> list:
    out = []
    while (e := t.poll_event()) is not None:
        out.append(e)
    return out


def test_request_with_limits_uses_them():
    t = table()
    assert t.request("a", "b", RID, 0.0, limits=TIGHT)
    assert events(t) == [CircuitOpened(RID, "a", "b", TIGHT)]
    assert t.balance(RID, "a") == 2048
    assert t.data(RID, "a", b"x" * 600, 1.0) is Outcome.OK  # above TIGHT's frame
    assert [e.reason for e in events(t)] == [CloseReason.PROTOCOL_ERROR]


def test_narrow_before_any_data():
    t = table()
    t.request("a", "b", RID, 0.0)
    events(t)
    assert t.narrow(RID, TIGHT, 1.0) is Outcome.OK
    assert t.balance(RID, "a") == t.balance(RID, "b") == 2048
    assert t.data(RID, "a", b"x" * 512, 2.0) is Outcome.OK
    assert isinstance(events(t)[0], DeliverData)
    with pytest.raises(ValueError):
        t.narrow(RID, TIGHT, 3.0)  # it carried data
    t.handle_timeout(11.0)  # the narrowed duration, from the narrowing
    (closed,) = events(t)
    assert isinstance(closed, CircuitClosed) and closed.reason is CloseReason.DURATION_LIMIT
    assert t.narrow(RID, TIGHT, 12.0) is Outcome.UNKNOWN_CIRCUIT


def test_node_lost_tells_both_ends():
    t = table()
    t.request("a", "b", RID, 0.0)
    events(t)
    t.close_circuit(RID, CloseReason.NODE_LOST)
    (closed,) = events(t)
    assert closed.notify == (("a", "node_lost"), ("b", "node_lost"))
