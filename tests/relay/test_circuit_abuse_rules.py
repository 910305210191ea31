"""CircuitTable abuse rules (issue #10 item 5): the per-source-per-target cap and the
idle timeout for circuits that carry no data. Sans-IO: explicit time, no sockets."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from darkswap_trio.proto.circuits import (
    CircuitClosed,
    CircuitOpened,
    CircuitRefused,
    CircuitTable,
    CloseReason,
    DeliverData,
)
from darkswap_trio.proto.signaling import CircuitLimits

LIMITS = CircuitLimits(duration=3600.0, data=0, bandwidth=0, window=100, max_data_frame=40)


def rid(n: int) -> bytes:
    return n.to_bytes(16, "big")


def drain(table: CircuitTable) -> list:
    out = []
    while (e := table.poll_event()) is not None:
        out.append(e)
    return out


def test_one_source_cannot_take_every_slot_of_a_target():
    t = CircuitTable(
        limits=LIMITS, max_circuits=0, max_circuits_per_peer=16, stall_timeout=0,
        max_circuits_per_pair=4,
    )  # fmt: skip
    opened = [t.request("mallory", "victim", rid(i), 0.0) for i in range(16)]
    assert opened == [True] * 4 + [False] * 12
    refusals = [e for e in drain(t) if isinstance(e, CircuitRefused)]
    assert {r.code for r in refusals} == {"too_many_circuits_to_peer"}
    assert len(refusals) == 12
    # Another source still gets circuits to the same target; the target's own cap holds.
    assert all(t.request(f"honest{i}", "victim", rid(100 + i), 0.0) for i in range(12))
    assert not t.request("honest99", "victim", rid(200), 0.0)
    assert drain(t)[-1].code == "too_many_circuits"
    # The pair count is released on close: mallory may open one again.
    t.close(rid(0), "mallory")
    t.close(rid(100), "honest0")
    assert t.request("mallory", "victim", rid(300), 1.0)


def test_pair_cap_is_directional_and_per_target():
    t = CircuitTable(
        limits=LIMITS, max_circuits=0, max_circuits_per_peer=0, stall_timeout=0,
        max_circuits_per_pair=1,
    )  # fmt: skip
    assert t.request("a", "b", rid(1), 0.0)
    assert not t.request("a", "b", rid(2), 0.0)
    assert t.request("b", "a", rid(3), 0.0)  # the other direction is another pair
    assert t.request("a", "c", rid(4), 0.0)


def test_idle_circuit_closes_and_both_ends_are_told():
    t = CircuitTable(
        limits=LIMITS, max_circuits=0, max_circuits_per_peer=0, stall_timeout=0,
        idle_timeout=60.0,
    )  # fmt: skip
    assert t.request("a", "b", rid(1), 0.0)
    assert t.request("a", "c", rid(2), 0.0)
    drain(t)
    assert t.take_new_deadline() == 60.0
    assert t.poll_timeout() == 60.0
    t.data(rid(2), "c", b"x" * 10, 50.0)  # data either way restarts the idle timer
    assert t.poll_timeout() == 60.0
    t.handle_timeout(59.9)
    assert [type(e) for e in drain(t)] == [DeliverData]
    t.handle_timeout(60.0)
    assert drain(t) == [CircuitClosed(rid(1), CloseReason.IDLE, (("a", "idle"), ("b", "idle")))]
    assert t.poll_timeout() == 110.0
    t.credit(rid(2), "a", 10, 100.0)  # credit is not data: it does not keep a circuit open
    drain(t)
    t.handle_timeout(110.0)
    assert drain(t) == [CircuitClosed(rid(2), CloseReason.IDLE, (("a", "idle"), ("c", "idle")))]
    assert len(t) == 0 and t.poll_timeout() is None


def test_idle_timeout_zero_never_closes():
    t = CircuitTable(limits=LIMITS, max_circuits=0, max_circuits_per_peer=0, stall_timeout=0)
    assert t.request("a", "b", rid(1), 0.0)
    assert t.poll_timeout() == 3600.0  # only the duration limit
    t.handle_timeout(3599.0)
    assert [type(e) for e in drain(t)] == [CircuitOpened]


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["open", "close", "disconnect", "data", "tick"]),
            st.sampled_from("abcd"),
            st.sampled_from("abcd"),
            st.integers(0, 30),
        ),
        max_size=80,
    )
)
def test_pair_cap_and_idle_rule_hold_under_any_sequence(ops):
    cap, idle = 2, 10.0
    t = CircuitTable(
        limits=LIMITS, max_circuits=0, max_circuits_per_peer=3, stall_timeout=0,
        max_circuits_per_pair=cap, idle_timeout=idle,
    )  # fmt: skip
    now, next_id = 0.0, 0
    last_data: dict[bytes, float] = {}
    for op, x, y, n in ops:
        if op == "open":
            next_id += 1
            if t.request(x, y, rid(next_id), now):
                last_data[rid(next_id)] = now
        elif op == "close" and t.circuits_of(x):
            t.close(min(t.circuits_of(x)), x)
        elif op == "disconnect":
            t.disconnect(x)
        elif op == "data" and t.circuits_of(x):
            relay_id = min(t.circuits_of(x))
            t.data(relay_id, x, b"x" * min(n, 40), now)
            last_data[relay_id] = now
            ends = t.ends(relay_id)
            if ends is not None:  # still open: the receiver gives the credit back
                t.credit(relay_id, ends[1] if ends[0] == x else ends[0], 40, now)
        elif op == "tick":
            now += n / 2
            t.handle_timeout(now)
        drain(t)
        pairs: dict[tuple[str, str], int] = {}
        for relay_id in {r for p in "abcd" for r in t.circuits_of(p)}:
            ends = t.ends(relay_id)
            pairs[ends] = pairs.get(ends, 0) + 1
            # No open circuit has been idle past the timeout once time was applied.
            if op == "tick":
                assert now < last_data[relay_id] + idle
        assert all(count <= cap for count in pairs.values())
        for p in "abcd":
            assert len(t.circuits_of(p)) <= 3
