"""The relay as a topic rendezvous (docs/PROTOCOL.md 14.6): who wants which topic.

A registered peer registers interest in a topic (TopicRegister) and is answered with a
random sample of the other live peers registered for it (TopicPeers); the SDK links to
some of them, and topic traffic then flows between the peers. Registrations expire
after ``ttl`` unless renewed, and go when the peer's session ends. Every table is
bounded: topics per peer, peers per topic, topics in all; requests are paced by the
session's message budget like every other frame.
"""

from __future__ import annotations

import random
from collections.abc import Callable


class TopicLimit(Exception):
    """A registration would exceed a rendezvous bound; ``code`` is the error code and
    ``limit`` the bound's name on the relay's ``limit_hits`` metric."""

    code = "topic_limit"

    def __init__(self, message: str, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


class TopicRendezvous:
    def __init__(
        self,
        *,
        ttl: float = 300.0,
        sample: int = 16,
        max_topics_per_peer: int = 32,
        max_peers_per_topic: int = 10_000,
        max_topics: int = 100_000,
        rng: random.Random | None = None,
    ) -> None:
        self.ttl = ttl
        self.sample = sample
        self.max_topics_per_peer = max_topics_per_peer
        self.max_peers_per_topic = max_peers_per_topic
        self.max_topics = max_topics
        self._rng = rng or random.Random()
        self._topics: dict[str, dict[str, float]] = {}  # topic -> peer -> expiry
        self._peers: dict[str, set[str]] = {}  # peer -> its topics
        self.refused = 0
        self.registrations = 0  # (peer, topic) entries held, expired ones until swept

    def __len__(self) -> int:
        return len(self._topics)

    def register(
        self,
        peer: str,
        topic: str,
        now: float,
        live: Callable[[str], bool] = lambda p: True,
        *,
        bounded: bool = True,
    ) -> list[str]:
        """Register (or renew) ``peer`` for ``topic``; a sample of the other live members.
        ``bounded=False``: the bounds were checked elsewhere (the cluster's store)."""
        # Stale entries of this topic go first: a topic's own traffic sweeps it, so
        # peers that left without saying so neither fill it nor appear in samples.
        self._expire(topic, now)
        members = self._topics.get(topic)
        mine = self._peers.get(peer, set())
        if bounded and topic not in mine:
            if len(mine) >= self.max_topics_per_peer:
                self.refused += 1
                raise TopicLimit(
                    f"at most {self.max_topics_per_peer} topics per peer", "topics_per_peer"
                )
            if members is None and len(self._topics) >= self.max_topics:
                self.sweep(now)  # rare: only when the table is full
                if len(self._topics) >= self.max_topics:
                    self.refused += 1
                    raise TopicLimit("the relay's topic table is full", "topics")
            if members is not None and len(members) >= self.max_peers_per_topic:
                self.refused += 1
                raise TopicLimit(
                    f"topic has {self.max_peers_per_topic} registered peers", "peers_per_topic"
                )
        members = self._topics.setdefault(topic, {})
        if peer not in members:
            self.registrations += 1
        members[peer] = now + self.ttl
        self._peers.setdefault(peer, set()).add(topic)
        others = [p for p in members if p != peer and live(p)]
        return self._rng.sample(others, min(self.sample, len(others)))

    def unregister(self, peer: str, topic: str) -> None:
        members = self._topics.get(topic)
        if members is not None and members.pop(peer, None) is not None:
            self.registrations -= 1
            if not members:
                del self._topics[topic]
        mine = self._peers.get(peer)
        if mine is not None:
            mine.discard(topic)
            if not mine:
                del self._peers[peer]

    def drop_peer(self, peer: str) -> None:
        """The peer's session ended: forget all its registrations."""
        for topic in list(self._peers.get(peer, ())):
            self.unregister(peer, topic)

    def _expire(self, topic: str, now: float) -> None:
        members = self._topics.get(topic)
        if members is None:
            return
        for peer in [p for p, until in members.items() if until <= now]:
            self.unregister(peer, topic)

    def sweep(self, now: float) -> None:
        """Drop every expired registration (called when the topic table is full)."""
        for topic in list(self._topics):
            self._expire(topic, now)

    def entries(self) -> list[tuple[str, str]]:
        """Every (peer, topic) registration held, expired ones until swept."""
        return [(peer, topic) for peer, topics in self._peers.items() for topic in topics]

    def topics_of(self, peer: str) -> set[str]:
        return set(self._peers.get(peer, ()))
