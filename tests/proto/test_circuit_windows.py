"""Adaptive circuit windows (proto/circuits.py, docs/PROTOCOL.md 5.2) under random
interleavings: circuits open and close (so every direction's fair share of the budget
moves), senders send what their credit allows, honest receivers return what they consumed.

Checked against a model of each direction: the sender never holds more than its
announced window, and credit is conserved (balance + unreturned + withheld = window); the
relay withholds credit only while the sender holds at least a full frame of credit (half
its fair share, refilled as it spends), so a circuit is never starved of credit it is owed
even by a receiver that returns credit only once half the announced window is consumed.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from darkswap_trio.proto.circuits import CircuitOpened, CircuitTable, DeliverCredit, DeliverData
from darkswap_trio.proto.signaling import CircuitLimits

KiB = 1024
LIMITS = CircuitLimits(window=32 * KiB, max_data_frame=4 * KiB)
BUDGET = 128 * KiB  # 16 directions of 8 KiB: shares move as circuits come and go


class WindowMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self):
        self.t = CircuitTable(limits=LIMITS, max_circuits=12, max_circuits_per_peer=0,
                              stall_timeout=0, window_budget=BUDGET, min_window=4 * KiB)  # fmt: skip
        self.next_id = 0
        # (relay_id, sender) -> dict(window, balance, unreturned); withheld is the rest
        self.dirs: dict[tuple[bytes, str], dict] = {}

    def apply_events(self):
        for e in iter(self.t.poll_event, None):
            if isinstance(e, CircuitOpened):
                w = e.limits.window
                assert LIMITS.max_data_frame <= w <= LIMITS.window and w % 4096 == 0
                for sender in (e.requester, e.target):
                    self.dirs[(e.relay_id, sender)] = dict(window=w, balance=w, unreturned=0)
            elif isinstance(e, DeliverData):
                d = self.dirs[(e.relay_id, e.sender)]
                d["balance"] -= len(e.payload)
                d["unreturned"] += len(e.payload)
                assert d["balance"] >= 0
            elif isinstance(e, DeliverCredit):
                d = self.dirs[(e.relay_id, e.to)]
                d["balance"] += e.increment
                assert d["balance"] <= d["window"]

    @rule()
    def open(self):
        self.next_id += 1
        rid = self.next_id.to_bytes(16, "big")
        self.t.request(f"a{self.next_id}", f"b{self.next_id}", rid, 0.0)
        self.apply_events()

    @precondition(lambda self: self.dirs)
    @rule(data=st.data())
    def close(self, data):
        rid, sender = data.draw(st.sampled_from(sorted(self.dirs)))
        self.t.close(rid, sender)
        self.dirs = {k: v for k, v in self.dirs.items() if k[0] != rid}
        for _ in iter(self.t.poll_event, None):
            pass

    @precondition(lambda self: self.dirs)
    @rule(data=st.data(), size=st.integers(1, LIMITS.max_data_frame))
    def send(self, data, size):
        key = data.draw(st.sampled_from(sorted(self.dirs)))
        size = min(size, self.dirs[key]["balance"])
        if size:
            self.t.data(key[0], key[1], b"x" * size, 0.0)
            self.apply_events()

    @precondition(lambda self: any(d["unreturned"] for d in self.dirs.values()))
    @rule(data=st.data())
    def consume(self, data):
        key = data.draw(st.sampled_from(sorted(k for k, d in self.dirs.items() if d["unreturned"])))
        d = self.dirs[key]
        amount = data.draw(st.integers(1, d["unreturned"]))
        d["unreturned"] -= amount
        receiver = self.t.ends(key[0])
        assert receiver is not None
        self.t.credit(key[0], receiver[1] if receiver[0] == key[1] else receiver[0], amount, 0.0)
        self.apply_events()
        # Withheld only while the sender holds its share: never starved.
        withheld = d["window"] - d["balance"] - d["unreturned"]
        assert withheld == 0 or d["balance"] >= self.t.effective_window(key[0])

    @precondition(lambda self: self.dirs)
    @rule(data=st.data())
    def consume_half_window(self, data):
        """A receiver that returns credit only in half-window batches (what clients do)."""
        key = data.draw(st.sampled_from(sorted(self.dirs)))
        d = self.dirs[key]
        if d["unreturned"] >= d["window"] // 2:
            amount, d["unreturned"] = d["unreturned"], 0
            ends = self.t.ends(key[0])
            assert ends is not None
            self.t.credit(key[0], ends[1] if ends[0] == key[1] else ends[0], amount, 0.0)
            self.apply_events()

    @invariant()
    def conserved(self):
        if not hasattr(self, "t"):
            return
        for (rid, sender), d in self.dirs.items():
            assert self.t.balance(rid, sender) == d["balance"]
            withheld = d["window"] - d["balance"] - d["unreturned"]
            assert 0 <= withheld <= d["window"]
            # Liveness: a sender short of a frame is never kept waiting by the relay (all
            # it lacks is with its receiver, more than half of a window of 2+ frames).
            assert withheld == 0 or d["balance"] >= LIMITS.max_data_frame
        stats = self.t.statistics()
        assert stats.window_bytes == sum(d["window"] for d in self.dirs.values())


TestWindowMachine = WindowMachine.TestCase
TestWindowMachine.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
