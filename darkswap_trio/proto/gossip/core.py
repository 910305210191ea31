"""GossipCore: topic publish/subscribe over a set of peer links (gossipsub-v1.1-lite, sans-IO).

Per subscribed topic the core keeps a mesh of about ``d`` peers (``d_lo``..``d_hi``)
joined with GRAFT and left with PRUNE (which carries a backoff neither side may
re-graft within). A message is forwarded to the mesh, and every heartbeat the ids
of recent messages are advertised (IHAVE) to ``d_lazy`` other subscribers, who ask
for what they missed (IWANT). Own messages are flood-published to every known
subscriber of the topic. Every message is signed by its publisher; its id is a hash
of (publisher, seqno) and a seen-cache delivers each id once. Unsigned or badly
signed messages, and messages the application's validator rejects, are dropped,
counted, and count against the peer that forwarded them: at ``graylist_threshold``
the peer's frames are ignored and it leaves every mesh.

Inputs: ``handle_message(peer, frame, now)``, ``subscribe``/``unsubscribe``,
``publish(topic, data, now)``, ``peer_connected``/``peer_disconnected``,
``handle_timeout(now)``. Outputs: ``poll_transmit() -> (peer, frame)``,
``poll_event() -> TopicMessage``, ``poll_timeout()``; counters in ``statistics``.
Peers are opaque strings (the driver uses authenticated peer id strings).
"""

from __future__ import annotations

import os
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import GossipParseError
from ..identity import Keypair, PeerId
from .cache import MessageCache, SeenCache
from .wire import (
    GRAFT,
    IHAVE,
    IWANT,
    PRUNE,
    PUBLISH,
    SUBSCRIBE,
    UNSUBSCRIBE,
    Control,
    Message,
    check_topic,
    encode_control,
    encode_frame,
    encode_record,
    parse_frame_untrusted,
    signed_bytes,
)

ACCEPT, IGNORE, REJECT = "accept", "ignore", "reject"
Validator = Callable[["TopicMessage"], str]


@dataclass(frozen=True)
class TopicMessage:
    """A message delivered on a subscribed topic. ``from_`` is the publisher's peer id."""

    topic: str
    from_: str
    data: bytes
    message_id: bytes


@dataclass(frozen=True)
class GossipConfig:
    d: int = 6
    d_lo: int = 4
    d_hi: int = 12
    d_lazy: int = 6
    heartbeat_interval: float = 1.0
    prune_backoff: float = 60.0
    seen_ttl: float = 120.0
    seen_cap: int = 200_000
    history_length: int = 5
    history_gossip: int = 3
    mcache_cap: int = 20_000
    max_ihave_ids: int = 500  # ids in one IHAVE we send, and ids we ask for per peer per heartbeat
    max_ihave_records: int = 10  # IHAVE records we follow per peer per heartbeat
    iwant_followup: float = 3.0  # an id asked for is not asked for again within this
    max_data_size: int = 1 << 20
    max_frame_size: int = 256 << 10  # records are packed into frames up to this size
    max_pending_bytes: int = 8 << 20  # per peer, not yet taken by poll_transmit
    max_events: int = 10_000
    graylist_threshold: int = 10
    max_peer_topics: int = 512  # subscriptions remembered per peer
    flood_publish: bool = True

    def validate(self) -> GossipConfig:
        if not 0 < self.d_lo <= self.d <= self.d_hi:
            raise ValueError("gossip mesh degrees need 0 < d_lo <= d <= d_hi")
        if not 0 < self.history_gossip <= self.history_length:
            raise ValueError("history_gossip must be in 1..history_length")
        return self


@dataclass
class GossipStatistics:
    received: int = 0  # PUBLISH records received
    delivered: int = 0
    duplicates: int = 0
    invalid_signature: int = 0
    not_subscribed: int = 0
    rejected: int = 0
    ignored: int = 0
    malformed_frames: int = 0
    graylisted_frames: int = 0
    published: int = 0
    forwarded: int = 0
    ihave_sent: int = 0
    iwant_sent: int = 0
    iwant_served: int = 0
    frames_sent: int = 0
    bytes_sent: int = 0
    dropped_outgoing: int = 0
    dropped_events: int = 0
    seen_evicted: int = 0
    ignored_subscriptions: int = 0  # a peer announced more than max_peer_topics


@dataclass
class _Peer:
    topics: set[str] = field(default_factory=set)
    penalty: int = 0
    ihave_records: int = 0  # this heartbeat
    iwant_budget: int = 0  # ids we may still ask of it this heartbeat
    served_budget: int = 0  # ids we may still send it for its IWANTs this heartbeat
    pending: list[bytes] = field(default_factory=list)
    pending_bytes: int = 0
    fresh_until: float = 0.0  # (re)connected recently: gets IHAVE even from its mesh peers


class GossipCore:
    def __init__(
        self,
        keypair: Keypair,
        config: GossipConfig | None = None,
        *,
        now: float = 0.0,
        rng: random.Random | None = None,
        seqno_start: int | None = None,
    ) -> None:
        self.config = c = (config or GossipConfig()).validate()
        self.keypair = keypair
        self._publisher = keypair.peer_id.multihash
        self.local_peer = str(keypair.peer_id)
        self._rng = rng or random.Random()
        self._seqno = (
            seqno_start if seqno_start is not None else int.from_bytes(os.urandom(6), "big") << 16
        )
        self.subscriptions: set[str] = set()
        self.mesh: dict[str, set[str]] = {}
        self.peers: dict[str, _Peer] = {}
        self._validators: dict[str, Validator] = {}
        self._backoff: dict[tuple[str, str], float] = {}
        self._seen = SeenCache(c.seen_ttl, c.seen_cap)
        self._mcache = MessageCache(c.history_length, c.history_gossip, c.mcache_cap)
        self._published_topics: dict[str, float] = {}  # unsubscribed topics we published to
        self._asked: dict[bytes, float] = {}  # IWANT sent: id -> when it may be asked again
        self._ready: deque[str] = deque()  # peers with pending records, in order
        self._events: deque[TopicMessage] = deque()
        self._now = now
        self._next_heartbeat = now + c.heartbeat_interval
        self.statistics = GossipStatistics()

    # -- inputs: local API ------------------------------------------------------------

    def subscribe(self, topic: str, validator: Validator | None = None) -> None:
        """Join ``topic`` (idempotent): announce it and graft up to ``d`` known subscribers."""
        check_topic(topic)
        if validator is not None:
            self._validators[topic] = validator
        if topic in self.subscriptions:
            return
        self.subscriptions.add(topic)
        self.mesh[topic] = set()
        for peer in self.peers:
            self._queue_control(peer, Control(SUBSCRIBE, topic))
        self._fill_mesh(topic, self.config.d)

    def unsubscribe(self, topic: str) -> None:
        """Leave ``topic``: announce it and prune the mesh (idempotent)."""
        self._validators.pop(topic, None)
        if topic not in self.subscriptions:
            return
        self.subscriptions.discard(topic)
        for peer in self.mesh.pop(topic, set()):
            self._prune(peer, topic)
        for peer in self.peers:
            self._queue_control(peer, Control(UNSUBSCRIBE, topic))

    def publish(self, topic: str, data: bytes, now: float) -> tuple[bytes, int]:
        """Sign and send ``data`` on ``topic``: (message id, peers it was handed to)."""
        check_topic(topic)
        data = bytes(data)
        if len(data) > self.config.max_data_size:
            raise ValueError(
                f"topic message of {len(data)} bytes exceeds {self.config.max_data_size}"
            )
        self._now = now
        self._seqno = (self._seqno + 1) & 0xFFFF_FFFF_FFFF_FFFF
        signature = self.keypair.sign(signed_bytes(self._publisher, self._seqno, topic, data))
        message = Message(self._publisher, self._seqno, topic, data, signature)
        record = encode_record(PUBLISH, message.encode())
        message_id = message.id
        self._seen.add(message_id, now)
        self._mcache.put(message_id, topic, record)
        if not self.config.flood_publish and self.mesh.get(topic):
            targets = sorted(self.mesh[topic])
        else:
            targets = [p for p, s in self.peers.items() if topic in s.topics and self._trusted(s)]
        if topic not in self.subscriptions:
            self._published_topics[topic] = now  # gossiped for a window although not subscribed
        for peer in targets:
            self._queue(peer, record)
        self.statistics.published += 1
        return message_id, len(targets)

    def peer_connected(self, peer: str) -> None:
        if peer in self.peers:
            self.peer_disconnected(peer)
        c = self.config
        # A link that broke and came back within the gossip window misses nothing: for
        # that long the peer is sent IHAVE even once it is back in a mesh.
        self.peers[peer] = _Peer(
            iwant_budget=c.max_ihave_ids,
            served_budget=c.max_ihave_ids,
            fresh_until=self._now + c.history_gossip * c.heartbeat_interval,
        )
        for topic in sorted(self.subscriptions):
            self._queue_control(peer, Control(SUBSCRIBE, topic))

    def peer_disconnected(self, peer: str) -> None:
        state = self.peers.pop(peer, None)
        if state is None:
            return
        for members in self.mesh.values():
            members.discard(peer)
        if state.pending:
            self._ready = deque(p for p in self._ready if p != peer)

    def topic_peers(self, topic: str) -> list[str]:
        """Connected peers known to subscribe to ``topic``."""
        return [p for p, s in self.peers.items() if topic in s.topics]

    # -- inputs: network --------------------------------------------------------------

    def handle_message(self, peer: str, frame: bytes, now: float) -> None:
        """One frame from ``peer``; malformed frames are counted and count against it."""
        self._now = now
        state = self.peers.get(peer)
        if state is None:
            return
        if state.penalty >= self.config.graylist_threshold:
            self.statistics.graylisted_frames += 1
            return
        try:
            records = parse_frame_untrusted(frame, max_data=self.config.max_data_size)
        except GossipParseError:
            self.statistics.malformed_frames += 1
            self._penalize(peer, state)
            return
        for record in records:
            if peer not in self.peers:
                return
            if isinstance(record, Message):
                self._receive_message(peer, state, record, now)
            else:
                self._receive_control(peer, state, record, now)

    def _receive_message(self, peer: str, state: _Peer, message: Message, now: float) -> None:
        stats = self.statistics
        stats.received += 1
        message_id = message.id
        if message_id in self._seen:
            stats.duplicates += 1
            return
        if not message.signature_valid():
            stats.invalid_signature += 1
            self._penalize(peer, state)
            return
        self._seen.add(message_id, now)
        self._asked.pop(message_id, None)
        topic = message.topic
        if topic not in self.subscriptions:
            stats.not_subscribed += 1
            return
        publisher = str(PeerId(message.from_))
        delivered = TopicMessage(topic, publisher, message.data, message_id)
        validator = self._validators.get(topic)
        verdict = validator(delivered) if validator is not None else ACCEPT
        if verdict == REJECT:
            stats.rejected += 1
            self._penalize(peer, state)
            return
        if verdict != ACCEPT:
            stats.ignored += 1
            return
        record = encode_record(PUBLISH, message.encode())
        self._mcache.put(message_id, topic, record)
        self._emit(delivered)
        for target in self.mesh.get(topic, ()):
            if target != peer and target != publisher:
                self._queue(target, record)
                stats.forwarded += 1

    def _receive_control(self, peer: str, state: _Peer, control: Control, now: float) -> None:
        kind, topic = control.kind, control.topic
        if kind == SUBSCRIBE:
            if topic not in state.topics and len(state.topics) >= self.config.max_peer_topics:
                self.statistics.ignored_subscriptions += 1  # bounded memory per peer
                return
            state.topics.add(topic)
            if topic in self.subscriptions and len(self.mesh[topic]) < self.config.d_lo:
                self._fill_mesh(topic, self.config.d)
        elif kind == UNSUBSCRIBE:
            state.topics.discard(topic)
            self.mesh.get(topic, set()).discard(peer)
        elif kind == GRAFT:
            mesh = self.mesh.get(topic)
            if mesh is None or peer in mesh:
                if mesh is None:
                    self._queue_control(peer, Control(PRUNE, topic, backoff=0))
                return
            state.topics.add(topic)  # a GRAFT implies the subscription (ours: bounded)
            if self._backed_off(peer, topic, now) or len(mesh) >= self.config.d_hi:
                self._prune(peer, topic)
            else:
                mesh.add(peer)
        elif kind == PRUNE:
            if topic not in self.mesh:
                return  # backoffs only for our topics: the table stays bounded
            self.mesh[topic].discard(peer)
            backoff = max(float(control.backoff), 1.0)
            self._backoff[(peer, topic)] = max(self._backoff.get((peer, topic), 0.0), now + backoff)
        elif kind == IHAVE:
            self._receive_ihave(peer, state, control, now)
        elif kind == IWANT:
            for message_id in control.ids:
                if state.served_budget <= 0:
                    break
                record = self._mcache.get(message_id)
                if record is not None:
                    state.served_budget -= 1
                    self._queue(peer, record)
                    self.statistics.iwant_served += 1

    def _receive_ihave(self, peer: str, state: _Peer, control: Control, now: float) -> None:
        if control.topic not in self.subscriptions:
            return
        state.ihave_records += 1
        if state.ihave_records > self.config.max_ihave_records:
            return
        wanted: list[bytes] = []
        for message_id in control.ids:
            if state.iwant_budget <= 0:
                break
            if message_id in self._seen or self._asked.get(message_id, 0.0) > now:
                continue
            wanted.append(message_id)
            state.iwant_budget -= 1
            if len(self._asked) < self.config.seen_cap:
                self._asked[message_id] = now + self.config.iwant_followup
        if wanted:
            self._queue_control(peer, Control(IWANT, ids=tuple(wanted)))
            self.statistics.iwant_sent += 1

    # -- timers -----------------------------------------------------------------------

    def poll_timeout(self) -> float:
        return self._next_heartbeat

    def handle_timeout(self, now: float) -> None:
        self._now = now
        if now < self._next_heartbeat:
            return
        self._next_heartbeat = now + self.config.heartbeat_interval
        self.heartbeat(now)

    def heartbeat(self, now: float) -> None:
        c = self.config
        self._backoff = {key: until for key, until in self._backoff.items() if until > now}
        for topic in sorted(self.subscriptions):
            mesh = self.mesh[topic]
            for peer in list(mesh):
                state = self.peers.get(peer)
                if state is None or topic not in state.topics or not self._trusted(state):
                    mesh.discard(peer)
                    if state is not None:
                        self._prune(peer, topic)
            if len(mesh) < c.d_lo:
                self._fill_mesh(topic, c.d)
            if len(mesh) > c.d_hi:
                for peer in self._rng.sample(sorted(mesh), len(mesh) - c.d):
                    mesh.discard(peer)
                    self._prune(peer, topic)
            self._gossip(topic, mesh, now)
        window = c.history_gossip * c.heartbeat_interval
        for topic, when in list(self._published_topics.items()):
            if topic in self.subscriptions or when + window < now:
                del self._published_topics[topic]
            else:
                self._gossip(topic, set(), now)
        self._mcache.shift()
        self._seen.expire(now)
        self.statistics.seen_evicted = self._seen.evicted
        self._asked = {i: until for i, until in self._asked.items() if until > now}
        for state in self.peers.values():
            state.ihave_records = 0
            state.iwant_budget = state.served_budget = c.max_ihave_ids

    def _gossip(self, topic: str, mesh: set[str], now: float) -> None:
        c = self.config
        ids = self._mcache.gossip_ids(topic, c.max_ihave_ids)
        if not ids:
            return
        lazy = sorted(
            p
            for p, s in self.peers.items()
            if topic in s.topics and p not in mesh and self._trusted(s)
        )
        targets = self._rng.sample(lazy, min(c.d_lazy, len(lazy)))
        targets += sorted(p for p in mesh if self.peers[p].fresh_until > now)
        for peer in targets:
            self._queue_control(peer, Control(IHAVE, topic, ids=tuple(ids)))
            self.statistics.ihave_sent += 1

    def eligible(self, topic: str, now: float) -> list[str]:
        """Peers a heartbeat may graft to ``topic``'s mesh now (for tests and metrics)."""
        mesh = self.mesh.get(topic, set())
        return sorted(
            p
            for p, s in self.peers.items()
            if topic in s.topics
            and p not in mesh
            and self._trusted(s)
            and not self._backed_off(p, topic, now)
        )

    # -- outputs ----------------------------------------------------------------------

    def poll_transmit(self) -> tuple[str, bytes] | None:
        """The next frame to send: (peer, frame), records packed up to ``max_frame_size``."""
        while self._ready:
            peer = self._ready.popleft()
            state = self.peers.get(peer)
            if state is None or not state.pending:
                continue
            size, count = 1, 0
            for record in state.pending:
                if count and size + len(record) > self.config.max_frame_size:
                    break
                size += len(record)
                count += 1
            records, state.pending = state.pending[:count], state.pending[count:]
            state.pending_bytes -= size - 1
            if state.pending:
                self._ready.append(peer)
            frame = encode_frame(records)
            self.statistics.frames_sent += 1
            self.statistics.bytes_sent += len(frame)
            return peer, frame
        return None

    def poll_event(self) -> TopicMessage | None:
        return self._events.popleft() if self._events else None

    # -- helpers ----------------------------------------------------------------------

    def _trusted(self, state: _Peer) -> bool:
        return state.penalty < self.config.graylist_threshold

    def _penalize(self, peer: str, state: _Peer) -> None:
        state.penalty += 1
        if not self._trusted(state):
            for members in self.mesh.values():
                members.discard(peer)

    def _backed_off(self, peer: str, topic: str, now: float) -> bool:
        return self._backoff.get((peer, topic), 0.0) > now

    def _fill_mesh(self, topic: str, target: int) -> None:
        mesh = self.mesh[topic]
        candidates = self.eligible(topic, self._now)
        for peer in self._rng.sample(candidates, min(max(target - len(mesh), 0), len(candidates))):
            mesh.add(peer)
            self._queue_control(peer, Control(GRAFT, topic))

    def _prune(self, peer: str, topic: str) -> None:
        backoff = self.config.prune_backoff
        self._backoff[(peer, topic)] = self._now + backoff
        self._queue_control(peer, Control(PRUNE, topic, backoff=int(backoff)))

    def _queue_control(self, peer: str, control: Control) -> None:
        self._queue(peer, encode_control(control))

    def _queue(self, peer: str, record: bytes) -> None:
        state = self.peers.get(peer)
        if state is None:
            return
        if state.pending_bytes + len(record) > self.config.max_pending_bytes:
            self.statistics.dropped_outgoing += 1
            return
        if not state.pending:
            self._ready.append(peer)
        state.pending.append(record)
        state.pending_bytes += len(record)

    def _emit(self, message: TopicMessage) -> None:
        if len(self._events) >= self.config.max_events:
            self._events.popleft()
            self.statistics.dropped_events += 1
        self._events.append(message)
        self.statistics.delivered += 1
