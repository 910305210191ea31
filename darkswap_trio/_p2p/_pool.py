"""ConnectionPool: at most one link per peer, direct preferred, capped, idle links pruned.

``add`` keeps the better of two links to the same peer (direct over relay; between
equals, the newer), closing the other. Before a new peer's link goes in, the least
recently active link is evicted (and closed) if the pool is full, so the pool never
holds more than ``max_connections`` links. ``prune_idle(now)`` closes links whose last
activity is older than ``idle_timeout``; the network calls it periodically.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import trio

from ._peer_link import PeerLink


@dataclass(frozen=True)
class PoolStatistics:
    connections: int
    direct: int
    relay: int
    max_connections: int
    evicted: int  # closed to stay under the cap (LRU)
    pruned_idle: int
    replaced: int  # closed because a better link to the same peer was added


class PoolWatcher(Protocol):
    def link_added(self, link: PeerLink) -> None: ...
    def link_removed(self, link: PeerLink) -> None: ...


class ConnectionPool:
    """The network's live links, by peer id."""

    def __init__(
        self, max_connections: int, idle_timeout: float, watcher: PoolWatcher | None = None
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.watcher = watcher  # told when a link becomes, or stops being, a peer's pooled link
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self._links: dict[str, PeerLink] = {}
        self.evicted = self.pruned_idle = self.replaced = 0

    def __len__(self) -> int:
        return len(self._links)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._links

    def get(self, peer_id: str) -> PeerLink | None:
        link = self._links.get(peer_id)
        if link is not None and link.closed:
            self._remove(peer_id)
            return None
        return link

    def links(self) -> list[PeerLink]:
        return [link for link in self._links.values() if not link.closed]

    async def add(self, link: PeerLink) -> PeerLink:
        """Pool ``link``; returns the link kept for its peer (``link`` or a better one)."""
        self._drop_closed()
        current = self._links.get(link.peer_id)
        if current is link:
            return link
        if current is not None:
            if current.connection_type == "direct" and link.connection_type != "direct":
                self.replaced += 1
                await link.aclose()
                return current
            self._remove(link.peer_id)
            self._set(link)
            self.replaced += 1
            await current.aclose()
            return link
        while len(self._links) >= self.max_connections:
            victim = min(self._links.values(), key=lambda lnk: lnk.last_activity)
            self._remove(victim.peer_id)
            self.evicted += 1
            await victim.aclose()
        self._set(link)
        return link

    def discard(self, link: PeerLink) -> None:
        if self._links.get(link.peer_id) is link:
            self._remove(link.peer_id)

    def _set(self, link: PeerLink) -> None:
        self._links[link.peer_id] = link
        if self.watcher is not None:
            self.watcher.link_added(link)

    def _remove(self, peer_id: str) -> None:
        link = self._links.pop(peer_id)
        if self.watcher is not None:
            self.watcher.link_removed(link)

    async def prune_idle(self, now: float | None = None) -> list[PeerLink]:
        """Close links idle for longer than ``idle_timeout`` (at trio time ``now``)."""
        if now is None:
            now = trio.current_time()
        idle = [lnk for lnk in self._links.values() if now - lnk.last_activity > self.idle_timeout]
        for link in idle:
            self.discard(link)
            self.pruned_idle += 1
            await link.aclose()
        return idle

    def _drop_closed(self) -> None:
        for peer in [p for p, lnk in self._links.items() if lnk.closed]:
            self._remove(peer)

    def statistics(self) -> PoolStatistics:
        live = self.links()
        direct = sum(1 for lnk in live if lnk.connection_type == "direct")
        return PoolStatistics(
            connections=len(live),
            direct=direct,
            relay=len(live) - direct,
            max_connections=self.max_connections,
            evicted=self.evicted,
            pruned_idle=self.pruned_idle,
            replaced=self.replaced,
        )
