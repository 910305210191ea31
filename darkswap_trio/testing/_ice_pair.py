"""A pair of ICE agents stepped in simulated time over a seeded, imperfect network.

No sockets, no clock: the simulator jumps to the next timer or delivery, so tests of
loss, duplication and reordering are instant and reproducible from the seed. Every
datagram crosses one :class:`~._link.SimulatedLink` whose :class:`~._link.LinkModel`
is ``link``; a peer may sit behind a :class:`~._link.Nat` or a fixed ``public_addr``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from darkswap_trio.proto.ice import CandidateGathered, GatheringComplete, IceAgent, IceEvent

from ._link import LinkModel, Nat, SimulatedLink

__all__ = ["IcePairSimulator", "LinkModel", "SimulatedPeer"]

Address = tuple[str, int]


@dataclass
class SimulatedPeer:
    agent: IceAgent
    addr: Address
    events: list[IceEvent] = field(default_factory=list)
    # The address the other side sees us from (a NAT's fixed mapping), if different.
    public_addr: Address | None = None
    # More local addresses (other interfaces) that deliver to this peer.
    aliases: tuple[Address, ...] = ()
    # A NAT in front of every address of this peer (mappings and filtering, RFC 4787).
    nat: Nat | None = None


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
        # (destination, source, data) in flight; ``wire.sent`` logs every datagram.
        self.wire: SimulatedLink[tuple[Address, Address, bytes]] = SimulatedLink(
            self.rng, model=link
        )
        self.now = 0.0
        self.steps = 0
        self.signal_candidates = signal_candidates
        # STUN servers on the simulated network: address -> handler(data, src) -> reply.
        self.servers: dict[Address, Callable[[bytes, Address], bytes | None]] = {}

    def other(self, peer: SimulatedPeer) -> SimulatedPeer:
        return self.peers[1] if peer is self.peers[0] else self.peers[0]

    def exchange_credentials(self) -> None:
        a, b = self.peers
        a.agent.set_remote_credentials(b.agent.local_ufrag, b.agent.local_pwd, self.now)
        b.agent.set_remote_credentials(a.agent.local_ufrag, a.agent.local_pwd, self.now)

    def _send(
        self, src: SimulatedPeer, data: bytes, dst: Address, local: Address | None = None
    ) -> None:
        private = local if local in src.aliases else src.addr
        if src.nat is not None:
            source = src.nat.outbound(private, dst)
        else:
            source = src.public_addr or private
        self.wire.push((dst, source, data), self.now)

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

    def _deliver(self, dst: Address, src: Address, data: bytes) -> None:
        handler = self.servers.get(dst)
        if handler is not None:
            reply = handler(data, src)
            if reply is not None:
                self.wire.push_plain((src, dst, reply), self.now)
        for peer in self.peers:
            target: Address | None = dst
            if peer.nat is not None:
                if not peer.nat.owns(dst):
                    continue  # behind a NAT, only its mappings are reachable
                target = peer.nat.inbound(dst, src)
                if target is None:
                    peer.nat.filtered(dst, src)
                    continue
                reachable = peer.addr
            else:
                # Behind a fixed mapping, only the public address is reachable.
                reachable = peer.public_addr or peer.addr
            if target == reachable:
                peer.agent.receive(data, src, self.now, peer.addr)
            elif target in peer.aliases:
                peer.agent.receive(data, src, self.now, target)

    def step(self) -> bool:
        """Advance to the next deadline or delivery; False when nothing is left."""
        self._drain()
        self.steps += 1
        deadlines = [
            (d, i) for i, p in enumerate(self.peers) if (d := p.agent.poll_timeout()) is not None
        ]
        next_timer = min(deadlines) if deadlines else None
        next_packet = self.wire.next_time()
        if next_timer is None and next_packet is None:
            return False
        if next_packet is not None and (next_timer is None or next_packet <= next_timer[0]):
            at, (dst, src, data) = self.wire.pop()
            self.now = max(self.now, at)
            self._deliver(dst, src, data)
        else:
            assert next_timer is not None
            self.now = max(self.now, next_timer[0])
            self.peers[next_timer[1]].agent.handle_timeout(self.now)
        self._drain()
        return True

    def run_until(
        self, predicate: Callable[[], bool], max_time: float = 120.0, max_steps: int = 100_000
    ) -> None:
        start_steps = self.steps
        while not predicate():
            assert self.now <= max_time, f"simulated time ran out at {self.now}"
            assert self.steps - start_steps < max_steps, "livelock: too many steps"
            if not self.step():
                raise AssertionError("nothing left to do and the predicate is false")
