"""SctpAssociation pairs stepped in simulated time over a seeded virtual link."""

from __future__ import annotations

import random

import pytest

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
from darkswap_trio.proto.sctp._chunks import (
    CookieEchoChunk,
    DataChunk,
    ErrorChunk,
    ForwardTsnChunk,
    HeartbeatChunk,
    InitAckChunk,
    InitChunk,
    SackChunk,
    UnknownChunk,
)
from darkswap_trio.proto.sctp._packets import encode_packet
from darkswap_trio.testing._sctp_pair import SctpPair, data_chunks, numbered_payload, parse_ours

# --- association setup ------------------------------------------------------------------


def test_simultaneous_init_collision_establishes_once():
    pair = SctpPair()
    pair.connect(both=True)
    assert [type(e) for e in pair.events["a"]] == [Connected]
    assert [type(e) for e in pair.events["b"]] == [Connected]
    # Both sent INIT, and each answered the other's INIT with an INIT-ACK.
    assert sum(1 for p in pair.ab.sent if p[12] == 1) == 1
    assert sum(1 for p in pair.ab.sent if p[12] == 2) == 1


def test_single_init_passive_peer():
    pair = SctpPair()
    pair.connect(both=False)
    assert pair.a.state is pair.b.state is SctpState.ESTABLISHED
    assert all(p[12] != 1 for p in pair.ba.sent)  # b never sent INIT


def _checksum_is_zero(packet: bytes) -> bool:
    return packet[8:12] == b"\x00\x00\x00\x00"


@pytest.mark.parametrize("both", [True, False], ids=["init-collision", "passive-peer"])
def test_zero_checksums_once_both_announce_them(both):
    """RFC 9653 with DTLS: INIT (and INIT-ACK) keep their CRC32c; once each side knows
    the other accepts zero, both use it (the passive side learns it from its cookie)."""
    pair = SctpPair()
    pair.connect(both=both)
    pair.a.send(1, 51, b"x" * 3000, pair.now)
    pair.b.send(1, 51, b"y" * 3000, pair.now)
    pair.run_until(lambda: pair.messages("a") and pair.messages("b"))
    for link in (pair.ab, pair.ba):
        setup = [p for p in link.sent if p[12] in (1, 2)]
        assert setup and not any(_checksum_is_zero(p) for p in setup)
        data = [p for p in link.sent if any(type(c) is DataChunk for c in parse_ours(p)[1])]
        assert len(data) >= 3 and all(_checksum_is_zero(p) for p in data)


@pytest.mark.parametrize("refuser", ["a", "b"])
def test_no_zero_checksums_unless_both_announce_them(refuser):
    """A peer that does not announce RFC 9653 (aiortc, older browsers) gets real CRCs,
    and one that did not announce it drops zero-checksum packets."""
    kwargs = {"zero_checksum": False}
    pair = SctpPair(**{f"{refuser}_kwargs": kwargs})
    pair.connect()
    pair.a.send(1, 51, b"x" * 3000, pair.now)
    pair.run_until(lambda: pair.messages("b"))
    assert pair.messages("b")[0].data == b"x" * 3000
    assert not any(_checksum_is_zero(p) for p in pair.ab.sent + pair.ba.sent)
    refusing = pair.side(refuser)
    packet = pair.ab.sent[-1] if refuser == "b" else pair.ba.sent[-1]
    zeroed = packet[:8] + b"\x00\x00\x00\x00" + packet[12:]
    received = refusing.statistics().packets_received
    refusing.receive(zeroed, pair.now)
    assert refusing.statistics().packets_received == received  # dropped as corrupt


@pytest.mark.parametrize("seed", range(4))
def test_handshake_survives_loss(seed):
    pair = SctpPair(seed=seed, loss=0.3, duplicate=0.2, reorder=0.5)
    pair.connect(both=seed % 2 == 0)
    pair.a.send(1, 51, b"hello", pair.now)
    pair.run_until(lambda: pair.messages("b"))
    assert pair.messages("b") == [MessageReceived(1, 51, b"hello")]


def test_forged_or_stale_cookie_is_ignored():
    pair = SctpPair()
    pair.a.connect(0.0)
    pair.flush()
    init = pair.ab.pop_due(1.0)
    pair.b.receive(init[0], 1.0)
    init_ack = pair.b.poll_transmit()
    pair.a.receive(init_ack, 1.0)
    echo = pair.a.poll_transmit()
    header, (chunk,) = parse_ours(echo)
    assert isinstance(chunk, CookieEchoChunk)
    # A cookie with one bit changed (valid CRC): the HMAC rejects it, b keeps no state.
    forged = bytearray(chunk.cookie)
    forged[5] ^= 1
    pair.b.receive(encode_packet(header, [CookieEchoChunk(bytes(forged))]), 1.5)
    assert pair.b.state is SctpState.CLOSED and pair.b.poll_transmit() is None
    # The genuine cookie, 200 s later: past its 60 s lifetime.
    pair.b.receive(echo, 200.0)
    assert pair.b.state is SctpState.CLOSED
    # The genuine cookie in time establishes the association.
    pair.b.receive(echo, 1.5)
    assert pair.b.state is SctpState.ESTABLISHED


def test_garbage_packets_are_ignored():
    pair = SctpPair()
    pair.connect()
    rng = random.Random(7)
    for _ in range(200):
        pair.b.receive(rng.randbytes(rng.randrange(0, 300)), pair.now)
    pair.a.send(0, 51, b"still fine", pair.now)
    pair.run_until(lambda: pair.messages("b"))


# --- data transfer ----------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 1159, 1160, 1161, 5000, 100_000, 262_144])
def test_message_sizes_arrive_intact(size):
    pair = SctpPair()
    pair.connect()
    pair.a.send(3, 53, numbered_payload(1, size), pair.now)
    pair.b.send(4, 53, numbered_payload(2, size), pair.now)
    pair.run_until(lambda: pair.messages("a") and pair.messages("b"))
    assert pair.messages("b") == [MessageReceived(3, 53, numbered_payload(1, size))]
    assert pair.messages("a") == [MessageReceived(4, 53, numbered_payload(2, size))]
    pair.run_until(lambda: pair.a.buffered_amount() == pair.b.buffered_amount() == 0)


def test_oversized_and_empty_messages_are_refused():
    pair = SctpPair()
    with pytest.raises(ValueError):
        pair.a.send(0, 53, bytes(262_145), 0.0)
    with pytest.raises(ValueError):
        pair.a.send(0, 53, b"", 0.0)


def test_ordered_streams_deliver_in_order_over_reordering_link():
    pair = SctpPair(seed=3, reorder=0.5)
    pair.connect()
    sent = {sid: [numbered_payload(i, 100 + 37 * i) for i in range(60)] for sid in (1, 2, 5)}
    for i in range(60):
        for sid, messages in sent.items():
            pair.a.send(sid, 53, messages[i], pair.now)
    pair.run_until(lambda: len(pair.messages("b")) == 180)
    for sid, messages in sent.items():
        assert [m.data for m in pair.messages("b") if m.stream_id == sid] == messages


def test_streams_take_turns():
    pair = SctpPair()
    pair.connect()
    for i in range(50):
        pair.a.send(1, 53, numbered_payload(i, 16_384), pair.now)
    pair.a.send(2, 51, b"chat", pair.now)
    pair.run_until(lambda: len(pair.messages("b")) == 51)
    order = [m.stream_id for m in pair.messages("b")]
    assert order.index(2) <= 1  # not behind the whole bulk transfer


def test_unordered_messages_all_arrive():
    pair = SctpPair(seed=4, reorder=0.8)
    pair.connect()
    sent = [numbered_payload(i, 700) for i in range(100)]
    for m in sent:
        pair.a.send(9, 51, m, pair.now, ordered=False)
    pair.run_until(lambda: len(pair.messages("b")) == 100)
    got = [m.data for m in pair.messages("b")]
    assert sorted(got) == sorted(sent)
    assert got != sent  # reordering really happened and unordered did not wait


@pytest.mark.parametrize("seed", range(3))
def test_lossy_link_delivers_every_reliable_message_exactly_once(seed):
    pair = SctpPair(seed=seed, loss=0.2, duplicate=0.1, reorder=0.3)
    pair.connect()
    rng = random.Random(seed)
    expected = {"a": [], "b": []}
    for i in range(150):
        src, dst = ("a", "b") if i % 3 else ("b", "a")
        sid = rng.choice([0, 1, 2])
        data = numbered_payload(i, rng.choice([10, 900, 3000, 20_000]))
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
    pair = SctpPair(
        seed=5,
        loss=0.1,
        reorder=0.3,
        a_kwargs={"initial_tsn": 0xFFFFFFF0},
        b_kwargs={"initial_tsn": 0xFFFFFFFF},
    )
    pair.connect()
    sent = [numbered_payload(i, 2500) for i in range(40)]
    for m in sent:
        pair.a.send(0, 53, m, pair.now)
        pair.b.send(0, 53, m, pair.now)
    pair.run_until(lambda: len(pair.messages("b")) == len(pair.messages("a")) == 40, 300)
    assert [m.data for m in pair.messages("b")] == sent
    assert [m.data for m in pair.messages("a")] == sent


def test_delayed_sack_for_a_lone_packet():
    pair = SctpPair(delay=0.05)
    pair.connect()
    pair.ba.sent.clear()
    pair.a.send(0, 51, b"x", pair.now)
    sent_at = pair.now
    pair.run_until(lambda: any(p[12] == 3 for p in pair.ba.sent))
    # Arrives after 50 ms, acknowledged by the 200 ms delayed-SACK timer.
    assert pair.now - sent_at == pytest.approx(0.25)


def test_small_messages_share_packets_and_sacks_ride_on_data():
    pair = SctpPair(delay=0.02)
    pair.connect()
    pair.ab.sent.clear()
    pair.ba.sent.clear()
    for i in range(50):
        pair.a.send(0, 51, numbered_payload(i, 40), pair.now)
    pair.run_until(lambda: len(pair.messages("b")) == 50)
    assert len(data_chunks(pair.ab.sent)) == 50
    assert len(pair.ab.sent) <= 3

    # The receiver answers each message as it arrives: its SACK rides on the reply.
    def reply(name, event):
        if name == "b" and isinstance(event, MessageReceived):
            pair.b.send(1, 51, b"ok", pair.now)

    pair.on_event = reply
    pair.ba.sent.clear()
    for i in range(30):
        pair.a.send(0, 53, numbered_payload(i, 10_000), pair.now)
    pair.run_until(lambda: len(pair.messages("a")) == 30)
    kinds = [{type(c) for c in parse_ours(p)[1]} for p in pair.ba.sent]
    with_data = [k for k in kinds if DataChunk in k]
    assert len(with_data) >= 5
    assert sum(1 for k in with_data if SackChunk in k) >= len(with_data) // 2


@pytest.mark.parametrize(("batch", "max_packets_per_sack"), [(1, 2), (16, 2), (16, None)])
def test_sack_every_second_packet(batch, max_packets_per_sack):
    kwargs = {"max_packets_per_sack": max_packets_per_sack}
    a = SctpAssociation(True, rng=random.Random(1), **kwargs)
    b = SctpAssociation(False, rng=random.Random(2), **kwargs)
    a.connect(0.0)
    for _ in range(4):  # handshake, no loss
        for src, dst in ((a, b), (b, a)):
            while (p := src.poll_transmit()) is not None:
                dst.receive(p, 0.0)
    for _ in range(4):
        a.send(0, 53, bytes(100_000), 0.0)
    data_packets = sacks = 0
    now = 0.0
    while b.poll_event() is None or data_packets < 10:
        now += 0.001
        burst = []
        while (p := a.poll_transmit()) is not None:
            burst.append(p)
        # b takes ``batch`` packets before polling its output, as a batching driver does.
        for start in range(0, len(burst), batch):
            for packet in burst[start : start + batch]:
                data_packets += 1
                b.receive(packet, now)
            while (p := b.poll_transmit()) is not None:
                sacks += 1
                a.receive(p, now)
    assert data_packets >= 80
    if max_packets_per_sack is None:
        assert sacks <= data_packets // 10  # one stretch SACK per batch
    else:
        assert data_packets // 2 - 2 <= sacks <= data_packets // 2 + 2


# --- partial reliability ----------------------------------------------------------------


def test_max_retransmits_zero_is_never_retransmitted():
    pair = SctpPair(seed=11, loss=0.25, reorder=0.2)
    pair.connect()
    for i in range(100):
        pair.a.send(7, 53, numbered_payload(i, 1500), pair.now, max_retransmits=0)
    pair.a.send(1, 53, b"reliable tail", pair.now)

    def settled():
        # Every message is delivered or abandoned (a message can be both: its chunk
        # arrived but the SACK saying so did not, so the sender gave up on it).
        delivered = sum(1 for m in pair.messages("b") if m.stream_id == 7)
        return delivered + pair.a.statistics().abandoned_messages >= 100

    pair.run_until(lambda: any(m.stream_id == 1 for m in pair.messages("b")) and settled(), 300)
    tsns = [c.tsn for c in data_chunks(pair.ab.sent) if c.stream_id == 7]
    # Two fragments each, each sent at most once (a message whose first fragment was lost
    # is abandoned whole, so its second fragment may never leave).
    assert 150 <= len(tsns) == len(set(tsns)) <= 200
    got = [m.data for m in pair.messages("b") if m.stream_id == 7]
    assert 0 < len(got) < 100  # some lost for good, the rest intact and in order
    assert got == sorted(got, key=lambda d: int.from_bytes(d[:4], "big"))
    assert all(d == numbered_payload(int.from_bytes(d[:4], "big"), 1500) for d in got)
    assert any(isinstance(c, ForwardTsnChunk) for p in pair.ab.sent for c in parse_ours(p)[1])
    # Fragments of abandoned messages do not linger in the receiver's window.
    pair.run_for(5.0)
    assert pair.b.statistics().local_rwnd == 1 << 20
    assert pair.a.buffered_amount() == pair.a.statistics().flight_size == 0


def test_expired_lifetime_is_abandoned_and_skipped():
    pair = SctpPair(seed=12)
    pair.connect()
    pair.ab.up = False  # everything sent now is lost
    for i in range(5):
        pair.a.send(2, 53, numbered_payload(i, 3000), pair.now, lifetime=0.5)
    # Down past the lifetime: the handshake's RTT sample makes the RTO 0.4 s, so a
    # retransmission before then would still be in time.
    pair.run_for(0.6)
    pair.ab.up = True
    pair.run_for(2.0)
    pair.a.send(2, 53, b"after", pair.now)
    pair.a.send(3, 53, b"never sent, expired", pair.now, lifetime=0.0)
    pair.run_until(lambda: pair.messages("b"))
    assert pair.messages("b") == [MessageReceived(2, 53, b"after")]
    assert pair.a.statistics().abandoned_messages == 6
    assert any(isinstance(c, ForwardTsnChunk) for p in pair.ab.sent for c in parse_ours(p)[1])
    pair.run_until(lambda: pair.a.buffered_amount() == 0)


# --- stream reset, heartbeat, teardown --------------------------------------------------


def test_stream_reset_after_pending_data():
    pair = SctpPair(seed=13, loss=0.2, reorder=0.3)
    pair.connect()
    for i in range(20):
        pair.a.send(4, 53, numbered_payload(i, 2000), pair.now)
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
    pair = SctpPair(delay=0.05, a_kwargs={"heartbeat_interval": 1.0})
    pair.connect()
    pair.run_for(3.0)
    rtt = pair.a.statistics().heartbeat_rtt
    assert rtt is not None and rtt == pytest.approx(0.1)
    assert pair.a.statistics().srtt == pytest.approx(0.1, rel=0.5)


def test_shutdown_delivers_queued_data_first():
    pair = SctpPair(seed=14, loss=0.1)
    pair.connect()
    for i in range(10):
        pair.a.send(0, 53, numbered_payload(i, 4000), pair.now)
    pair.a.shutdown()
    with pytest.raises(ValueError):
        pair.a.send(0, 53, b"late", pair.now)
    pair.run_until(lambda: pair.a.state is pair.b.state is SctpState.TERMINATED, 300)
    assert len(pair.messages("b")) == 10
    assert pair.events["a"][-1] == Closed("shutdown complete", graceful=True)
    assert pair.events["b"][-1] == Closed("shutdown complete", graceful=True)
    assert pair.a.poll_timeout() is None and pair.b.poll_timeout() is None


def test_abort_closes_both_sides():
    pair = SctpPair()
    pair.connect()
    pair.a.abort("user went away")
    pair.run_until(lambda: pair.b.state is SctpState.TERMINATED)
    closed = pair.events["b"][-1]
    assert isinstance(closed, Closed) and not closed.graceful
    assert "user went away" in closed.reason
    assert isinstance(pair.events["a"][-1], Closed)


@pytest.mark.parametrize("seed", range(4))
def test_shutdown_under_loss_and_from_both_sides(seed):
    pair = SctpPair(seed=seed, loss=0.2, duplicate=0.1, reorder=0.3)
    pair.connect()
    for i in range(10):
        pair.a.send(0, 53, numbered_payload(i, 3000), pair.now)
        pair.b.send(0, 53, numbered_payload(i, 3000), pair.now)
    pair.a.shutdown()
    if seed % 2:
        pair.b.shutdown()  # simultaneous shutdown (RFC 9260 9.2)
    pair.run_until(lambda: pair.a.state is pair.b.state is SctpState.TERMINATED, 600)
    assert len(pair.messages("a")) == len(pair.messages("b")) == 10
    assert pair.events["a"][-1].graceful and pair.events["b"][-1].graceful


@pytest.mark.parametrize("budget", [500, 1161, 1162, 1163])
def test_small_packet_budget_is_respected(budget):
    """Also budgets that are not a multiple of 4: chunk padding must not overshoot."""
    kwargs = {"max_packet_size": budget}
    pair = SctpPair(seed=8, loss=0.1, a_kwargs=kwargs, b_kwargs=kwargs)
    pair.connect()
    data = numbered_payload(1, 50_000)
    pair.a.send(0, 53, data, pair.now)
    pair.b.send(0, 53, data, pair.now)
    pair.run_until(lambda: pair.messages("a") and pair.messages("b"), 300)
    assert pair.messages("b")[0].data == pair.messages("a")[0].data == data
    assert max(len(p) for p in pair.ab.sent + pair.ba.sent) <= budget


def test_oversized_heartbeat_echo_does_not_block_the_association():
    pair = SctpPair()
    pair.connect()
    header = parse_ours(pair.ab.sent[-1])[0]  # a's header, b's tag
    pair.b.receive(encode_packet(header, [HeartbeatChunk(bytes(3000))]), pair.now)
    pair.b.send(0, 53, b"still flowing", pair.now)
    pair.run_until(lambda: pair.messages("a"))


@pytest.mark.parametrize(
    ("chunk_type", "data_processed", "reported"),
    [(0x3F, False, False), (0x7F, False, True), (0xBF, True, False), (0xFF, True, True)],
)
def test_unknown_chunk_types_follow_their_action_bits(chunk_type, data_processed, reported):
    pair = SctpPair()
    pair.connect()
    pair.ba.sent.clear()
    header = parse_ours(pair.ab.sent[-1])[0]
    # No data sent yet, so the next TSN from a is its initial TSN.
    init = next(
        c for p in pair.ab.sent for c in parse_ours(p)[1] if isinstance(c, InitChunk | InitAckChunk)
    )
    unknown = UnknownChunk(chunk_type, 0, b"????")
    data = DataChunk(init.initial_tsn, 0, 0, 53, b"payload")
    pair.b.receive(encode_packet(header, [unknown, data]), pair.now)
    pair.run_for(1.0)
    assert (pair.messages("b") != []) is data_processed
    errors = [c for p in pair.ba.sent for c in parse_ours(p)[1] if isinstance(c, ErrorChunk)]
    assert (errors != []) is reported
    if reported:
        assert errors[0].causes[0][0] == 6  # Unrecognized Chunk Type


def test_packets_for_other_ports_are_ignored():
    pair = SctpPair(b_kwargs={"local_port": 5001})
    pair.a.connect(pair.now)
    pair.run_for(0.5)  # a talks to port 5000: b never answers
    assert pair.b.state is SctpState.CLOSED
    assert pair.ba.sent == []


def test_unreachable_peer_fails_the_association():
    pair = SctpPair(a_kwargs={"max_retransmissions": 3})
    pair.connect()
    pair.ab.up = pair.ba.up = False
    pair.a.send(0, 53, b"into the void", pair.now)
    pair.run_until(lambda: pair.a.state is SctpState.TERMINATED, 600)
    assert "retransmissions" in pair.events["a"][-1].reason


# --- flow control -----------------------------------------------------------------------


def test_receive_window_backpressure():
    window = 200_000
    pair = SctpPair(b_kwargs={"receive_window": window, "max_message_size": 65536})
    pair.connect()
    pair.drain["b"] = False
    for i in range(60):
        pair.a.send(0, 53, numbered_payload(i, 20_000), pair.now)
    pair.run_for(30.0)
    assert pair.b.statistics().local_rwnd == 0
    held = pair.b.statistics().messages_received * 20_000
    assert window <= held + 20_000 and held <= window + 20_000
    assert pair.a.buffered_amount() > 0
    pair.drain["b"] = True
    pair.run_until(lambda: len(pair.messages("b")) == 60, 300)
    assert [m.data for m in pair.messages("b")] == [numbered_payload(i, 20_000) for i in range(60)]


def test_buffered_amount_low_event():
    pair = SctpPair()
    pair.connect()
    pair.a.set_buffered_amount_low_threshold(0, 10_000)
    pair.a.send(0, 53, bytes(50_000), pair.now)
    assert pair.a.buffered_amount(0) == 50_000
    pair.run_until(lambda: pair.a.buffered_amount(0) == 0)
    assert pair.events["a"].count(BufferedAmountLow(0)) == 1
