"""A pair of ICE agents stepped in simulated time over a seeded, imperfect link.

No sockets, no clock: the simulator jumps to the next timer or delivery, so tests of
loss, duplication and reordering are instant and reproducible from the seed.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from darkswap_trio.proto.ice import CandidateGathered, GatheringComplete, IceAgent, IceEvent


@dataclass
class LinkModel:
    loss: float = 0.0
    duplicate: float = 0.0
    reorder_jitter: float = 0.0
    delay: float = 0.01


@dataclass
class SimulatedPeer:
    agent: IceAgent
    addr: tuple[str, int]
    events: list[IceEvent] = field(default_factory=list)
    # The address the other side sees us from (a NAT's mapping), if different.
    public_addr: tuple[str, int] | None = None
    # More local addresses (other interfaces) that deliver to this peer.
    aliases: tuple[tuple[str, int], ...] = ()


class IcePairSimulator:
    """Steps agents to their next deadline; wires trickle and credentials."""

    def __init__(
        self,
        peers: list[SimulatedPeer],
        link: LinkModel,
        seed: int = 0,
        signal_candidates: bool = True,
    ) -> None:
        self.peers = peers
        self.link = link
        self.rng = random.Random(seed)
        self.now = 0.0
        self.steps = 0
        self._queue: list[tuple[float, int, tuple[str, int], tuple[str, int], bytes]] = []
        self._seq = 0
        self.signal_candidates = signal_candidates
        # STUN servers on the simulated network: address -> handler(data, src) -> reply.
        self.servers: dict[tuple[str, int], Callable[[bytes, tuple[str, int]], bytes | None]] = {}

    def other(self, peer: SimulatedPeer) -> SimulatedPeer:
        return self.peers[1] if peer is self.peers[0] else self.peers[0]

    def exchange_credentials(self) -> None:
        a, b = self.peers
        a.agent.set_remote_credentials(b.agent.local_ufrag, b.agent.local_pwd, self.now)
        b.agent.set_remote_credentials(a.agent.local_ufrag, a.agent.local_pwd, self.now)

    def _send(
        self,
        src: SimulatedPeer,
        data: bytes,
        dst: tuple[str, int],
        local: tuple[str, int] | None = None,
    ) -> None:
        link = self.link
        if self.rng.random() < link.loss:
            return
        copies = 2 if self.rng.random() < link.duplicate else 1
        for _ in range(copies):
            at = self.now + link.delay + self.rng.random() * link.reorder_jitter
            self._seq += 1
            source = src.public_addr or (local if local in src.aliases else src.addr)
            heapq.heappush(self._queue, (at, self._seq, dst, source, data))

    def _deliver_later(self, src: tuple[str, int], dst: tuple[str, int], data: bytes) -> None:
        if self.rng.random() < self.link.loss:
            return
        self._seq += 1
        heapq.heappush(self._queue, (self.now + self.link.delay, self._seq, dst, src, data))

    def _drain(self) -> None:
        for peer in self.peers:
            while (t := peer.agent.poll_transmit()) is not None:
                self._send(peer, t.data, t.addr, t.local)
            while (e := peer.agent.poll_event()) is not None:
                peer.events.append(e)
                if self.signal_candidates:
                    other = self.other(peer).agent
                    if isinstance(e, CandidateGathered):
                        other.add_remote_candidate(e.candidate, self.now)
                    elif isinstance(e, GatheringComplete):
                        other.add_remote_candidate(None, self.now)

    def step(self) -> bool:
        """Advance to the next deadline or delivery; False when nothing is left."""
        self._drain()
        self.steps += 1
        deadlines = [
            (d, i) for i, p in enumerate(self.peers) if (d := p.agent.poll_timeout()) is not None
        ]
        next_timer = min(deadlines) if deadlines else None
        next_packet = self._queue[0][0] if self._queue else None
        if next_timer is None and next_packet is None:
            return False
        if next_packet is not None and (next_timer is None or next_packet <= next_timer[0]):
            at, _, dst, src, data = heapq.heappop(self._queue)
            self.now = max(self.now, at)
            handler = self.servers.get(dst)
            if handler is not None:
                reply = handler(data, src)
                if reply is not None:
                    self._deliver_later(dst, src, reply)
            for peer in self.peers:
                # Behind a NAT, only the public mapping is reachable.
                if (peer.public_addr or peer.addr) == dst:
                    peer.agent.receive(data, src, self.now, peer.addr)
                elif dst in peer.aliases:
                    peer.agent.receive(data, src, self.now, dst)
        else:
            assert next_timer is not None
            self.now = max(self.now, next_timer[0])
            self.peers[next_timer[1]].agent.handle_timeout(self.now)
        self._drain()
        return True

    def run_until(self, predicate, max_time: float = 120.0, max_steps: int = 100_000) -> None:
        start_steps = self.steps
        while not predicate():
            assert self.now <= max_time, f"simulated time ran out at {self.now}"
            assert self.steps - start_steps < max_steps, "livelock: too many steps"
            if not self.step():
                raise AssertionError("nothing left to do and the predicate is false")
