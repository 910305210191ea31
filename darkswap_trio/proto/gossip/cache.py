"""The gossip core's two bounded memories: what it has seen, and what it can re-send."""

from __future__ import annotations

from collections import deque


class SeenCache:
    """Message ids seen in the last ``ttl`` seconds, at most ``cap`` of them.

    Ids are kept in arrival order, so expiry and eviction both pop from the front.
    Evictions are counted: a duplicate that arrives after its id was evicted would
    be delivered twice, so ``cap`` must cover ``ttl`` times the message rate.
    """

    def __init__(self, ttl: float, cap: int) -> None:
        self.ttl = ttl
        self.cap = cap
        self._expiry: dict[bytes, float] = {}
        self.evicted = 0

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._expiry

    def __len__(self) -> int:
        return len(self._expiry)

    def add(self, message_id: bytes, now: float) -> None:
        self._expiry[message_id] = now + self.ttl
        while len(self._expiry) > self.cap:
            del self._expiry[next(iter(self._expiry))]
            self.evicted += 1

    def expire(self, now: float) -> None:
        while self._expiry:
            first = next(iter(self._expiry))
            if self._expiry[first] > now:
                break
            del self._expiry[first]


class MessageCache:
    """Recent messages by id (answering IWANT) and per-heartbeat windows (building IHAVE).

    ``history`` windows are kept, the newest ``gossip`` of them are advertised; at most
    ``cap`` messages are held (the oldest go first).
    """

    def __init__(self, history: int, gossip: int, cap: int) -> None:
        self.gossip = gossip
        self.cap = cap
        self._records: dict[bytes, tuple[str, bytes]] = {}
        self._windows: deque[list[bytes]] = deque([[]], maxlen=history)

    def __len__(self) -> int:
        return len(self._records)

    def put(self, message_id: bytes, topic: str, record: bytes) -> None:
        if message_id in self._records:
            return
        self._records[message_id] = (topic, record)
        self._windows[0].append(message_id)
        while len(self._records) > self.cap:
            del self._records[next(iter(self._records))]

    def get(self, message_id: bytes) -> bytes | None:
        entry = self._records.get(message_id)
        return entry[1] if entry is not None else None

    def gossip_ids(self, topic: str, limit: int) -> list[bytes]:
        """Ids of ``topic`` in the newest windows, newest first, at most ``limit``."""
        ids: list[bytes] = []
        for window in list(self._windows)[: self.gossip]:
            for message_id in reversed(window):
                entry = self._records.get(message_id)
                if entry is not None and entry[0] == topic:
                    ids.append(message_id)
                    if len(ids) >= limit:
                        return ids
        return ids

    def shift(self) -> None:
        if len(self._windows) == self._windows.maxlen:
            for message_id in self._windows[-1]:
                self._records.pop(message_id, None)
        self._windows.appendleft([])
