"""SctpAssociation pairs stepped in simulated time over a seeded virtual link."""

from __future__ import annotations

import heapq
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from darkswap_trio.proto.sctp import (
    BufferedAmountLow,
    Closed,
    Connected,
    MessageReceived,
    OutgoingStreamsReset,
    SctpAssociation,
    SctpState,
    StreamsReset,
)
from darkswap_trio.proto.sctp_chunks import (
    CommonHeader,
    DataChunk,
    ForwardTsnChunk,
    SackChunk,
    parse_packet_untrusted,
)

MAX_STEPS = 200_000


class Livelock(AssertionError):
    pass


class VirtualLink:
    """One direction of a seeded datagram network: delay, loss, duplication, reordering."""

    def __init__(self, rng, loss=0.0, duplicate=0.0, reorder=0.0, delay=0.01):
        self.rng = rng
        self.loss, self.duplicate, self.reorder, self.delay = loss, duplicate, reorder, delay
        self.up = True
        self.queue: list[tuple[float, int, bytes]] = []
        self.seq = 0
        self.sent: list[bytes] = []  # every packet offered to the link, for inspection

    def push(self, packet: bytes, now: float) -> None:
        self.sent.append(packet)
        if not self.up or self.rng.random() < self.loss:
            return
        copies = 2 if self.rng.random() < self.duplicate else 1
        for _ in range(copies):
            jitter = self.rng.random() * self.delay * 3 if self.rng.random() < self.reorder else 0
            self.seq += 1
            heapq.heappush(self.queue, (now + self.delay + jitter, self.seq, packet))

    def next_time(self) -> float | None:
        return self.queue[0][0] if self.queue else None

    def pop_due(self, now: float) -> list[bytes]:
        out = []
        while self.queue and self.queue[0][0] <= now:
            out.append(heapq.heappop(self.queue)[2])
        return out


class Pair:
    """Two associations wired through two links; ``run_until`` is bounded (livelock guard)."""

    def __init__(self, seed=0, a_kwargs=None, b_kwargs=None, **link):
        rng = random.Random(seed)
        self.a = SctpAssociation(True, rng=random.Random(seed + 1), **(a_kwargs or {}))
        self.b = SctpAssociation(False, rng=random.Random(seed + 2), **(b_kwargs or {}))
        self.ab = VirtualLink(rng, **link)
        self.ba = VirtualLink(rng, **link)
        self.max_packet = {
            name: (kwargs or {}).get("max_packet_size", 1188)
            for name, kwargs in (("a", a_kwargs), ("b", b_kwargs))
        }
        self.now = 0.0
        self.stalled_steps = 0
        self.events = {"a": [], "b": []}
        self.drain = {"a": True, "b": True}
        self.steps = 0
        self.on_event = None  # callback(name, event): the application reacting in place

    def side(self, name):
        return self.a if name == "a" else self.b

    def messages(self, name):
        return [e for e in self.events[name] if isinstance(e, MessageReceived)]

    def flush(self) -> None:
        for name in ("a", "b"):
            if self.drain[name]:
                assoc = self.side(name)
                while (event := assoc.poll_event()) is not None:
                    self.events[name].append(event)
                    if self.on_event is not None:
                        self.on_event(name, event)
        for name, src, link in (("a", self.a, self.ab), ("b", self.b, self.ba)):
            for _ in range(100_000):
                packet = src.poll_transmit()
                if packet is None:
                    break
                assert len(packet) <= self.max_packet[name]
                link.push(packet, self.now)
            else:
                raise Livelock("poll_transmit never returns None")

    def step(self, until: float | None = None) -> bool:
        """Advance to the next packet arrival or timer (not past ``until``); False when
        nothing is left to do."""
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise Livelock("too many steps")
        self.flush()
        times = [
            t for t in (
                self.ab.next_time(), self.ba.next_time(), self.a.poll_timeout(),
                self.b.poll_timeout(),
            ) if t is not None
        ]
        if not times:
            return False
        if until is not None and min(times) > until:
            self.now = until
            return True
        if min(times) <= self.now:
            # Timers that stay due, or packets bouncing in zero time: a livelock.
            self.stalled_steps += 1
            if self.stalled_steps > 10_000:
                raise Livelock(f"simulated time stuck at {self.now}")
        else:
            self.stalled_steps = 0
        self.now = max(self.now, min(times))
        for packet in self.ab.pop_due(self.now):
            self.b.receive(packet, self.now)
        for packet in self.ba.pop_due(self.now):
            self.a.receive(packet, self.now)
        for assoc in (self.a, self.b):
            deadline = assoc.poll_timeout()
            if deadline is not None and deadline <= self.now:
                assoc.handle_timeout(self.now)
        self.flush()
        return True

    def run_until(self, condition, max_time=120.0) -> None:
        start = self.now
        while not condition():
            if not self.step():
                raise AssertionError("idle before the condition held")
            if self.now - start > max_time:
                raise AssertionError(f"condition not met within {max_time} s of simulated time")

    def run_for(self, duration: float) -> None:
        end = self.now + duration
        while self.now < end and self.step(until=end):
            pass

    def connect(self, both=True) -> None:
        self.a.connect(self.now)
        if both:
            self.b.connect(self.now)
        self.run_until(lambda: self.a.state is self.b.state is SctpState.ESTABLISHED, 600)
        self.flush()


def data_chunks(packets):
    for packet in packets:
        _, chunks = parse_packet_untrusted(packet)
        yield from (c for c in chunks if isinstance(c, DataChunk))


def payload(i: int, size: int) -> bytes:
    return (i.to_bytes(4, "big") * (size // 4 + 1))[:size]


# --- association setup ------------------------------------------------------------------


def test_simultaneous_init_collision_establishes_once():
    pair = Pair()
    pair.connect(both=True)
    assert [type(e) for e in pair.events["a"]] == [Connected]
    assert [type(e) for e in pair.events["b"]] == [Connected]
    # Both sent INIT, and each answered the other's INIT with an INIT-ACK.
    assert sum(1 for p in pair.ab.sent if p[12] == 1) == 1
    assert sum(1 for p in pair.ab.sent if p[12] == 2) == 1


def test_single_init_passive_peer():
    pair = Pair()
    pair.connect(both=False)
    assert pair.a.state is pair.b.state is SctpState.ESTABLISHED
    assert all(p[12] != 1 for p in pair.ba.sent)  # b never sent INIT


@pytest.mark.parametrize("seed", range(4))
def test_handshake_survives_loss(seed):
    pair = Pair(seed=seed, loss=0.3, duplicate=0.2, reorder=0.5)
    pair.connect(both=seed % 2 == 0)
    pair.a.send(1, 51, b"hello", pair.now)
    pair.run_until(lambda: pair.messages("b"))
    assert pair.messages("b") == [MessageReceived(1, 51, b"hello")]


def test_forged_or_stale_cookie_is_ignored():
    pair = Pair()
    pair.a.connect(0.0)
    pair.flush()
    init = pair.ab.pop_due(1.0)
    pair.b.receive(init[0], 1.0)
    init_ack = pair.b.poll_transmit()
    # Replay the exchange 100 s later: the cookie has expired, b stays passive.
    pair.a.receive(init_ack, 1.0)
    echo = pair.a.poll_transmit()
    pair.b.receive(echo, 200.0)
    assert pair.b.state is SctpState.CLOSED
    tampered = bytearray(echo)
    tampered[-1] ^= 1
    pair.b.receive(bytes(tampered), 1.0)  # CRC now fails
    assert pair.b.state is SctpState.CLOSED
    pair.b.receive(echo, 1.5)
    assert pair.b.state is SctpState.ESTABLISHED


def test_garbage_packets_are_ignored():
    pair = Pair()
    pair.connect()
    rng = random.Random(7)
    for _ in range(200):
        pair.b.receive(rng.randbytes(rng.randrange(0, 300)), pair.now)
    pair.a.send(0, 51, b"still fine", pair.now)
    pair.run_until(lambda: pair.messages("b"))


# --- data transfer ----------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 1159, 1160, 1161, 5000, 100_000, 262_144])
def test_message_sizes_arrive_intact(size):
    pair = Pair()
    pair.connect()
    pair.a.send(3, 53, payload(1, size), pair.now)
    pair.b.send(4, 53, payload(2, size), pair.now)
    pair.run_until(lambda: pair.messages("a") and pair.messages("b"))
    assert pair.messages("b") == [MessageReceived(3, 53, payload(1, size))]
    assert pair.messages("a") == [MessageReceived(4, 53, payload(2, size))]
    pair.run_until(lambda: pair.a.buffered_amount() == pair.b.buffered_amount() == 0)


def test_oversized_and_empty_messages_are_refused():
    pair = Pair()
    with pytest.raises(ValueError):
        pair.a.send(0, 53, bytes(262_145), 0.0)
    with pytest.raises(ValueError):
        pair.a.send(0, 53, b"", 0.0)


def test_ordered_streams_deliver_in_order_over_reordering_link():
    pair = Pair(seed=3, reorder=0.5)
    pair.connect()
    sent = {sid: [payload(i, 100 + 37 * i) for i in range(60)] for sid in (1, 2, 5)}
    for i in range(60):
        for sid, messages in sent.items():
            pair.a.send(sid, 53, messages[i], pair.now)
    pair.run_until(lambda: len(pair.messages("b")) == 180)
    for sid, messages in sent.items():
        assert [m.data for m in pair.messages("b") if m.stream_id == sid] == messages


def test_streams_take_turns():
    pair = Pair()
    pair.connect()
    for i in range(50):
        pair.a.send(1, 53, payload(i, 16_384), pair.now)
    pair.a.send(2, 51, b"chat", pair.now)
    pair.run_until(lambda: len(pair.messages("b")) == 51)
    order = [m.stream_id for m in pair.messages("b")]
    assert order.index(2) <= 1  # not behind the whole bulk transfer


def test_unordered_messages_all_arrive():
    pair = Pair(seed=4, reorder=0.8)
    pair.connect()
    sent = [payload(i, 700) for i in range(100)]
    for m in sent:
        pair.a.send(9, 51, m, pair.now, ordered=False)
    pair.run_until(lambda: len(pair.messages("b")) == 100)
    got = [m.data for m in pair.messages("b")]
    assert sorted(got) == sorted(sent)
    assert got != sent  # reordering really happened and unordered did not wait


@pytest.mark.parametrize("seed", range(3))
def test_lossy_link_delivers_every_reliable_message_exactly_once(seed):
    pair = Pair(seed=seed, loss=0.2, duplicate=0.1, reorder=0.3)
    pair.connect()
    rng = random.Random(seed)
    expected = {"a": [], "b": []}
    for i in range(150):
        src, dst = ("a", "b") if i % 3 else ("b", "a")
        sid = rng.choice([0, 1, 2])
        data = payload(i, rng.choice([10, 900, 3000, 20_000]))
        ordered = sid != 2
        pair.side(src).send(sid, 53, data, pair.now, ordered=ordered)
        expected[dst].append((sid, data))
    pair.run_until(lambda: len(pair.messages("a")) + len(pair.messages("b")) == 150, 600)
    pair.run_for(5.0)  # nothing extra shows up later
    for name in ("a", "b"):
        got = [(m.stream_id, m.data) for m in pair.messages(name)]
        assert sorted(got) == sorted(expected[name])  # exactly once
        for sid in (0, 1):
            assert [d for s, d in got if s == sid] == [d for s, d in expected[name] if s == sid]
    assert pair.a.statistics().retransmissions > 0
    pair.run_until(lambda: pair.a.buffered_amount() == pair.b.buffered_amount() == 0, 300)


def test_tsn_wraparound():
    pair = Pair(
        seed=5, loss=0.1, reorder=0.3,
        a_kwargs={"initial_tsn": 0xFFFFFFF0}, b_kwargs={"initial_tsn": 0xFFFFFFFF},
    )
    pair.connect()
    sent = [payload(i, 2500) for i in range(40)]
    for m in sent:
        pair.a.send(0, 53, m, pair.now)
        pair.b.send(0, 53, m, pair.now)
    pair.run_until(lambda: len(pair.messages("b")) == len(pair.messages("a")) == 40, 300)
    assert [m.data for m in pair.messages("b")] == sent
    assert [m.data for m in pair.messages("a")] == sent


def test_delayed_sack_for_a_lone_packet():
    pair = Pair(delay=0.05)
    pair.connect()
    pair.ba.sent.clear()
    pair.a.send(0, 51, b"x", pair.now)
    sent_at = pair.now
    pair.run_until(lambda: any(p[12] == 3 for p in pair.ba.sent))
    # Arrives after 50 ms, acknowledged by the 200 ms delayed-SACK timer.
    assert pair.now - sent_at == pytest.approx(0.25)


def test_small_messages_share_packets_and_sacks_ride_on_data():
    pair = Pair(delay=0.02)
    pair.connect()
    pair.ab.sent.clear()
    pair.ba.sent.clear()
    for i in range(50):
        pair.a.send(0, 51, payload(i, 40), pair.now)
    pair.run_until(lambda: len(pair.messages("b")) == 50)
    assert len(list(data_chunks(pair.ab.sent))) == 50
    assert len(pair.ab.sent) <= 3
    # The receiver answers each message as it arrives: its SACK rides on the reply.
    def reply(name, event):
        if name == "b" and isinstance(event, MessageReceived):
            pair.b.send(1, 51, b"ok", pair.now)

    pair.on_event = reply
    pair.ba.sent.clear()
    for i in range(30):
        pair.a.send(0, 53, payload(i, 10_000), pair.now)
    pair.run_until(lambda: len(pair.messages("a")) == 30)
    kinds = [{type(c) for c in parse_packet_untrusted(p)[1]} for p in pair.ba.sent]
    assert sum(1 for k in kinds if {SackChunk, DataChunk} <= k) >= 10


def test_sack_every_second_packet():
    a = SctpAssociation(True, rng=random.Random(1))
    b = SctpAssociation(False, rng=random.Random(2))
    a.connect(0.0)
    for _ in range(4):  # handshake, no loss
        for src, dst in ((a, b), (b, a)):
            while (p := src.poll_transmit()) is not None:
                dst.receive(p, 0.0)
    a.send(0, 53, bytes(100_000), 0.0)
    data_packets = sacks = 0
    now = 0.0
    while b.poll_event() is None or data_packets < 10:
        now += 0.001
        burst = []
        while (p := a.poll_transmit()) is not None:
            burst.append(p)
        for packet in burst:  # arrive one at a time, each followed by b's output
            data_packets += 1
            b.receive(packet, now)
            while (p := b.poll_transmit()) is not None:
                sacks += 1
                a.receive(p, now)
    assert data_packets >= 80
    assert data_packets // 2 - 2 <= sacks <= data_packets // 2 + 2


# --- partial reliability ----------------------------------------------------------------


def test_max_retransmits_zero_is_never_retransmitted():
    pair = Pair(seed=11, loss=0.25, reorder=0.2)
    pair.connect()
    for i in range(100):
        pair.a.send(7, 53, payload(i, 1500), pair.now, max_retransmits=0)
    pair.a.send(1, 53, b"reliable tail", pair.now)

    def settled():
        delivered = sum(1 for m in pair.messages("b") if m.stream_id == 7)
        return delivered + pair.a.statistics().abandoned_messages == 100

    pair.run_until(lambda: any(m.stream_id == 1 for m in pair.messages("b")) and settled(), 300)
    tsns = [c.tsn for c in data_chunks(pair.ab.sent) if c.stream_id == 7]
    # Two fragments each, each sent at most once (a message whose first fragment was lost
    # is abandoned whole, so its second fragment may never leave).
    assert 150 <= len(tsns) == len(set(tsns)) <= 200
    got = [m.data for m in pair.messages("b") if m.stream_id == 7]
    assert 0 < len(got) < 100  # some lost for good, the rest intact and in order
    assert got == sorted(got, key=lambda d: int.from_bytes(d[:4], "big"))
    assert all(d == payload(int.from_bytes(d[:4], "big"), 1500) for d in got)
    assert any(isinstance(c, ForwardTsnChunk)
               for p in pair.ab.sent for c in parse_packet_untrusted(p)[1])
    # Fragments of abandoned messages do not linger in the receiver's window.
    pair.run_for(5.0)
    assert pair.b.statistics().local_rwnd == 1 << 20
    assert pair.a.buffered_amount() == pair.a.statistics().flight_size == 0


def test_expired_lifetime_is_abandoned_and_skipped():
    pair = Pair(seed=12)
    pair.connect()
    pair.ab.up = False  # everything sent now is lost
    for i in range(5):
        pair.a.send(2, 53, payload(i, 3000), pair.now, lifetime=0.5)
    pair.run_for(0.3)
    pair.ab.up = True
    pair.run_for(2.0)
    pair.a.send(2, 53, b"after", pair.now)
    pair.a.send(3, 53, b"never sent, expired", pair.now, lifetime=0.0)
    pair.run_until(lambda: pair.messages("b"))
    assert pair.messages("b") == [MessageReceived(2, 53, b"after")]
    assert pair.a.statistics().abandoned_messages == 6
    assert any(isinstance(c, ForwardTsnChunk)
               for p in pair.ab.sent for c in parse_packet_untrusted(p)[1])
    pair.run_until(lambda: pair.a.buffered_amount() == 0)


# --- stream reset, heartbeat, teardown --------------------------------------------------


def test_stream_reset_after_pending_data():
    pair = Pair(seed=13, loss=0.2, reorder=0.3)
    pair.connect()
    for i in range(20):
        pair.a.send(4, 53, payload(i, 2000), pair.now)
    pair.a.reset_streams([4])
    with pytest.raises(ValueError):
        pair.a.send(4, 53, b"too late", pair.now)
    pair.run_until(lambda: any(isinstance(e, StreamsReset) for e in pair.events["b"]), 300)
    pair.run_until(lambda: any(isinstance(e, OutgoingStreamsReset) for e in pair.events["a"]))
    b_events = [e for e in pair.events["b"] if not isinstance(e, Connected)]
    # All 20 messages precede the reset notification.
    assert len(b_events) == 21 and b_events[-1] == StreamsReset((4,))
    assert OutgoingStreamsReset((4,), True) in pair.events["a"]
    # The stream is reusable; SSNs restart at 0 on both sides.
    pair.a.send(4, 53, b"reopened", pair.now)
    pair.run_until(lambda: pair.messages("b")[-1].data == b"reopened", 300)


def test_heartbeat_measures_rtt():
    pair = Pair(delay=0.05, a_kwargs={"heartbeat_interval": 1.0})
    pair.connect()
    pair.run_for(3.0)
    rtt = pair.a.statistics().heartbeat_rtt
    assert rtt is not None and rtt == pytest.approx(0.1)
    assert pair.a.statistics().srtt == pytest.approx(0.1, rel=0.5)


def test_shutdown_delivers_queued_data_first():
    pair = Pair(seed=14, loss=0.1)
    pair.connect()
    for i in range(10):
        pair.a.send(0, 53, payload(i, 4000), pair.now)
    pair.a.shutdown()
    with pytest.raises(ValueError):
        pair.a.send(0, 53, b"late", pair.now)
    pair.run_until(lambda: pair.a.state is pair.b.state is SctpState.TERMINATED, 300)
    assert len(pair.messages("b")) == 10
    assert pair.events["a"][-1] == Closed("shutdown complete", graceful=True)
    assert pair.events["b"][-1] == Closed("shutdown complete", graceful=True)
    assert pair.a.poll_timeout() is None and pair.b.poll_timeout() is None


def test_abort_closes_both_sides():
    pair = Pair()
    pair.connect()
    pair.a.abort("user went away")
    pair.run_until(lambda: pair.b.state is SctpState.TERMINATED)
    closed = pair.events["b"][-1]
    assert isinstance(closed, Closed) and not closed.graceful
    assert "user went away" in closed.reason
    assert isinstance(pair.events["a"][-1], Closed)


@pytest.mark.parametrize("seed", range(4))
def test_shutdown_under_loss_and_from_both_sides(seed):
    pair = Pair(seed=seed, loss=0.2, duplicate=0.1, reorder=0.3)
    pair.connect()
    for i in range(10):
        pair.a.send(0, 53, payload(i, 3000), pair.now)
        pair.b.send(0, 53, payload(i, 3000), pair.now)
    pair.a.shutdown()
    if seed % 2:
        pair.b.shutdown()  # simultaneous shutdown (RFC 9260 9.2)
    pair.run_until(lambda: pair.a.state is pair.b.state is SctpState.TERMINATED, 600)
    assert len(pair.messages("a")) == len(pair.messages("b")) == 10
    assert pair.events["a"][-1].graceful and pair.events["b"][-1].graceful


def test_small_packet_budget_is_respected():
    kwargs = {"max_packet_size": 500}
    pair = Pair(seed=8, loss=0.1, a_kwargs=kwargs, b_kwargs=kwargs)
    pair.connect()
    data = payload(1, 50_000)
    pair.a.send(0, 53, data, pair.now)
    pair.b.send(0, 53, data, pair.now)
    pair.run_until(lambda: pair.messages("a") and pair.messages("b"), 300)
    assert pair.messages("b")[0].data == pair.messages("a")[0].data == data
    assert max(len(p) for p in pair.ab.sent + pair.ba.sent) <= 500


def test_oversized_heartbeat_echo_does_not_block_the_association():
    from darkswap_trio.proto.sctp_chunks import HeartbeatChunk, encode_packet

    pair = Pair()
    pair.connect()
    header = CommonHeader(5000, 5000, pair.b._local_tag)
    pair.b.receive(encode_packet(header, [HeartbeatChunk(bytes(3000))]), pair.now)
    pair.b.send(0, 53, b"still flowing", pair.now)
    pair.run_until(lambda: pair.messages("a"))


def test_packets_for_other_ports_are_ignored():
    pair = Pair(b_kwargs={"local_port": 5001})
    pair.a.connect(pair.now)
    pair.run_for(0.5)  # a talks to port 5000: b never answers
    assert pair.b.state is SctpState.CLOSED
    assert pair.ba.sent == []


def test_unreachable_peer_fails_the_association():
    pair = Pair(a_kwargs={"max_retransmissions": 3})
    pair.connect()
    pair.ab.up = pair.ba.up = False
    pair.a.send(0, 53, b"into the void", pair.now)
    pair.run_until(lambda: pair.a.state is SctpState.TERMINATED, 600)
    assert "retransmissions" in pair.events["a"][-1].reason


# --- flow control -----------------------------------------------------------------------


def test_receive_window_backpressure():
    window = 200_000
    pair = Pair(b_kwargs={"receive_window": window, "max_message_size": 65536})
    pair.connect()
    pair.drain["b"] = False
    for i in range(60):
        pair.a.send(0, 53, payload(i, 20_000), pair.now)
    pair.run_for(30.0)
    assert pair.b.statistics().local_rwnd == 0
    held = pair.b.statistics().messages_received * 20_000
    assert window <= held + 20_000 and held <= window + 20_000
    assert pair.a.buffered_amount() > 0
    pair.drain["b"] = True
    pair.run_until(lambda: len(pair.messages("b")) == 60, 300)
    assert [m.data for m in pair.messages("b")] == [payload(i, 20_000) for i in range(60)]


def test_buffered_amount_low_event():
    pair = Pair()
    pair.connect()
    pair.a.set_buffered_amount_low_threshold(0, 10_000)
    pair.a.send(0, 53, bytes(50_000), pair.now)
    assert pair.a.buffered_amount(0) == 50_000
    pair.run_until(lambda: pair.a.buffered_amount(0) == 0)
    assert pair.events["a"].count(BufferedAmountLow(0)) == 1


# --- hostile peer -----------------------------------------------------------------------

_u16 = st.integers(0, 0xFFFF)
_u32 = st.integers(0, 0xFFFFFFFF)
_near = st.integers(-70_000, 70_000)  # TSN offsets around the live window
_hostile_chunks = st.lists(
    st.one_of(
        st.tuples(st.just("data"), _near, st.integers(0, 4), _u16, st.integers(0, 15),
                  st.binary(min_size=1, max_size=40)),
        st.tuples(st.just("sack"), _near, _u32,
                  st.lists(st.tuples(st.integers(1, 70_000), st.integers(0, 70_000)), max_size=4),
                  st.lists(_u32, max_size=3)),
        st.tuples(st.just("fwd"), _near, st.lists(st.tuples(st.integers(0, 4), _u16), max_size=3)),
        st.tuples(st.just("reconfig"), _near, _near, _near, st.lists(_u16, max_size=3)),
        st.tuples(st.just("response"), _near, st.integers(0, 7)),
        st.tuples(st.just("raw"), st.sampled_from([1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 14, 0x3F, 0x7F,
                                                   0xBF, 0xFF]),
                  st.integers(0, 1), st.binary(max_size=40)),
    ),
    min_size=1, max_size=4,
)


def _hostile_chunk(spec, pair):
    from darkswap_trio.proto import sctp_chunks as c

    kind = spec[0]
    their_tsn = pair.a._sender.next_tsn  # what b expects next from a
    our_tsn = pair.b._sender.next_tsn
    if kind == "data":
        _, off, sid, ssn, flags, data = spec
        return c.DataChunk((their_tsn + off) & 0xFFFFFFFF, sid, ssn, 53, data, flags)
    if kind == "sack":
        _, off, rwnd, gaps, dups = spec
        return c.SackChunk((our_tsn + off) & 0xFFFFFFFF, rwnd,
                           [(s, min(s + e, 0xFFFF)) for s, e in gaps if s <= 0xFFFF], dups)
    if kind == "fwd":
        return c.ForwardTsnChunk((their_tsn + spec[1]) & 0xFFFFFFFF, spec[2])
    if kind == "reconfig":
        _, req, resp, last, streams = spec
        return c.ReconfigChunk([c.OutgoingResetRequest(
            (their_tsn + req) & 0xFFFFFFFF, (our_tsn + resp) & 0xFFFFFFFF,
            (their_tsn + last) & 0xFFFFFFFF, tuple(streams))])
    if kind == "response":
        return c.ReconfigChunk([c.ReconfigResponse((our_tsn + spec[1]) & 0xFFFFFFFF, spec[2])])
    _, ctype, flags, value = spec
    return c.UnknownChunk(ctype, flags, value)


@given(st.lists(_hostile_chunks, min_size=1, max_size=5), st.booleans())
@settings(max_examples=150, deadline=None)
def test_hostile_chunks_never_crash_the_association(packets, traffic):
    from darkswap_trio.proto.sctp_chunks import encode_packet

    pair = Pair(seed=3)
    pair.connect()
    if traffic:
        for i in range(5):
            pair.a.send(i % 2, 53, payload(i, 3000), pair.now)
            pair.b.send(i % 2, 53, payload(i, 3000), pair.now)
        pair.run_for(0.005)
    header = CommonHeader(5000, 5000, pair.b._local_tag)
    for specs in packets:
        chunks = [_hostile_chunk(spec, pair) for spec in specs]
        try:
            packet = encode_packet(header, chunks)
        except struct.error:
            continue  # a value our encoder cannot even represent
        pair.b.receive(packet, pair.now)
        pair.run_for(0.05)
    pair.run_for(5.0)
    for assoc in (pair.a, pair.b):
        stats = assoc.statistics()
        assert stats.flight_size >= 0 and stats.buffered_amount >= 0
        assert 0 <= stats.local_rwnd <= 2 << 20


# --- stateful property ------------------------------------------------------------------


class SctpPairMachine(RuleBasedStateMachine):
    """Random traffic, partial reliability, stream resets and link trouble.

    Invariants: nothing is delivered twice or invented, ordered reliable messages arrive
    in send order, partially reliable ones never overtake on ordered streams; at the end
    (link healed) every reliable message has arrived and every reset has completed.
    """

    @initialize(seed=st.integers(0, 10_000))
    def connect(self, seed):
        self.pair = Pair(seed=seed, reorder=0.3, a_kwargs={"heartbeat_interval": 2.0})
        self.pair.connect()

    def __init__(self):
        super().__init__()
        self.sent = {"a": [], "b": []}  # (sid, ordered, reliable, data) sent to that side
        self.resets = {"a": set(), "b": set()}  # outgoing streams being reset, by sender
        self.counter = 0
        self.blackout_total = 0.0

    def _note_completed_resets(self):
        for name in ("a", "b"):
            for event in self.pair.events[name]:
                if isinstance(event, OutgoingStreamsReset):
                    self.resets[name].difference_update(event.stream_ids)
            self.pair.events[name] = [
                e for e in self.pair.events[name] if not isinstance(e, OutgoingStreamsReset)
            ]

    @rule(
        src=st.sampled_from(["a", "b"]), sid=st.integers(0, 3),
        size=st.sampled_from([4, 50, 1160, 1161, 4000, 30_000]), ordered=st.booleans(),
        policy=st.sampled_from([None, None, None, ("max_retransmits", 0),
                                ("max_retransmits", 2), ("lifetime", 0.3)]),
    )
    def send(self, src, sid, size, ordered, policy):
        self._note_completed_resets()
        if sid in self.resets[src]:
            with pytest.raises(ValueError):
                self.pair.side(src).send(sid, 53, b"x", self.pair.now)
            return
        self.counter += 1
        data = payload(self.counter, size)
        kwargs = dict([policy]) if policy else {}
        self.pair.side(src).send(sid, 53, data, self.pair.now, ordered=ordered, **kwargs)
        self.sent["b" if src == "a" else "a"].append((sid, ordered, policy is None, data))

    @rule(src=st.sampled_from(["a", "b"]), sid=st.integers(0, 3))
    def reset(self, src, sid):
        self._note_completed_resets()
        self.pair.side(src).reset_streams([sid])
        self.resets[src].add(sid)

    @rule(loss=st.sampled_from([0.0, 0.1, 0.4]), dup=st.sampled_from([0.0, 0.2]))
    def change_link(self, loss, dup):
        for link in (self.pair.ab, self.pair.ba):
            link.loss, link.duplicate = loss, dup

    @precondition(lambda self: self.blackout_total < 10)  # longer and the peer is gone
    @rule(duration=st.sampled_from([0.5, 3.0]))
    def blackout(self, duration):
        self.pair.ab.up = self.pair.ba.up = False
        self.pair.run_for(duration)
        self.blackout_total += duration
        self.pair.ab.up = self.pair.ba.up = True

    @precondition(lambda self: self.pair.steps < MAX_STEPS // 2)
    @rule(duration=st.sampled_from([0.01, 0.1, 1.0]))
    def advance(self, duration):
        self.pair.run_for(duration)

    @invariant()
    def delivered_is_consistent(self):
        for name in ("a", "b"):
            assert self.pair.side(name).state is SctpState.ESTABLISHED
            got = [(m.stream_id, m.data) for m in self.pair.messages(name)]
            assert len(set(got)) == len(got)
            sent = self.sent[name]
            assert set(got) <= {(sid, data) for sid, _, _, data in sent}
            position = {data: i for i, (_, _, _, data) in enumerate(sent)}
            for sid in range(4):
                ordered = [position[d] for s, d in got if s == sid and sent[position[d]][1]]
                assert ordered == sorted(ordered)
                reliable = [i for i, (s, o, r, _) in enumerate(sent) if s == sid and o and r]
                seen = [i for i in ordered if i in set(reliable)]
                assert seen == reliable[: len(seen)]
        stats = self.pair.a.statistics()
        assert stats.flight_size >= 0 and stats.cwnd >= 1188

    def teardown(self):
        for link in (self.pair.ab, self.pair.ba):
            link.loss = link.duplicate = 0.0
            link.up = True

        def all_reliable_arrived():
            for name in ("a", "b"):
                got = {(m.stream_id, m.data) for m in self.pair.messages(name)}
                if any(r and (s, d) not in got for s, _, r, d in self.sent[name]):
                    return False
            return True

        self.pair.run_until(all_reliable_arrived, 600)
        self.pair.run_until(
            lambda: self.pair.a.buffered_amount() == self.pair.b.buffered_amount() == 0, 600
        )

        def resets_done():
            self._note_completed_resets()
            return not self.resets["a"] and not self.resets["b"]

        self.pair.run_until(resets_done, 600)


TestSctpPairMachine = SctpPairMachine.TestCase
TestSctpPairMachine.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)


# --- interoperability with aiortc's SCTP stack ------------------------------------------


class _FakeDtlsTransport:
    """Just enough of aiortc's RTCDtlsTransport for RTCSctpTransport: a datagram pipe."""

    def __init__(self, role: str, outbox):
        self.state = "connected"
        self._role = role
        self._outbox = outbox

    def _register_data_receiver(self, receiver):
        pass

    def _unregister_data_receiver(self, receiver):
        pass

    async def _send_data(self, data: bytes) -> None:
        self._outbox.put_nowait(data)


@pytest.mark.parametrize("we_init", [True, False])
def test_interop_with_aiortc(we_init):
    import asyncio

    from aiortc import RTCDataChannel, RTCDataChannelParameters, RTCSctpTransport

    big = payload(99, 200_000)

    async def scenario():
        loop = asyncio.get_running_loop()
        to_us: asyncio.Queue[bytes] = asyncio.Queue()
        theirs = RTCSctpTransport(_FakeDtlsTransport("server", to_us))
        ours = SctpAssociation(True, rng=random.Random(5))
        events = []
        if we_init:
            ours.connect(loop.time())
        channel = RTCDataChannel(theirs, RTCDataChannelParameters("x", negotiated=True, id=1))
        received = []
        channel.on("message", received.append)
        await theirs.start(theirs.getCapabilities(), 5000)

        async def pump(until):
            while not until():
                while (packet := ours.poll_transmit()) is not None:
                    await theirs._handle_data(packet)
                deadline = ours.poll_timeout()
                timeout = 0.05 if deadline is None else max(0.0, deadline - loop.time())
                getter = asyncio.ensure_future(to_us.get())
                done, _ = await asyncio.wait({getter}, timeout=min(timeout, 0.05))
                if done:
                    ours.receive(getter.result(), loop.time())
                else:
                    getter.cancel()
                    ours.handle_timeout(loop.time())
                while (event := ours.poll_event()) is not None:
                    events.append(event)

        await pump(lambda: ours.state is SctpState.ESTABLISHED and channel.readyState == "open")
        # aiortc -> us: small and large messages, in order.
        for i in range(20):
            channel.send(payload(i, 1000))
        channel.send(big)
        await pump(lambda: len([e for e in events if isinstance(e, MessageReceived)]) == 21)
        got = [e for e in events if isinstance(e, MessageReceived)]
        assert [e.data for e in got] == [payload(i, 1000) for i in range(20)] + [big]
        assert {(e.stream_id, e.ppid) for e in got} == {(1, 53)}
        # us -> aiortc.
        for i in range(20):
            ours.send(1, 53, payload(i, 3000), loop.time())
        ours.send(1, 53, big, loop.time())
        await pump(lambda: len(received) == 21)
        assert received == [payload(i, 3000) for i in range(20)] + [big]
        # aiortc closes the channel: a stream reset both ways.
        channel.close()
        await pump(lambda: StreamsReset((1,)) in events)
        ours.reset_streams([1])
        await pump(lambda: OutgoingStreamsReset((1,), True) in events)
        await pump(lambda: channel.readyState == "closed")
        # Heartbeat and graceful shutdown are understood too.
        ours.shutdown()
        await pump(lambda: ours.state is SctpState.TERMINATED)
        assert events[-1] == Closed("shutdown complete", graceful=True)
        await theirs.stop()

    asyncio.run(asyncio.wait_for(scenario(), 20))
