"""Two full peer cores (ICE + DTLS + SCTP + DCEP) stepped in simulated time.

The link is :class:`darkswap_trio.testing.VirtualNet` (seeded loss, duplication,
delay jitter that reorders, and a :class:`~darkswap_trio.testing.VirtualNat` in front
of peer ``b`` if asked). One trio task steps both cores: it feeds each what arrived,
fires due timers, lets the "application" react to events, sends what the cores want
sent, then sleeps to the next timer or delivery -- under ``MockClock(autojump)``
simulated seconds cost no wall time. Every run is bounded (steps, simulated time,
time that stops advancing): :class:`Livelock` otherwise.
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from darkswap_trio.proto.dtls import DtlsCertificate, DtlsEndpoint
from darkswap_trio.proto.ice import IceAgent
from darkswap_trio.proto.peer import (
    CandidateGathered,
    ChannelClosed,
    ChannelMessage,
    ChannelOpened,
    GatheringComplete,
    PeerCore,
    StateChanged,
)
from darkswap_trio.testing import VirtualNet, VirtualSocket

MAX_STEPS = 200_000
_MAX_STALLED_STEPS = 1_000
ENDED = ("failed", "disconnected", "closed")

_NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
CERTIFICATES = (DtlsCertificate.generate(_NOW), DtlsCertificate.generate(_NOW))


class Livelock(AssertionError):
    """The simulated pair stopped making progress in time."""


@dataclass
class Side:
    name: str
    core: PeerCore
    sock: VirtualSocket
    reading: bool = True  # False: an application that stopped reading its channels
    # True: receive_batch/poll_datagrams (as the trio driver); False: the one-datagram
    # surface, receive/poll_transmit. The pair runs one side each way.
    batched: bool = True
    states: list[str] = field(default_factory=list)
    opened: list[int] = field(default_factory=list)  # stream ids the peer opened
    closed: list[int] = field(default_factory=list)
    received: dict[int, list[bytes | str]] = field(default_factory=dict)
    unread: list[ChannelMessage] = field(default_factory=list)

    def read_all(self) -> None:
        """The application catches up with every message it left unread."""
        for event in self.unread:
            self.received.setdefault(event.stream_id, []).append(event.message)
            self.core.channel_drained(event.stream_id, event.size)
        self.unread.clear()


class PeerPair:
    """``a`` (controlling ICE, DTLS server) and ``b`` (controlled, DTLS client)."""

    def __init__(self, a: Side, b: Side, seed: int) -> None:
        self.a, self.b = a, b
        self.sides = (a, b)
        self.steps = 0
        self._seed = seed
        self.on_event: Callable[[Side, object], None] | None = None

    @classmethod
    async def create(
        cls, net: VirtualNet, *, nat: str | None = None, seed: int = 0, **core_options: object
    ) -> PeerPair:
        sock_a = await net.bind(("203.0.113.1", 5000))
        if nat is None:
            sock_b = await net.bind(("203.0.113.2", 5000))
        else:
            sock_b = await net.add_nat("203.0.113.100", filtering=nat).bind(("198.51.100.2", 5000))
        sides = [
            Side(name, PeerCore(local_addr=sock.getsockname(), **core_options), sock)  # type: ignore[arg-type]
            for name, sock in (("a", sock_a), ("b", sock_b))
        ]
        sides[1].batched = False
        pair = cls(sides[0], sides[1], seed)
        pair._start()
        return pair

    def other(self, side: Side) -> Side:
        return self.b if side is self.a else self.a

    def _start(self) -> None:
        now = trio.current_time()
        rng = random.Random(self._seed)
        agents = []
        for side, controlling in ((self.a, True), (self.b, False)):
            agent = IceAgent(controlling, pacing=0.02, rng=random.Random(rng.getrandbits(64)))
            agent.add_local_candidate(side.sock.getsockname())
            agents.append(agent)
        for side, agent in zip(self.sides, agents, strict=True):
            side.core.start(agent, now)
        fingerprints = [[("sha-256", c.fingerprint())] for c in CERTIFICATES]
        for index, (side, role) in enumerate(((self.a, "server"), (self.b, "client"))):
            remote = agents[1 - index]
            dtls = DtlsEndpoint(role, CERTIFICATES[index], fingerprints[1 - index])
            side.core.set_remote(dtls, remote.local_ufrag, remote.local_pwd, now)

    # ------------------------------------------------------------------ stepping

    def pump(self, side: Side) -> None:
        """Events to the application, then the side's datagrams onto the network."""
        core, now = side.core, trio.current_time()
        busy = True
        while busy:  # sending can make events (SCTP moved on), events can make datagrams
            busy = False
            while (event := core.poll_event()) is not None:
                self._on_event(side, event, now)
                busy = True
            if side.batched:
                while (run := core.poll_datagrams()) is not None:
                    side.sock.send(run[1], run[0])
                    busy = True
            else:
                while (transmit := core.poll_transmit()) is not None:
                    side.sock.send([transmit.data], transmit.addr)
                    busy = True

    def _on_event(self, side: Side, event: object, now: float) -> None:
        kind = type(event)
        if kind is ChannelMessage:
            side.unread.append(event)  # type: ignore[arg-type]
            if side.reading:
                side.read_all()
        elif kind is StateChanged:
            side.states.append(event.state)  # type: ignore[attr-defined]
        elif kind is ChannelOpened:
            side.opened.append(event.info.stream_id)  # type: ignore[attr-defined]
        elif kind is ChannelClosed:
            side.closed.append(event.stream_id)  # type: ignore[attr-defined]
        elif kind is CandidateGathered:  # trickle, instantly
            self.other(side).core.add_remote_candidate(event.candidate, now)  # type: ignore[attr-defined]
        elif kind is GatheringComplete:
            self.other(side).core.add_remote_candidate(None, now)
        if self.on_event is not None:
            self.on_event(side, event)

    async def step(self) -> bool:
        """One round; False when nothing is left to happen (no timer, nothing in flight)."""
        now = trio.current_time()
        for side in self.sides:
            batch: list[tuple[bytes, tuple[str, int]]] = []
            side.sock.receive_into(batch, 1 << 30)
            if side.batched and batch:
                side.core.receive_batch(batch, now)
            elif batch:
                for data, addr in batch:
                    side.core.receive(data, addr, now)
            side.core.handle_timeout(now)
            self.pump(side)
        self.steps += 1
        times = [
            t
            for side in self.sides
            for t in (side.core.poll_timeout(), side.sock.next_delivery())
            if t is not None
        ]
        if not times:
            return False
        await trio.sleep_until(min(times))
        return True

    async def run_until(
        self,
        predicate: Callable[[], bool],
        max_time: float = 120.0,
        max_steps: int = MAX_STEPS,
    ) -> None:
        start, stalled, last = self.steps, 0, trio.current_time()
        while not predicate():
            if trio.current_time() > max_time:
                raise Livelock(f"simulated time ran out at {trio.current_time():.1f} s")
            if self.steps - start >= max_steps:
                raise Livelock(f"{max_steps} steps without the predicate")
            if not await self.step() and not predicate():
                raise Livelock("nothing left to happen and the predicate is false")
            now = trio.current_time()
            stalled = stalled + 1 if now == last else 0
            last = now
            if stalled > _MAX_STALLED_STEPS:
                raise Livelock(f"time stopped advancing at {now:.3f} s")

    async def run_until_idle(self, max_steps: int = 10_000) -> None:
        """Step until no timer is armed and nothing is in flight (bounded)."""
        for _ in range(max_steps):
            if not await self.step():
                return
        raise Livelock(f"still busy after {max_steps} steps")

    def connected(self) -> bool:
        return all(side.core.state == "connected" for side in self.sides)

    def ended(self) -> bool:
        return all(side.core.state in ENDED for side in self.sides)
