"""The one seeded link model of every simulated network in :mod:`darkswap_trio.testing`.

:class:`LinkModel` says what happens to a datagram on its way (loss, duplication,
delay, jitter, reordering, outages); every random draw comes from the ``rng`` the
caller passes, so a run is reproducible from its seed. :class:`DelayLine` holds
datagrams in flight by arrival time, :class:`SimulatedLink` is one path (a model, a
delay line and a log of what was offered), and :class:`Nat` is an RFC 4787 NAT
table. No clock and no I/O: :class:`~._sctp_pair.SctpPair` and
:class:`~._ice_pair.IcePairSimulator` step these in simulated time, and
:class:`~._virtualnet.VirtualNet` maps arrival times onto trio's clock.
"""

from __future__ import annotations

import heapq
import itertools
import random
from typing import Generic, TypeVar

__all__ = ["DelayLine", "LinkModel", "Nat", "SimulatedLink"]

Address = tuple[str, int]
T = TypeVar("T")


class LinkModel:
    """The impairments of a datagram path.

    ``loss`` and ``duplicate`` are probabilities per datagram. Each copy arrives after
    ``delay`` plus up to ``jitter`` (uniform), and with probability ``reorder`` is
    held back by up to three more delays (overtaken by later datagrams). ``up=False``
    is an outage: everything offered is lost. ``reorder_jitter`` is an alias of
    ``jitter`` (the name :class:`~._ice_pair.IcePairSimulator` used).

    One uniform draw per copy gives both its jitter and whether it is held back, so
    each simulator draws exactly as it did when each had its own model.
    """

    def __init__(
        self,
        loss: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        jitter: float = 0.0,
        delay: float = 0.01,
        *,
        up: bool = True,
        reorder_jitter: float | None = None,
    ) -> None:
        self.loss = loss
        self.duplicate = duplicate
        self.reorder = reorder
        self.jitter = jitter if reorder_jitter is None else reorder_jitter
        self.delay = delay
        self.up = up

    @property
    def reorder_jitter(self) -> float:
        return self.jitter

    @reorder_jitter.setter
    def reorder_jitter(self, value: float) -> None:
        self.jitter = value

    def __repr__(self) -> str:
        return (
            f"LinkModel(loss={self.loss}, duplicate={self.duplicate}, reorder={self.reorder}, "
            f"jitter={self.jitter}, delay={self.delay}, up={self.up})"
        )

    def lost(self, rng: random.Random) -> bool:
        return not self.up or rng.random() < self.loss

    def copies(self, rng: random.Random) -> int:
        return 2 if rng.random() < self.duplicate else 1

    def arrival(self, rng: random.Random, now: float) -> float:
        """When one copy sent at ``now`` arrives."""
        draw = rng.random()
        extra = draw * self.jitter
        if draw < self.reorder:
            extra += rng.random() * self.delay * 3
        return now + self.delay + extra

    def arrivals(self, rng: random.Random, now: float) -> list[float]:
        """When the copies of one datagram sent at ``now`` arrive (none if lost)."""
        if self.lost(rng):
            return []
        return [self.arrival(rng, now) for _ in range(self.copies(rng))]


class DelayLine(Generic[T]):
    """Datagrams in flight by arrival time (ties in the order sent); ``capacity``
    bounds how many it holds (a receive queue), None for no bound."""

    def __init__(self, capacity: int | None = None) -> None:
        self.capacity = capacity
        self._heap: list[tuple[float, int, T]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, at: float, item: T) -> bool:
        """Add ``item`` arriving at ``at``; False (dropped) when full."""
        if self.capacity is not None and len(self._heap) >= self.capacity:
            return False
        heapq.heappush(self._heap, (at, next(self._seq), item))
        return True

    def next_time(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pop(self) -> tuple[float, T]:
        """The earliest arrival and its time (IndexError when empty)."""
        at, _, item = heapq.heappop(self._heap)
        return at, item

    def pop_due(self, now: float, limit: int | None = None) -> list[T]:
        """What has arrived by ``now`` (at most ``limit`` items), in arrival order."""
        heap = self._heap
        out: list[T] = []
        while heap and heap[0][0] <= now and (limit is None or len(out) < limit):
            out.append(heapq.heappop(heap)[2])
        return out


class SimulatedLink(Generic[T]):
    """One path: a :class:`LinkModel` drawing from ``rng``, what is in flight, and
    ``sent`` (every datagram offered, for inspection).

    Built from ``model`` (shared with whoever else holds it) or from the keyword
    impairments of :class:`LinkModel`.
    """

    def __init__(
        self,
        rng: random.Random,
        loss: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        delay: float = 0.01,
        *,
        jitter: float = 0.0,
        model: LinkModel | None = None,
    ) -> None:
        self.rng = rng
        self.model = (
            model if model is not None else LinkModel(loss, duplicate, reorder, jitter, delay)
        )
        self.sent: list[T] = []
        self.line: DelayLine[T] = DelayLine()

    @property
    def up(self) -> bool:
        """False: an outage, everything offered is lost."""
        return self.model.up

    @up.setter
    def up(self, value: bool) -> None:
        self.model.up = value

    def push(self, item: T, now: float) -> None:
        """Offer ``item`` at ``now``: lost, delivered once, or twice."""
        self.sent.append(item)
        for at in self.model.arrivals(self.rng, now):
            self.line.push(at, item)

    def push_plain(self, item: T, now: float) -> None:
        """Offer ``item`` subject to loss only: no duplicate, no jitter (a server's reply)."""
        self.sent.append(item)
        if not self.model.lost(self.rng):
            self.line.push(now + self.model.delay, item)

    def next_time(self) -> float | None:
        return self.line.next_time()

    def pop(self) -> tuple[float, T]:
        return self.line.pop()

    def pop_due(self, now: float) -> list[T]:
        return self.line.pop_due(now)


class Nat:
    """The translation table of a NAT (RFC 4787), without sockets or time.

    ``mapping``: ``"endpoint-independent"`` (one public port per private address) or
    ``"address-and-port-dependent"`` (a new public port per destination: a "symmetric"
    NAT, which defeats server-reflexive candidates). ``filtering``:
    ``"endpoint-independent"`` (full cone), ``"address-dependent"`` or
    ``"address-and-port-dependent"``: inbound datagrams pass only from destinations the
    private address sent to before.

    ``conntrack_race``: behave like a Linux router whose filter does not drop
    unsolicited packets before conntrack confirms them (no ``ct state new drop``): a
    filtered inbound datagram still claims its (public address, source) tuple, so
    when the private address later sends to that source itself, the router cannot use
    its usual public port for it and picks another one, for that destination only.
    Hole punching then fails unless the far side learns the new port (peer-reflexive).
    ``tests/netlab`` shows the real thing.
    """

    BEHAVIOURS = ("endpoint-independent", "address-dependent", "address-and-port-dependent")

    def __init__(
        self,
        public_ip: str,
        filtering: str = "address-and-port-dependent",
        mapping: str = "endpoint-independent",
        *,
        conntrack_race: bool = False,
        first_port: int = 40000,
    ) -> None:
        if filtering not in self.BEHAVIOURS:
            raise ValueError(f"unknown filtering {filtering!r}")
        if mapping not in ("endpoint-independent", "address-and-port-dependent"):
            raise ValueError(f"unknown mapping {mapping!r}")
        self.public_ip = public_ip
        self.filtering = filtering
        self.mapping_behaviour = mapping
        self.conntrack_race = conntrack_race
        self._ports = itertools.count(first_port)
        # (private, destination or None) -> public, and back.
        self._public_by_key: dict[tuple[Address, Address | None], Address] = {}
        self._key_by_public: dict[Address, tuple[Address, Address | None]] = {}
        self._contacted: dict[Address, set[Address]] = {}
        # (public, remote) tuples claimed by filtered inbound datagrams (the race), and
        # the per-destination ports that private addresses got because of them.
        self._claimed: set[tuple[Address, Address]] = set()
        self._remapped: dict[tuple[Address, Address], Address] = {}

    def mapping(self, private: Address, destination: Address | None = None) -> Address | None:
        """The public address of ``private`` (towards ``destination`` if symmetric)."""
        return self._public_by_key.get(self._key(private, destination))

    def owns(self, public: Address) -> bool:
        """Whether ``public`` is one of this NAT's mappings."""
        return public in self._key_by_public

    def outbound(self, private: Address, destination: Address) -> Address:
        """The public source of a datagram from ``private`` to ``destination``."""
        remapped = self._remapped.get((private, destination))
        if remapped is not None:
            self._contacted.setdefault(private, set()).add(destination)
            return remapped
        key = self._key(private, destination)
        public = self._public_by_key.get(key)
        if public is not None and (public, destination) in self._claimed:
            return self._remap(private, destination)
        if public is None:
            public = (self.public_ip, next(self._ports))
            self._public_by_key[key] = public
            self._key_by_public[public] = key
        self._contacted.setdefault(private, set()).add(destination)
        return public

    def inbound(self, public: Address, source: Address) -> Address | None:
        """The private destination of a datagram from ``source`` to ``public``, or None
        if the NAT drops it (call :meth:`filtered` then)."""
        key = self._key_by_public.get(public)
        if key is None or (public, source) in self._claimed:
            return None  # a claimed tuple belongs to the router, not to the socket
        private, bound_destination = key
        if bound_destination is not None and bound_destination != source:
            return None
        contacted = self._contacted.get(private, set())
        if self.filtering == "address-dependent":
            if all(host != source[0] for host, _ in contacted):
                return None
        elif self.filtering == "address-and-port-dependent" and source not in contacted:
            return None
        return private

    def filtered(self, public: Address, source: Address) -> None:
        """An inbound datagram was dropped by the filter (it may still claim a tuple)."""
        if self.conntrack_race and len(self._claimed) < 4096:
            self._claimed.add((public, source))

    def _key(self, private: Address, destination: Address | None) -> tuple[Address, Address | None]:
        symmetric = self.mapping_behaviour == "address-and-port-dependent"
        return (private, destination if symmetric else None)

    def _remap(self, private: Address, destination: Address) -> Address:
        # The usual port is taken towards this destination: a new one, bound to it.
        public = (self.public_ip, next(self._ports))
        self._remapped[(private, destination)] = public
        self._key_by_public[public] = (private, destination)
        self._contacted.setdefault(private, set()).add(destination)
        return public
