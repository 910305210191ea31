"""The PeerLink core (proto/link.py): exactly-once, in-order delivery over dying paths.

A hypothesis state machine runs two LinkCores over two simulated ordered paths (think
relay circuit and data channel) with random frame limits. Paths die at random (the
frames in flight on a dead path vanish), come back, and either side may switch its
sending path at any time; time advances in explicit steps. Whatever happens, each
side receives a prefix of what the other sent, every message once, in order, intact,
and once a path stays up everything arrives.
"""

from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from darkswap_trio.proto.errors import ParseError
from darkswap_trio.proto.link import (
    ACK,
    DATA,
    LinkCore,
    LinkFrameError,
    MessageTooLarge,
    PathDead,
    encode_hello,
    parse_frame_untrusted,
    parse_hello_untrusted,
)

MAX = 300
PATHS = ("relay", "direct")


def make_core():
    return LinkCore(
        max_message_size=MAX,
        window=2 * (MAX + 4) + 100,
        ack_delay=0.05,
        ping_interval=1.0,
        path_timeout=3.0,
    )


class TwoPathLink(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.cores = {"a": make_core(), "b": make_core()}
        self.now = 0.0
        # in flight: (path, sender) -> frames from sender to the other side
        self.wire = {(p, s): deque() for p in PATHS for s in "ab"}
        self.up = set()
        self.sent = {"a": [], "b": []}
        self.got = {"a": [], "b": []}  # what each side received (from the other)
        self.counter = 0

    @staticmethod
    def other(side):
        return "b" if side == "a" else "a"

    # -- paths --------------------------------------------------------------------------

    @rule(
        path=st.sampled_from(PATHS),
        limit=st.integers(10, 400),
        use_a=st.booleans(),
        use_b=st.booleans(),
    )
    def path_up(self, path, limit, use_a, use_b):
        if path in self.up:
            return
        self.up.add(path)
        for side, use in (("a", use_a), ("b", use_b)):
            core = self.cores[side]
            core.add_path(path, limit, self.now)
            if use or core.active is None:
                core.use_path(path)  # the sender rule: resend everything unacked here

    @rule(path=st.sampled_from(PATHS))
    def path_dies(self, path):
        if path not in self.up:
            return
        self.up.discard(path)
        for side in "ab":
            self.wire[(path, side)].clear()  # in-flight frames vanish
            core = self.cores[side]
            core.remove_path(path)
            if core.active is None:
                for other in PATHS:
                    if other in self.up:
                        core.use_path(other)

    @rule(side=st.sampled_from("ab"), path=st.sampled_from(PATHS))
    def switch(self, side, path):
        if path in self.up:
            self.cores[side].use_path(path)

    # -- traffic ------------------------------------------------------------------------

    @rule(side=st.sampled_from("ab"), size=st.integers(0, MAX), fill=st.integers(0, 255))
    def send(self, side, size, fill):
        self.counter += 1
        data = self.counter.to_bytes(4, "big")[-min(size, 4) :] + bytes([fill]) * max(size - 4, 0)
        data = data[:size]
        if self.cores[side].queue_message(data):
            self.sent[side].append(data)

    @rule(side=st.sampled_from("ab"))
    def oversize_refused(self, side):
        with pytest.raises(MessageTooLarge):
            self.cores[side].queue_message(b"x" * (MAX + 1))

    @rule(side=st.sampled_from("ab"), path=st.sampled_from(PATHS), count=st.integers(1, 8))
    def transmit(self, side, path, count):
        if path not in self.up:
            return
        for _ in range(count):
            frame = self.cores[side].poll_transmit(path, self.now)
            if frame is None:
                break
            self.wire[(path, side)].append(frame)

    @rule(side=st.sampled_from("ab"), path=st.sampled_from(PATHS), count=st.integers(1, 8))
    def deliver(self, side, path, count):
        """Frames ``side`` sent on ``path`` reach the other side, in order."""
        queue = self.wire[(path, side)]
        receiver = self.cores[self.other(side)]
        for _ in range(min(count, len(queue))):
            receiver.receive_frame(path, queue.popleft(), self.now)

    @rule(side=st.sampled_from("ab"), count=st.integers(1, 5))
    def consume(self, side, count):
        for _ in range(count):
            message = self.cores[side].next_message(self.now)
            if message is None:
                break
            self.got[side].append(message)

    @rule(dt=st.floats(0.001, 0.5))
    def tick(self, dt):
        self.now += dt
        for core in self.cores.values():
            core.handle_timeout(self.now)
            assert not isinstance(core.poll_event(), PathDead)  # no watched paths here

    # -- properties ---------------------------------------------------------------------

    @invariant()
    def received_is_a_prefix_of_sent(self):
        for side in "ab":
            got, sent = self.got[side], self.sent[self.other(side)]
            assert got == sent[: len(got)]

    @invariant()
    def window_bounds_memory(self):
        for core in self.cores.values():
            assert core.statistics().unacked_bytes <= core.window + MAX + 4

    def teardown(self):
        """Bring one path up for good and run to quiescence: everything arrives."""
        if not self.up:
            self.path_up("direct", 64, True, True)
        path = next(iter(self.up))
        for side in "ab":
            self.cores[side].use_path(path)
        for _ in range(100_000):
            moved = False
            for side in "ab":
                self.now += 0.06
                self.cores[side].handle_timeout(self.now)
                for p in self.up:
                    while (frame := self.cores[side].poll_transmit(p, self.now)) is not None:
                        self.wire[(p, side)].append(frame)
                        moved = True
                    queue = self.wire[(p, side)]
                    while queue:
                        self.cores[self.other(side)].receive_frame(p, queue.popleft(), self.now)
                        moved = True
                while (message := self.cores[side].next_message(self.now)) is not None:
                    self.got[side].append(message)
                    moved = True
            if not moved and all(c.all_acked for c in self.cores.values()):
                break
        else:
            raise AssertionError("link did not settle (livelock)")
        for side in "ab":
            assert self.got[side] == self.sent[self.other(side)]


TwoPathLink.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
test_two_path_link = TwoPathLink.TestCase


# -- parsers: any bytes raise only the ParseError family -------------------------------


@given(st.binary(max_size=64))
def test_parse_frame_raises_only_link_frame_error(data):
    try:
        frame = parse_frame_untrusted(data)
    except LinkFrameError:
        return
    assert frame.kind in (1, 2, 3, 4, 5, 6, 7)


@given(st.binary(max_size=64))
def test_receive_frame_raises_only_parse_errors(data):
    core = make_core()
    core.add_path("p", 100, 0.0)
    try:
        core.receive_frame("p", data, 0.0)
    except ParseError:
        pass


@given(st.one_of(st.binary(max_size=64), st.text(max_size=8), st.none()))
def test_parse_hello_untrusted_never_raises(message):
    result = parse_hello_untrusted(message)
    assert result is None or (len(result[0]) == 16 and (result[1] is None or len(result[1]) == 16))


def test_hello_round_trip():
    ours, theirs = bytes(range(16)), bytes(range(1, 17))
    assert parse_hello_untrusted(encode_hello(ours)) == (ours, None)
    assert parse_hello_untrusted(encode_hello(ours, theirs)) == (ours, theirs)
    assert parse_hello_untrusted(encode_hello(bytes(16), theirs)) is None  # no sender id


def test_hello_layout_is_the_one_documented():
    """docs/PROTOCOL.md 11.1: a 17-byte prefix, then the two 16-byte link ids (49 bytes)."""
    ours, theirs = bytes(range(16)), bytes(range(1, 17))
    assert encode_hello(ours, theirs) == b"\x00darkswap-link/1\x00" + ours + theirs
    assert encode_hello(ours) == b"\x00darkswap-link/1\x00" + ours + bytes(16)
    assert len(encode_hello(ours)) == 49
    assert parse_hello_untrusted(encode_hello(ours, theirs) + b"x") is None


# -- specific rules ------------------------------------------------------------------


def test_gap_is_a_protocol_violation():
    core = make_core()
    core.add_path("p", 100, 0.0)
    with pytest.raises(LinkFrameError, match="gap"):
        core.receive_frame("p", bytes([DATA]) + (5).to_bytes(8, "big") + b"xyz", 0.0)


def test_ack_beyond_sent_is_a_protocol_violation():
    core = make_core()
    core.add_path("p", 100, 0.0)
    with pytest.raises(LinkFrameError, match="beyond"):
        core.receive_frame("p", bytes([ACK]) + (1).to_bytes(8, "big"), 0.0)


def test_message_above_the_maximum_from_the_far_side_is_a_violation():
    core = make_core()
    core.add_path("p", 1000, 0.0)
    frame = bytes([DATA]) + (0).to_bytes(8, "big") + (MAX + 1).to_bytes(4, "big")
    with pytest.raises(LinkFrameError, match="message"):
        core.receive_frame("p", frame, 0.0)


def test_watched_path_dies_after_path_timeout_with_pings_first():
    core = make_core()
    core.add_path("direct", 100, 0.0, watched=True)
    core.use_path("direct")
    assert core.poll_transmit("direct", 0.0)[0] == ACK  # attach: tell the far side at once
    assert core.poll_timeout() == 1.0
    core.handle_timeout(1.0)
    assert core.poll_transmit("direct", 1.0) == bytes([3])  # PING
    core.handle_timeout(2.0)
    assert core.poll_transmit("direct", 2.0) == bytes([3])
    assert core.poll_event() is None
    core.handle_timeout(3.0)
    assert core.poll_event() == PathDead("direct", "nothing heard for 3.0 s")
    assert not core.has_path("direct") and core.active is None


def test_resend_on_a_path_with_a_smaller_frame_limit():
    """Bytes cut for a big-frame path are re-cut for a small one (offsets, not fragments)."""
    a, b = make_core(), make_core()
    a.add_path("big", 400, 0.0)
    a.use_path("big")
    assert a.queue_message(b"m" * MAX)
    while (frame := a.poll_transmit("big", 0.0)) is not None:
        pass  # lost with the path
    a.remove_path("big")
    a.add_path("small", 40, 0.0)
    a.use_path("small")
    b.add_path("small", 40, 0.0)
    frames = []
    while (frame := a.poll_transmit("small", 0.0)) is not None:
        assert len(frame) <= 40
        frames.append(frame)
    for frame in frames:
        b.receive_frame("small", frame, 0.0)
    assert b.next_message(0.0) == b"m" * MAX
    assert a.statistics().fragments_retransmitted >= 1


def test_receiver_that_does_not_consume_still_answers_while_data_arrives():
    """A slow reader sends no progress ACKs; the sender must still hear from it."""
    a, b = make_core(), make_core()
    for core in (a, b):
        core.add_path("direct", 100, 0.0, watched=True)
        core.use_path("direct")
        while core.poll_transmit("direct", 0.0) is not None:
            pass  # the attach ACKs
    now = 0.0
    heard = []
    for _ in range(40):  # 4 s of a steady stream that b never consumes
        now += 0.1
        a.queue_message(b"x" * 10)
        while (frame := a.poll_transmit("direct", now)) is not None:
            b.receive_frame("direct", frame, now)
        while (frame := b.poll_transmit("direct", now)) is not None:
            a.receive_frame("direct", frame, now)
            heard.append(now)
        a.handle_timeout(now)
        b.handle_timeout(now)
        assert a.poll_event() is None  # never declared dead
    assert (
        heard
        and max(later - earlier for earlier, later in zip(heard, heard[1:], strict=False)) <= 1.0
    )
    assert a.statistics().pings_sent == 0  # b spoke up on its own: no PING was needed
