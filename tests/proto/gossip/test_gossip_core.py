"""GossipCore unit behaviour: gossip repair, validation, graylisting, GRAFT/PRUNE, bounds."""

import random
from dataclasses import replace

import pytest

from darkswap_trio.proto.gossip import GossipConfig, GossipCore
from darkswap_trio.proto.gossip.wire import (
    GRAFT,
    IHAVE,
    PRUNE,
    SUBSCRIBE,
    Control,
    encode_control,
    encode_frame,
    parse_frame_untrusted,
)
from darkswap_trio.proto.identity import Keypair

KEYS = [Keypair.from_seed(bytes([i + 1]) * 32) for i in range(20)]


def make(i, **overrides):
    config = replace(GossipConfig(), **overrides)
    return GossipCore(KEYS[i], config, rng=random.Random(i), seqno_start=i << 40)


def pump(cores, now=0.0):
    """Deliver every pending frame between ``cores`` (by peer name) until quiet."""
    by_name = {c.local_peer: c for c in cores}
    moved = True
    while moved:
        moved = False
        for core in cores:
            while (out := core.poll_transmit()) is not None:
                peer, frame = out
                if peer in by_name:
                    by_name[peer].handle_message(core.local_peer, frame, now)
                    moved = True


def link(a, b):
    a.peer_connected(b.local_peer)
    b.peer_connected(a.local_peer)


def events(core):
    out = []
    while (event := core.poll_event()) is not None:
        out.append(event)
    return out


def records_to(core, peer):
    out = []
    while (item := core.poll_transmit()) is not None:
        if item[0] == peer:
            out.extend(parse_frame_untrusted(item[1]))
    return out


def test_publish_reaches_subscribers_once_and_not_publisher():
    a, b, c = make(0), make(1), make(2)
    for x, y in ((a, b), (b, c), (a, c)):
        link(x, y)
    for core in (a, b, c):
        core.subscribe("t")
    pump([a, b, c])
    message_id, handed = a.publish("t", b"order", 1.0)
    assert handed == 2
    pump([a, b, c], 1.0)
    assert [e.data for e in events(b)] == [b"order"] and [e.data for e in events(c)] == [b"order"]
    assert events(a) == []
    assert b.statistics.delivered == c.statistics.delivered == 1


def test_non_subscriber_gets_nothing_and_publish_counts_no_peers():
    a, b = make(0), make(1)
    link(a, b)
    pump([a, b])
    assert a.publish("t", b"x", 0.0)[1] == 0
    b.subscribe("u")
    pump([a, b])
    assert a.publish("t", b"x", 0.0)[1] == 0 and events(b) == []


def test_ihave_iwant_repairs_what_the_mesh_missed():
    a, b, c = (
        make(0, d=1, d_lo=1, d_hi=2),
        make(1, d=1, d_lo=1, d_hi=2),
        make(2, d=1, d_lo=1, d_hi=2),
    )
    link(a, b)
    link(b, c)
    a.subscribe("t")
    b.subscribe("t")
    pump([a, b, c])
    c.subscribe("t")  # b's mesh already holds a (d_lo reached): c only gets gossip
    pump([a, b, c])
    b.mesh["t"] = {a.local_peer}
    c.mesh["t"] = set()
    a.publish("t", b"m", 1.0)
    pump([a, b, c], 1.0)
    assert len(events(b)) == 1 and events(c) == []
    b.heartbeat(2.0)
    c.mesh["t"] = set()  # keep c outside while the repair runs
    pump([a, b, c], 2.0)
    got = events(c)
    assert [e.data for e in got] == [b"m"] and got[0].from_ == a.local_peer
    assert (
        b.statistics.ihave_sent >= 1
        and c.statistics.iwant_sent == 1
        and b.statistics.iwant_served == 1
    )


def test_validator_reject_and_ignore():
    a, b, c = make(0), make(1), make(2)
    link(a, b)
    link(b, c)
    verdicts = iter(["reject", "ignore", "accept"])
    a.subscribe("t")
    b.subscribe("t", validator=lambda message: next(verdicts))
    c.subscribe("t")
    pump([a, b, c])
    for data in (b"1", b"2", b"3"):
        a.publish("t", data, 0.0)
    pump([a, b, c])
    assert [e.data for e in events(b)] == [b"3"]
    assert [e.data for e in events(c)] == [b"3"]  # rejected/ignored ones are not forwarded
    assert b.statistics.rejected == 1 and b.statistics.ignored == 1
    assert b.peers[a.local_peer].penalty == 1


def test_forged_messages_graylist_the_forwarder():
    a, b = make(0, graylist_threshold=3), make(1, graylist_threshold=3)
    link(a, b)
    a.subscribe("t")
    b.subscribe("t")
    pump([a, b])
    for i in range(4):
        a.publish("t", b"x%d" % i, 0.0)
        peer, frame = a.poll_transmit()
        forged = frame[:-1] + bytes([frame[-1] ^ 1])  # flip a bit of the signature
        b.handle_message(a.local_peer, forged, 0.0)
    assert events(b) == []
    assert b.statistics.invalid_signature == 3 and b.statistics.graylisted_frames == 1
    assert a.local_peer not in b.mesh["t"]
    b.handle_message(a.local_peer, b"\x01garbage", 0.0)
    assert b.statistics.malformed_frames == 0  # graylisted: not even parsed


def test_malformed_frame_counted():
    a, b = make(0), make(1)
    link(a, b)
    b.handle_message(a.local_peer, b"\x07", 0.0)
    assert b.statistics.malformed_frames == 1 and b.peers[a.local_peer].penalty == 1


def test_graft_when_unsubscribed_or_backed_off_is_pruned():
    a, b = make(0), make(1)
    link(a, b)
    frame = encode_frame([encode_control(Control(GRAFT, "t"))])
    b.handle_message(a.local_peer, frame, 0.0)
    assert [r.kind for r in records_to(b, a.local_peer)] == [PRUNE]
    b.subscribe("t")
    b.handle_message(
        a.local_peer, encode_frame([encode_control(Control(PRUNE, "t", backoff=30))]), 0.0
    )
    records_to(b, a.local_peer)
    b.handle_message(a.local_peer, frame, 10.0)  # inside the backoff it asked for
    assert [r.kind for r in records_to(b, a.local_peer)] == [PRUNE] and a.local_peer not in b.mesh[
        "t"
    ]
    b.handle_message(a.local_peer, frame, 71.0)  # our PRUNE at 10.0 backed off 60 s
    assert a.local_peer in b.mesh["t"]


def test_mesh_trimmed_to_d_after_heartbeat():
    hub = make(0)
    others = [make(i) for i in range(1, 18)]
    hub.subscribe("t")
    for core in others:
        link(hub, core)
        core.subscribe("t")
    pump([hub, *others])
    assert hub.config.d_lo <= len(hub.mesh["t"])
    for core in others:  # everyone grafts the hub
        hub.handle_message(
            core.local_peer, encode_frame([encode_control(Control(GRAFT, "t"))]), 0.0
        )
    assert len(hub.mesh["t"]) <= hub.config.d_hi
    hub.mesh["t"] = {c.local_peer for c in others}  # as if accepted above d_hi
    hub.heartbeat(1.0)
    assert len(hub.mesh["t"]) == hub.config.d


def test_bounds_on_outgoing_and_ihave():
    a, b = make(0, max_pending_bytes=1000, max_ihave_ids=5), make(1)
    link(a, b)
    b.subscribe("t")
    a.handle_message(b.local_peer, b.poll_transmit()[1], 0.0)
    for _ in range(20):
        a.publish("t", bytes(100), 0.0)
    assert a.statistics.dropped_outgoing > 0
    ids = tuple(bytes([i]) * 20 for i in range(50))
    a.subscribe("t")
    records_to(a, b.local_peer)
    a.handle_message(
        b.local_peer, encode_frame([encode_control(Control(IHAVE, "t", ids=ids))]), 0.0
    )
    (iwant,) = records_to(a, b.local_peer)
    assert len(iwant.ids) == 5
    with pytest.raises(ValueError):
        a.publish("t", bytes(a.config.max_data_size + 1), 0.0)
    with pytest.raises(ValueError):
        a.subscribe("")


def test_frames_packed_up_to_max_frame_size():
    a, b = make(0, max_frame_size=700), make(1)
    link(a, b)
    b.subscribe("t")
    a.handle_message(b.local_peer, b.poll_transmit()[1], 0.0)
    for _ in range(10):
        a.publish("t", bytes(200), 0.0)
    frames = []
    while (out := a.poll_transmit()) is not None:
        frames.append(out[1])
    assert len(frames) == 5 and all(len(f) <= 700 for f in frames)
    for frame in frames:
        b.handle_message(a.local_peer, frame, 0.0)
    assert len(events(b)) == 10


def test_peer_state_is_bounded():
    a, b = make(0, max_peer_topics=3), make(1)
    link(a, b)
    frame = encode_frame(
        [encode_control(Control(SUBSCRIBE, f"t{i}")) for i in range(10)]
        + [encode_control(Control(PRUNE, f"u{i}", backoff=65535)) for i in range(10)]
    )
    a.handle_message(b.local_peer, frame, 0.0)
    assert len(a.peers[b.local_peer].topics) == 3
    assert a.statistics.ignored_subscriptions == 7
    assert a._backoff == {}  # PRUNEs for topics we do not subscribe to leave no state
