"""GossipCores over simulated peers, in simulated time, with link loss and churn.

The transport the cores run on in the SDK is a PeerLink: reliable and ordered, so a
lost frame means a broken link. The simulation models loss that way: a frame lost
on a link tears the link down (frames in flight on it are lost too) and the link
comes back later, as PeerLink recovery or a redial would bring it. Churn adds link
cuts, subscribe/unsubscribe and a killed peer, and a forger injects messages with
bad signatures. Churn never disconnects a topic's live subscribers from each other
(gossipsub cannot deliver across a partition longer than its gossip window), which
is what makes "eventually" provable. Checked: every live peer subscribed from before
a publish (plus a settle time) to the end receives that message exactly once;
non-subscribers receive nothing; forged messages are never delivered; right after
each heartbeat every mesh is within bounds (at least d_lo unless no eligible peer is
left, at most d_hi).
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import replace

import pytest
from hypothesis import event as note_event
from hypothesis import given, settings, target
from hypothesis import strategies as st

from darkswap_trio.proto.gossip import GossipConfig, GossipCore
from darkswap_trio.proto.gossip.wire import (
    PUBLISH,
    Message,
    encode_frame,
    encode_record,
    signed_bytes,
)
from darkswap_trio.proto.identity import Keypair

TOPICS = ("a", "b")
SETTLE = 1.0  # a new subscription is known to every neighbour after this
MAX_DELAY = 0.05
LOSS_OUTAGE = 1.5  # seconds; the gossip window is 3 heartbeats of 1 s


class Sim:
    def __init__(self, n: int, seed: int, loss: float, config: GossipConfig) -> None:
        self.rng = random.Random(seed)
        self.now = 0.0
        self.loss = loss
        self.keys = [Keypair.from_seed(bytes([i + 1]) * 32) for i in range(n)]
        self.names = [str(k.peer_id) for k in self.keys]
        self.cores = {
            name: GossipCore(key, config, rng=random.Random(seed * 100 + i), seqno_start=i << 32)
            for i, (name, key) in enumerate(zip(self.names, self.keys, strict=True))
        }
        self.alive = set(self.names)
        self.links: set[frozenset[str]] = set()
        self.epoch: dict[frozenset[str], int] = {}
        self.queue: list = []
        self.seq = itertools.count()
        self.subscribed_since: dict[tuple[str, str], float] = {}
        self.history: dict[tuple[str, str], list[tuple[float, float | None]]] = {}
        self.published: dict[bytes, tuple[str, str, bytes, float]] = {}
        self.received: dict[str, list] = {name: [] for name in self.names}
        self.mesh_violations: list[str] = []
        self.unreachable: set[bytes] = set()
        for a, b in itertools.combinations(self.names, 2):
            self.connect(a, b)

    # -- links --
    def connect(self, a: str, b: str) -> None:
        key = frozenset((a, b))
        if key in self.links or a not in self.alive or b not in self.alive:
            return
        self.links.add(key)
        self.epoch[key] = self.epoch.get(key, 0) + 1
        self.cores[a].peer_connected(b)
        self.cores[b].peer_connected(a)
        self.flush(a)
        self.flush(b)

    def disconnect(self, a: str, b: str, back_within: float = 3.0) -> None:
        key = frozenset((a, b))
        if key not in self.links:
            return
        self.links.discard(key)
        self.epoch[key] += 1
        self.cores[a].peer_disconnected(b)
        self.cores[b].peer_disconnected(a)
        self.at(self.now + self.rng.uniform(0.2, back_within), "connect", a, b)

    def at(self, when: float, *action) -> None:
        heapq.heappush(self.queue, (when, next(self.seq), action))

    def flush(self, name: str) -> None:
        core = self.cores[name]
        while (out := core.poll_transmit()) is not None:
            peer, frame = out
            key = frozenset((name, peer))
            if key not in self.links:
                continue
            if self.rng.random() < self.loss:
                # A lost frame breaks the link; it is back within the gossip window
                # (PeerLink recovery or a redial).
                self.disconnect(name, peer, back_within=LOSS_OUTAGE)
                continue
            self.at(
                self.now + self.rng.uniform(0.001, MAX_DELAY),
                "deliver",
                name,
                peer,
                frame,
                self.epoch[key],
            )
        while (event := core.poll_event()) is not None:
            self.received[name].append((self.now, event))

    # -- connectivity rule --
    def subscribers(self, topic: str, without: str | None = None) -> set[str]:
        return {n for n in self.alive if n != without and topic in self.cores[n].subscriptions}

    def connected(self, nodes: set[str], links: set) -> bool:
        if len(nodes) <= 1:
            return True
        start = next(iter(nodes))
        seen, todo = {start}, [start]
        while todo:
            node = todo.pop()
            for other in nodes - seen:
                if frozenset((node, other)) in links:
                    seen.add(other)
                    todo.append(other)
        return seen == nodes

    def safe_without_link(self, a: str, b: str) -> bool:
        links = self.links - {frozenset((a, b))}
        return all(self.connected(self.subscribers(t), links) for t in TOPICS)

    # -- actions --
    def subscribe(self, name: str, topic: str) -> None:
        core = self.cores[name]
        if topic in core.subscriptions or name not in self.alive:
            return
        core.subscribe(topic)
        self.history.setdefault((name, topic), []).append((self.now, None))
        self.flush(name)

    def unsubscribe(self, name: str, topic: str) -> None:
        core = self.cores[name]
        if topic not in core.subscriptions or not self.connected(
            self.subscribers(topic, name), self.links
        ):
            return
        core.unsubscribe(topic)
        start, _ = self.history[(name, topic)][-1]
        self.history[(name, topic)][-1] = (start, self.now)
        self.flush(name)

    def kill(self, name: str) -> None:
        links = {link for link in self.links if name not in link}
        if not all(self.connected(self.subscribers(t, name), links) for t in TOPICS):
            return
        for other in list(self.alive - {name}):
            self.disconnect(name, other)
        self.alive.discard(name)

    def publish(self, name: str, topic: str) -> None:
        if name not in self.alive:
            return
        data = f"{name[-6:]}:{len(self.published)}".encode()
        message_id, handed = self.cores[name].publish(topic, data, self.now)
        self.published[message_id] = (name, topic, data, self.now)
        if not handed:  # no subscriber reachable: the SDK's publish can raise for that
            self.unreachable.add(message_id)
        self.flush(name)

    def forge(self, name: str, target: str, topic: str) -> None:
        # A message claiming to come from a live publisher, signed by someone else.
        if frozenset((name, target)) not in self.links:
            return
        victim = self.keys[0].peer_id.multihash
        data = b"forged"
        wrong = self.keys[-1].sign(signed_bytes(victim, 999_999, topic, data))
        frame = encode_frame(
            [encode_record(PUBLISH, Message(victim, 999_999, topic, data, wrong).encode())]
        )
        self.at(
            self.now + 0.01, "deliver", name, target, frame, self.epoch[frozenset((name, target))]
        )

    def run_until(self, end: float) -> None:
        while True:
            timers = [
                (core.poll_timeout(), name)
                for name, core in self.cores.items()
                if name in self.alive
            ]
            when, name = min(timers)
            if self.queue and self.queue[0][0] <= when:
                when = self.queue[0][0]
                if when > end:
                    break
                _, _, action = heapq.heappop(self.queue)
                self.now = when
                self.apply(action)
            else:
                if when > end:
                    break
                self.now = when
                core = self.cores[name]
                core.handle_timeout(self.now)
                self.check_mesh(name)
                self.flush(name)
        self.now = end

    def apply(self, action) -> None:
        kind, *args = action
        if kind == "deliver":
            src, dst, frame, epoch = args
            key = frozenset((src, dst))
            if key in self.links and self.epoch[key] == epoch:
                self.cores[dst].handle_message(src, frame, self.now)
                self.flush(dst)
        elif kind == "connect":
            self.connect(*args)
        else:
            getattr(self, kind)(*args)

    def check_mesh(self, name: str) -> None:
        core = self.cores[name]
        c = core.config
        for topic, mesh in core.mesh.items():
            if len(mesh) > c.d_hi or (len(mesh) < c.d_lo and core.eligible(topic, self.now)):
                self.mesh_violations.append(f"{name[-6:]} {topic}: {len(mesh)}")

    def expected(self, message_id: bytes) -> set[str]:
        publisher, topic, _, when = self.published[message_id]
        out: set[str] = set()
        if message_id in self.unreachable:
            return out
        for name in self.alive - {publisher}:
            spans = self.history.get((name, topic), [])
            if spans and spans[-1][1] is None and spans[-1][0] <= when - SETTLE:
                out.add(name)
        return out


churn_step = st.tuples(
    st.sampled_from(["cut", "sub", "unsub", "publish", "forge", "kill"]),
    st.integers(0, 10_000),
    st.integers(0, 10_000),
    st.sampled_from(TOPICS),
)


def run_scenario(n, seed, loss, flood, steps) -> Sim:
    config = replace(
        GossipConfig(), prune_backoff=5.0, flood_publish=flood, d=4, d_lo=3, d_hi=6, d_lazy=6
    )
    sim = Sim(n, seed, loss, config)
    rng = random.Random(seed)
    for name in sim.names:
        for topic in TOPICS:
            if rng.random() < 0.6:
                sim.subscribe(name, topic)
    sim.run_until(2.0)
    t = 2.0
    for kind, i, j, topic in steps:
        a, b = sim.names[i % n], sim.names[j % n]
        if kind == "cut" and a != b and sim.safe_without_link(a, b):
            sim.disconnect(a, b)
        elif kind == "sub":
            sim.subscribe(a, topic)
        elif kind == "unsub":
            sim.unsubscribe(a, topic)
        elif kind == "publish":
            sim.publish(a, topic)
        elif kind == "forge" and a != b:
            sim.forge(a, b, topic)
        elif kind == "kill" and len(sim.alive) == n and n > 3:
            sim.kill(a)
        t += 0.3
        sim.run_until(t)
    # Quiet phase: links come back, gossip and meshes settle.
    sim.run_until(t + 15.0)

    for name, got in sim.received.items():
        ids = [event.message_id for _, event in got]
        assert len(ids) == len(set(ids)), f"{name[-6:]} got a message twice"
        for when, event in got:
            assert event.message_id in sim.published, "a forged or unknown message was delivered"
            publisher, topic, data, _ = sim.published[event.message_id]
            assert (event.from_, event.topic, event.data) == (publisher, topic, data)
            spans = sim.history.get((name, topic), [])
            assert any(
                start <= when and (end is None or when <= end + MAX_DELAY * 4)
                for start, end in spans
            ), "delivered to a non-subscriber"
    for message_id in sim.published:
        receivers = {
            name
            for name, got in sim.received.items()
            if any(e.message_id == message_id for _, e in got)
        }
        missing = sim.expected(message_id) - receivers
        assert not missing, (
            f"{len(missing)} subscribers never received {sim.published[message_id][2]!r}"
        )
    assert not sim.mesh_violations, sim.mesh_violations[:5]
    return sim


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(3, 13),
    seed=st.integers(0, 2**32),
    loss=st.sampled_from([0.0, 0.01, 0.05]),
    flood=st.booleans(),
    steps=st.lists(churn_step, min_size=5, max_size=60),
)
def test_delivery_exactly_once_under_loss_and_churn(n, seed, loss, flood, steps):
    sim = run_scenario(n, seed, loss, flood, steps)
    expected = sum(len(sim.expected(m)) for m in sim.published)
    target(float(expected), label="expected deliveries")
    target(float(sum(sim.epoch.values())), label="link (re)connections")
    note_event(
        f"forged dropped: {sum(c.statistics.invalid_signature > 0 for c in sim.cores.values()) > 0}"
    )


def test_default_degrees_on_twenty_peers():
    # The D=6 (4..12) with 20 peers on one topic, flood publish off: the mesh
    # and gossip alone deliver, and meshes stay within bounds.
    sim = Sim(20, 7, 0.0, replace(GossipConfig(), flood_publish=False))
    for name in sim.names:
        sim.subscribe(name, "a")
    sim.run_until(3.0)
    for i in range(10):
        sim.publish(sim.names[i], "a")
        sim.run_until(3.0 + 0.2 * (i + 1))
    sim.run_until(10.0)
    assert all(len(got) == 10 - (i < 10) for i, got in enumerate(sim.received.values()))
    assert not sim.mesh_violations
    for core in sim.cores.values():
        assert 4 <= len(core.mesh["a"]) <= 12


@pytest.mark.parametrize("seed", range(6))
def test_thirteen_peers_many_messages(seed):
    # Larger seeded runs than hypothesis tends to pick: every step kind, many publishes.
    rng = random.Random(seed)
    kinds = ["cut"] * 3 + ["sub", "unsub", "forge"] + ["publish"] * 6 + ["kill"]
    steps = [
        (rng.choice(kinds), rng.randrange(99), rng.randrange(99), rng.choice(TOPICS))
        for _ in range(80)
    ]
    run_scenario(n=13, seed=seed, loss=0.05 if seed % 2 else 0.01, flood=seed < 3, steps=steps)
