"""Two SCTP associations stepped in simulated time over a seeded, imperfect link.

Each direction is a :class:`~._link.SimulatedLink` (the shared link model).

No sockets, no clock, no DTLS: the pair jumps to the next packet arrival or timer, so
loss, duplication, reordering and outages are instant and reproducible from the seed.
Every run is bounded: too many steps, time that stops advancing, or an association
that never stops producing packets raise :class:`Livelock`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from darkswap_trio.proto.sctp import (
    Chunk,
    CommonHeader,
    DataChunk,
    MessageReceived,
    SctpAssociation,
    SctpEvent,
    SctpState,
    parse_packet_untrusted,
)

from ._link import LinkModel, SimulatedLink

__all__ = [
    "MAX_STEPS",
    "Livelock",
    "SctpPair",
    "SimulatedLink",
    "data_chunks",
    "numbered_payload",
    "parse_ours",
]

MAX_STEPS = 200_000
_MAX_STALLED_STEPS = 10_000
_MAX_PACKETS_PER_POLL = 100_000


class Livelock(AssertionError):
    """The simulated pair stopped making progress in time."""


class SctpPair:
    """Associations ``a`` (DTLS client) and ``b`` wired through links ``ab`` and ``ba``.

    ``link`` keywords are :class:`~._link.LinkModel`'s (``loss``, ``duplicate``,
    ``reorder``, ``jitter``, ``delay``), the same for both directions; each direction
    has its own model (``pair.ab.up = False`` cuts one way only).

    Events are drained into ``events["a"|"b"]`` unless ``drain[name]`` is False (an
    application that stops reading); ``on_event(name, event)`` lets a test react before
    the next packets leave, as an application would.
    """

    def __init__(
        self,
        seed: int = 0,
        a_kwargs: dict[str, Any] | None = None,
        b_kwargs: dict[str, Any] | None = None,
        **link: Any,
    ) -> None:
        rng = random.Random(seed)
        self.a = SctpAssociation(True, rng=random.Random(seed + 1), **(a_kwargs or {}))
        self.b = SctpAssociation(False, rng=random.Random(seed + 2), **(b_kwargs or {}))
        self.ab: SimulatedLink[bytes] = SimulatedLink(rng, model=LinkModel(**link))
        self.ba: SimulatedLink[bytes] = SimulatedLink(rng, model=LinkModel(**link))
        self.max_packet = {
            name: (kwargs or {}).get("max_packet_size", 1188)
            for name, kwargs in (("a", a_kwargs), ("b", b_kwargs))
        }
        self.now = 0.0
        self.steps = 0
        self.events: dict[str, list[SctpEvent]] = {"a": [], "b": []}
        self.drain = {"a": True, "b": True}
        self.on_event: Callable[[str, SctpEvent], None] | None = None
        self._stalled_steps = 0

    def side(self, name: str) -> SctpAssociation:
        return self.a if name == "a" else self.b

    def messages(self, name: str) -> list[MessageReceived]:
        return [e for e in self.events[name] if isinstance(e, MessageReceived)]

    def flush(self) -> None:
        """Drain events, then every packet both sides want to send onto the links."""
        for name in ("a", "b"):
            if self.drain[name]:
                assoc = self.side(name)
                while (event := assoc.poll_event()) is not None:
                    self.events[name].append(event)
                    if self.on_event is not None:
                        self.on_event(name, event)
        for name, src, link in (("a", self.a, self.ab), ("b", self.b, self.ba)):
            for _ in range(_MAX_PACKETS_PER_POLL):
                packet = src.poll_transmit()
                if packet is None:
                    break
                if len(packet) > self.max_packet[name]:
                    raise AssertionError(f"{name} sent a {len(packet)}-byte packet")
                link.push(packet, self.now)
            else:
                raise Livelock("poll_transmit never returns None")

    def step(self, until: float | None = None) -> bool:
        """Advance to the next arrival or timer, not past ``until``; False when idle."""
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise Livelock("too many steps")
        self.flush()
        times = [
            t
            for t in (
                self.ab.next_time(),
                self.ba.next_time(),
                self.a.poll_timeout(),
                self.b.poll_timeout(),
            )
            if t is not None
        ]
        if not times:
            return False
        next_time = min(times)
        if until is not None and next_time > until:
            self.now = until
            return True
        if next_time <= self.now:
            # Timers that stay due, or packets bouncing in zero time: a livelock.
            self._stalled_steps += 1
            if self._stalled_steps > _MAX_STALLED_STEPS:
                raise Livelock(f"simulated time stuck at {self.now}")
        else:
            self._stalled_steps = 0
            self.now = next_time
        for packet in self.ab.pop_due(self.now):
            self.b.receive(packet, self.now)
        for packet in self.ba.pop_due(self.now):
            self.a.receive(packet, self.now)
        for assoc in (self.a, self.b):
            deadline = assoc.poll_timeout()
            if deadline is not None and deadline <= self.now:
                assoc.handle_timeout(self.now)
        self.flush()
        return True

    def run_until(self, condition: Callable[[], object], max_time: float = 120.0) -> None:
        """Step until ``condition()`` holds; AssertionError after ``max_time`` or if idle."""
        start = self.now
        while not condition():
            if not self.step():
                raise AssertionError("idle before the condition held")
            if self.now - start > max_time:
                raise AssertionError(f"condition not met within {max_time} s of simulated time")

    def run_for(self, duration: float) -> None:
        end = self.now + duration
        while self.now < end and self.step(until=end):
            pass

    def connect(self, both: bool = True) -> None:
        """Establish the association (``both``: simultaneous INITs, as WebRTC does)."""
        self.a.connect(self.now)
        if both:
            self.b.connect(self.now)
        self.run_until(lambda: self.a.state is self.b.state is SctpState.ESTABLISHED, 600)
        self.flush()


def numbered_payload(number: int, size: int) -> bytes:
    """``size`` bytes that repeat ``number``: distinct, recognisable test messages."""
    return (number.to_bytes(4, "big") * (size // 4 + 1))[:size]


def data_chunks(packets: list[bytes]) -> list[DataChunk]:
    """Every DATA chunk in these packets (for inspecting what went over a link)."""
    return [c for p in packets for c in parse_ours(p)[1] if isinstance(c, DataChunk)]


def parse_ours(packet: bytes) -> tuple[CommonHeader, list[Chunk]]:
    """Parse a packet of ours as its peer does: both announce zero checksums (RFC 9653)."""
    return parse_packet_untrusted(packet, accept_zero_checksum=True)
