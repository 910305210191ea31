"""CircuitTable (sans-IO): unit checks and a hypothesis state machine over random
request/data/credit/close/disconnect/time interleavings, checked against a model."""

from __future__ import annotations

import math

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from darkswap_trio.proto.circuits import (
    CircuitClosed,
    CircuitOpened,
    CircuitRefused,
    CircuitTable,
    CloseReason,
    DeliverCredit,
    DeliverData,
    Outcome,
)
from darkswap_trio.proto.signaling import CircuitLimits

LIMITS = CircuitLimits(duration=50.0, data=500, bandwidth=0, window=100, max_data_frame=40)
PEERS = ("a", "b", "c", "d")


def make_table(**kw) -> CircuitTable:
    args = dict(limits=LIMITS, max_circuits=4, max_circuits_per_peer=2, stall_timeout=20.0)
    args.update(kw)
    return CircuitTable(**args)


def drain(table: CircuitTable) -> list:
    out = []
    while (e := table.poll_event()) is not None:
        out.append(e)
    return out


def rid(n: int) -> bytes:
    return n.to_bytes(16, "big")


def test_open_data_credit_close():
    t = make_table()
    assert t.request("a", "b", rid(1), 0.0)
    assert drain(t) == [CircuitOpened(rid(1), "a", "b", LIMITS)]
    assert t.data(rid(1), "a", b"x" * 40, 1.0) is Outcome.OK
    assert drain(t) == [DeliverData(rid(1), "a", "b", b"x" * 40)]
    assert t.balance(rid(1), "a") == 60
    assert t.credit(rid(1), "b", 1000, 2.0) is Outcome.OK  # clamped to the window
    assert drain(t) == [DeliverCredit(rid(1), "a", 40)]
    assert t.data(rid(1), "c", b"x", 2.0) is Outcome.UNKNOWN_CIRCUIT
    assert t.close(rid(1), "b") is Outcome.OK
    assert drain(t) == [
        CircuitClosed(rid(1), CloseReason.CLOSED, (("b", "closed"), ("a", "closed_by_peer")))
    ]
    assert t.data(rid(1), "a", b"x", 3.0) is Outcome.UNKNOWN_CIRCUIT
    assert drain(t) == []


def test_refusals_and_limits():
    t = make_table()
    assert not t.request("a", "a", rid(1), 0.0)
    assert drain(t)[0].code == "self_circuit"
    assert t.request("a", "b", rid(2), 0.0) and t.request("a", "c", rid(3), 0.0)
    drain(t)
    assert not t.request("a", "d", rid(4), 0.0)  # per-peer cap of 2
    (refused,) = drain(t)
    assert isinstance(refused, CircuitRefused) and refused.code == "too_many_circuits"
    # credit_exceeded: more than the balance, not delivered.
    for _ in range(2):
        t.data(rid(2), "a", b"x" * 40, 0.0)
    t.data(rid(2), "a", b"x" * 40, 0.0)
    events = drain(t)
    assert [type(e) for e in events] == [DeliverData, DeliverData, CircuitClosed]
    assert events[-1].reason is CloseReason.CREDIT_EXCEEDED
    # duration limit, both ends told.
    assert t.poll_timeout() == 50.0
    t.handle_timeout(50.0)
    (closed,) = drain(t)
    assert closed.reason is CloseReason.DURATION_LIMIT
    assert closed.notify == (("a", "duration_limit"), ("c", "duration_limit"))


def test_stall_detection_and_progress():
    t = make_table()
    t.request("a", "b", rid(1), 0.0)
    drain(t)
    t.data(rid(1), "a", b"x" * 40, 1.0)
    t.data(rid(1), "a", b"x" * 30, 2.0)  # balance 30 < one frame: blocked since 2.0
    assert t.poll_timeout() == 22.0
    t.credit(rid(1), "b", 5, 10.0)  # progress, still blocked: timer restarts
    assert t.poll_timeout() == 30.0
    t.handle_timeout(29.9)
    drain(t)
    assert rid(1) in t
    t.handle_timeout(30.0)
    (closed,) = [e for e in drain(t) if isinstance(e, CircuitClosed)]
    assert closed.reason is CloseReason.STALLED


def test_disconnect_tells_only_the_other_end():
    t = make_table()
    t.request("a", "b", rid(1), 0.0)
    t.request("c", "a", rid(2), 0.0)
    drain(t)
    assert t.disconnect("a") == 2
    events = drain(t)
    assert {e.notify for e in events} == {
        (("b", "peer_disconnected"),),
        (("c", "peer_disconnected"),),
    }
    assert len(t) == 0 and t.statistics().closed == 2


def test_data_limit_closes_without_delivery():
    t = make_table(limits=CircuitLimits(duration=0, data=50, window=100, max_data_frame=40))
    t.request("a", "b", rid(1), 0.0)
    t.data(rid(1), "a", b"x" * 40, 0.0)
    t.data(rid(1), "b", b"y" * 11, 0.0)
    events = drain(t)
    assert isinstance(events[-1], CircuitClosed) and events[-1].reason is CloseReason.DATA_LIMIT
    assert sum(len(e.payload) for e in events if isinstance(e, DeliverData)) == 40
    assert t.poll_timeout() is None


def test_invalid_configuration():
    with pytest.raises(ValueError):
        make_table(limits=CircuitLimits(window=10, max_data_frame=20))


class CircuitTableMachine(RuleBasedStateMachine):
    """Random interleavings; every event is checked against a simple model."""

    @initialize()
    def setup(self):
        self.t = make_table()
        self.now = 0.0
        self.next_id = 0
        self.connected = set(PEERS)
        # model of open circuits: rid -> dict(ends, opened, carried, balance{sender})
        self.open: dict[bytes, dict] = {}
        self.closed: set[bytes] = set()
        self.expected_close: dict[bytes, str] = {}
        # What a driver's timer waits for: poll_timeout() when it fires, lowered by the
        # take_new_deadline() hint after every call. It must never be later than needed.
        self.timer = math.inf

    # -- event checking -------------------------------------------------------------

    def check_events(self):
        hint = self.t.take_new_deadline()
        if hint is not None:
            self.timer = min(self.timer, hint)
        actual = self.t.poll_timeout()
        assert actual is None or self.timer <= actual, "a driver would wake too late"
        for e in drain(self.t):
            if isinstance(e, CircuitOpened):
                assert e.relay_id not in self.open and e.relay_id not in self.closed
                self.open[e.relay_id] = {
                    "ends": (e.requester, e.target),
                    "opened": self.now,
                    "carried": 0,
                    "balance": {e.requester: LIMITS.window, e.target: LIMITS.window},
                }
            elif isinstance(e, DeliverData):
                c = self.open.get(e.relay_id)
                assert c is not None, "data delivered for a closed circuit"
                assert e.sender in c["ends"] and e.receiver in c["ends"]
                assert e.sender != e.receiver
                c["balance"][e.sender] -= len(e.payload)
                c["carried"] += len(e.payload)
                assert c["balance"][e.sender] >= 0, "credit exceeded"
                assert c["carried"] <= LIMITS.data, "data limit exceeded"
                assert len(e.payload) <= LIMITS.max_data_frame
            elif isinstance(e, DeliverCredit):
                c = self.open.get(e.relay_id)
                assert c is not None and e.to in c["ends"] and e.increment > 0
                c["balance"][e.to] += e.increment
                assert c["balance"][e.to] <= LIMITS.window
            elif isinstance(e, CircuitClosed):
                c = self.open.pop(e.relay_id, None)
                assert c is not None, "closed twice or never opened"
                self.closed.add(e.relay_id)
                told = [p for p, _ in e.notify]
                assert len(told) == len(set(told))
                # Every end still connected is told, a peer that is gone is not.
                assert set(told) == {p for p in c["ends"] if p in self.connected}
                if e.relay_id in self.expected_close:
                    assert e.reason.value == self.expected_close.pop(e.relay_id)
            else:
                assert isinstance(e, CircuitRefused)
        assert not self.expected_close, f"expected closes missing: {self.expected_close}"

    # -- rules ----------------------------------------------------------------------

    @rule(a=st.sampled_from(PEERS), b=st.sampled_from(PEERS))
    def request(self, a, b):
        if a not in self.connected or b not in self.connected:
            return
        self.next_id += 1
        before = len(self.open)
        opened = self.t.request(a, b, rid(self.next_id), self.now)
        self.check_events()
        assert opened == (len(self.open) == before + 1)
        if a == b:
            assert not opened

    @precondition(lambda self: self.open)
    @rule(data=st.data(), size=st.integers(0, 60), forward=st.booleans())
    def send(self, data, size, forward):
        relay_id = data.draw(st.sampled_from(sorted(self.open)))
        c = self.open[relay_id]
        sender = c["ends"][0 if forward else 1]
        if size > LIMITS.max_data_frame:
            self.expected_close[relay_id] = "protocol_error"
        elif size > c["balance"][sender]:
            self.expected_close[relay_id] = "credit_exceeded"
        elif c["carried"] + size > LIMITS.data:
            self.expected_close[relay_id] = "data_limit"
        assert self.t.data(relay_id, sender, b"d" * size, self.now) is Outcome.OK
        self.check_events()

    @precondition(lambda self: self.open)
    @rule(data=st.data(), inc=st.integers(1, 150), forward=st.booleans())
    def credit(self, data, inc, forward):
        relay_id = data.draw(st.sampled_from(sorted(self.open)))
        receiver = self.open[relay_id]["ends"][1 if forward else 0]
        assert self.t.credit(relay_id, receiver, inc, self.now) is Outcome.OK
        self.check_events()

    @precondition(lambda self: self.open)
    @rule(data=st.data(), first=st.booleans())
    def close(self, data, first):
        relay_id = data.draw(st.sampled_from(sorted(self.open)))
        closer = self.open[relay_id]["ends"][0 if first else 1]
        self.expected_close[relay_id] = "closed"
        assert self.t.close(relay_id, closer) is Outcome.OK
        self.check_events()

    @rule(peer=st.sampled_from(PEERS))
    def disconnect(self, peer):
        if peer not in self.connected:
            self.connected.add(peer)  # reconnect
            return
        self.connected.discard(peer)
        mine = [r for r, c in self.open.items() if peer in c["ends"]]
        assert self.t.disconnect(peer) == len(mine)
        self.check_events()
        assert not any(peer in c["ends"] for c in self.open.values())

    @rule(sender=st.sampled_from(PEERS), n=st.integers(0, 100))
    def stray_frames(self, sender, n):
        # Frames for circuits the sender is not an end of change nothing.
        for relay_id in [rid(n), *self.open]:
            if relay_id in self.open and sender in self.open[relay_id]["ends"]:
                continue
            assert self.t.data(relay_id, sender, b"x", self.now) is Outcome.UNKNOWN_CIRCUIT
            assert self.t.credit(relay_id, sender, 5, self.now) is Outcome.UNKNOWN_CIRCUIT
            assert self.t.close(relay_id, sender) is Outcome.UNKNOWN_CIRCUIT
        self.check_events()

    @rule(dt=st.floats(0.0, 30.0))
    def advance(self, dt):
        self.now += dt
        deadline = self.t.poll_timeout()
        if self.timer <= self.now:  # the driver's timer fires: it rescans
            self.t.handle_timeout(self.now)
            self.t.take_new_deadline()
            new = self.t.poll_timeout()
            self.timer = math.inf if new is None else new
        else:
            self.t.handle_timeout(self.now)  # must be a no-op: nothing is due
            assert not [e for e in drain(self.t) if isinstance(e, CircuitClosed)]
        self.check_events()
        # No circuit outlives its duration; the announced deadline was not late.
        for c in self.open.values():
            assert self.now < c["opened"] + LIMITS.duration
        if deadline is not None and deadline > self.now:
            assert self.t.poll_timeout() is not None

    @rule()
    def shutdown(self):
        self.t.close_all(CloseReason.SERVER_SHUTDOWN)
        self.check_events()
        assert not self.open and len(self.t) == 0

    # -- invariants -----------------------------------------------------------------

    @invariant()
    def caps_and_balances(self):
        if not hasattr(self, "t"):
            return
        assert len(self.t) == len(self.open) <= 4
        for peer in PEERS:
            assert len(self.t.circuits_of(peer)) <= 2
        for relay_id, c in self.open.items():
            for sender in c["ends"]:
                assert self.t.balance(relay_id, sender) == c["balance"][sender]
        stats = self.t.statistics()
        assert stats.in_flight_bytes == sum(
            2 * LIMITS.window - sum(c["balance"].values()) for c in self.open.values()
        )
        assert stats.in_flight_bytes <= 2 * LIMITS.window * len(self.open)


TestCircuitTableMachine = CircuitTableMachine.TestCase


def test_bandwidth_pacing():
    t = make_table(
        limits=CircuitLimits(duration=0, data=0, bandwidth=100, window=1000, max_data_frame=40)
    )
    t.request("a", "b", rid(1), 0.0)
    assert t.send_delay(rid(1), "a", 40, 0.0) == 0.0  # a burst of one second's worth
    t.data(rid(1), "a", b"x" * 40, 0.0)
    t.data(rid(1), "a", b"x" * 40, 0.0)
    assert t.send_delay(rid(1), "a", 40, 0.0) == pytest.approx(0.2)  # 20 tokens left
    t.data(rid(1), "a", b"x" * 40, 0.0)  # sent anyway: -20 (the debt counts)
    assert t.send_delay(rid(1), "a", 40, 0.0) == pytest.approx(0.6)
    assert t.send_delay(rid(1), "a", 40, 0.6) == pytest.approx(0.0)
    assert t.send_delay(rid(1), "b", 40, 0.6) == 0.0  # per direction
    assert t.send_delay(rid(9), "a", 40, 0.6) == 0.0  # unknown circuit: data() decides


def test_adaptive_windows_share_a_budget():
    # An eighth of the free budget, in 4 KiB steps, between the floor and limits.window.
    limits = CircuitLimits(window=1 << 20, max_data_frame=64 << 10)
    t = CircuitTable(limits=limits, max_circuits=0, max_circuits_per_peer=0, stall_timeout=0,
                     window_budget=16 << 20, min_window=64 << 10)  # fmt: skip
    windows = []
    for n in range(30):
        assert t.request(f"a{n}", f"b{n}", rid(n), 0.0)
        opened = drain(t)[0]
        assert isinstance(opened, CircuitOpened)
        windows.append(opened.limits.window)
        assert t.balance(rid(n), f"a{n}") == t.balance(rid(n), f"b{n}") == windows[-1]
    assert windows[:2] == [1 << 20, 1 << 20]  # free 16 MiB, then 14 MiB
    assert windows == sorted(windows, reverse=True) and windows[-1] == 64 << 10
    assert all(w % 4096 == 0 for w in windows)
    assert t.statistics().window_bytes == 2 * sum(windows)
    assert 2 * sum(w for w in windows if w > 64 << 10) <= 16 << 20  # only the floor overshoots
    # Closing gives the budget back to the next circuit.
    for n in range(30):
        t.close(rid(n), f"a{n}")
    assert t.statistics().window_bytes == 0 and t.next_window() == 1 << 20


def test_without_a_budget_every_circuit_gets_the_window():
    t = make_table()
    assert t.next_window() == LIMITS.window
    t.request("a", "b", rid(1), 0.0)
    assert drain(t)[0].limits == LIMITS
    assert t.statistics().window_bytes == 2 * LIMITS.window


def test_effective_window_is_a_fair_share_and_withheld_credit_returns():
    # Budget 1 MiB: one circuit may hold its whole 256 KiB window (each way), four only
    # 128 KiB each; credit beyond that waits in the relay until the share grows back.
    limits = CircuitLimits(window=256 << 10, max_data_frame=16 << 10)
    t = CircuitTable(limits=limits, max_circuits=0, max_circuits_per_peer=0, stall_timeout=0,
                     window_budget=1 << 20, min_window=16 << 10)  # fmt: skip
    t.request("a", "b", rid(0), 0.0)
    announced = drain(t)[0].limits.window
    assert announced == 128 << 10 and t.effective_window(rid(0)) == announced
    for n in range(1, 4):
        t.request(f"x{n}", f"y{n}", rid(n), 0.0)
    assert t.effective_window(rid(0)) == 128 << 10  # 1 MiB / 8 directions
    drain(t)
    frame = b"d" * (16 << 10)
    for _ in range(8):
        assert t.data(rid(0), "a", frame, 1.0) is Outcome.OK
    assert t.balance(rid(0), "a") == 0
    t.request("x4", "y4", rid(4), 1.0)  # five circuits: 1 MiB / 10 in 4 KiB steps
    assert t.effective_window(rid(0)) == 100 << 10
    share = t.effective_window(rid(0))
    drain(t)
    t.credit(rid(0), "b", 128 << 10, 2.0)  # b consumed everything
    assert drain(t) == [DeliverCredit(rid(0), "a", share)]
    assert t.balance(rid(0), "a") == share
    for n in range(1, 5):
        t.close(rid(n), f"x{n}")
    drain(t)
    t.credit(rid(0), "b", 1, 3.0)  # the next credit carries what was withheld
    assert drain(t) == [DeliverCredit(rid(0), "a", (128 << 10) - share)]
    assert t.balance(rid(0), "a") == 128 << 10  # never above the announced window


def test_withheld_credit_flows_back_as_the_sender_spends():
    # The 2,000-circuit benchmark's deadlock: the first circuit announced a 4 MiB window
    # (the budget was empty), then 99 more opened and its share fell to the floor. Its
    # receiver returns credit once half the announced window is consumed, so the relay
    # must pass withheld credit on as the sender spends it, not wait for more CREDIT.
    limits = CircuitLimits(window=4 << 20, max_data_frame=16 << 10)
    t = CircuitTable(limits=limits, max_circuits=0, max_circuits_per_peer=0, stall_timeout=30,
                     window_budget=32 << 20, min_window=64 << 10)  # fmt: skip
    t.request("a", "b", rid(0), 0.0)
    assert drain(t)[0].limits.window == 4 << 20
    for n in range(1, 100):
        t.request(f"x{n}", f"y{n}", rid(n), 0.0)
    drain(t)
    share = t.effective_window(rid(0))
    assert share == 160 << 10  # 32 MiB / 200 directions, in 4 KiB steps
    frame, balance, unreturned, moved = b"d" * (16 << 10), 4 << 20, 0, 0
    for step in range(2000):  # the sender sends what it may, the receiver batches
        if balance < len(frame):
            break
        assert t.data(rid(0), "a", frame, float(step)) is Outcome.OK
        balance -= len(frame)
        unreturned += len(frame)
        moved += len(frame)
        if unreturned >= 2 << 20:
            t.credit(rid(0), "b", unreturned, float(step))
            unreturned = 0
        balance += sum(e.increment for e in drain(t) if isinstance(e, DeliverCredit))
        assert t.balance(rid(0), "a") == balance
    assert moved == 2000 * len(frame)  # never blocked: 31 MiB through a 4 MiB window
    assert balance <= share  # once the first window is spent, the sender holds its share
