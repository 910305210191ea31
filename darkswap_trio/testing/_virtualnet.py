"""VirtualNet: a seeded in-memory datagram network for trio tests.

Sockets bound on a :class:`VirtualNet` have the subset of the ``trio.socket`` UDP API
the ICE driver uses (``await sendto``, ``await recvfrom``, ``getsockname``,
``close``), and the batch interface a peer connection's driver takes
(``open_peer_connection(datagram_socket=...)``: ``wait_readable``, ``receive_into``,
``send``, ``wait_writable``), so the same driver code runs on real UDP and here. The network loses,
duplicates, delays and reorders datagrams from one seeded ``random.Random``, and
:class:`VirtualNat` rewrites source addresses the way a NAT does. Delivery times are
trio clock deadlines, so with ``MockClock(autojump_threshold=0)`` (pytest-trio's
``autojump_clock``) simulated seconds pass instantly.

No tasks run inside the network: a datagram in flight sits in the destination
socket's bounded queue, stamped with its delivery time, and ``recvfrom`` sleeps until
then. The network is usable from one trio run only.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import random
from dataclasses import dataclass

import trio

__all__ = ["VirtualNat", "VirtualNet", "VirtualNetStatistics", "VirtualSocket"]

Address = tuple[str, int]


@dataclass(frozen=True)
class VirtualNetStatistics:
    sent: int
    delivered: int
    lost: int
    duplicated: int
    dropped_no_listener: int
    dropped_queue_full: int
    dropped_by_nat: int


class VirtualSocket:
    """One bound UDP-like endpoint of a :class:`VirtualNet`."""

    def __init__(self, net: VirtualNet, addr: Address, nat: VirtualNat | None) -> None:
        self._net = net
        self._addr = addr
        self._nat = nat
        self._queue: list[tuple[float, int, bytes, Address]] = []
        self._wakeup = trio.Event()
        self._closed = False
        self.send_errors = 0  # the batch interface's counter (nothing is refused here)

    def getsockname(self) -> Address:
        return self._addr

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._net._unbind(self)
            self._wakeup.set()

    async def sendto(self, data: bytes, addr: Address) -> int:
        await trio.lowlevel.checkpoint()
        self._send_now(data, addr)
        return len(data)

    def _send_now(self, data: bytes, addr: Address) -> None:
        if self._closed:
            raise trio.ClosedResourceError("socket was closed")
        destination = (ipaddress.ip_address(addr[0]).compressed, int(addr[1]))
        nat = self._nat
        if nat is not None and destination in nat._sockets:
            # Same private network: no translation.
            self._net._send(bytes(data), self._addr, destination, nat)
        elif nat is not None:
            self._net._send(bytes(data), nat._outbound(self._addr, destination), destination)
        else:
            self._net._send(bytes(data), self._addr, destination)

    async def recvfrom(self, bufsize: int) -> tuple[bytes, Address]:
        while True:
            if self._closed:
                raise trio.ClosedResourceError("socket was closed")
            now = trio.current_time()
            if self._queue and self._queue[0][0] <= now:
                _, _, data, source = heapq.heappop(self._queue)
                await trio.lowlevel.checkpoint()
                return data[:bufsize], source
            deadline = self._queue[0][0] if self._queue else float("inf")
            with trio.move_on_at(deadline):
                await self._wakeup.wait()
            if self._wakeup.is_set() and not self._closed:
                self._wakeup = trio.Event()

    # -- the batch interface (darkswap_trio.webrtc's DatagramSocket) --------------------

    def next_delivery(self) -> float | None:
        """When the next queued datagram arrives (trio time), or None: for steppers."""
        return self._queue[0][0] if self._queue else None

    async def wait_readable(self) -> None:
        """Until a datagram has arrived (ClosedResourceError once closed)."""
        while True:
            if self._closed:
                raise trio.ClosedResourceError("socket was closed")
            if self._queue and self._queue[0][0] <= trio.current_time():
                await trio.lowlevel.checkpoint()
                return
            deadline = self._queue[0][0] if self._queue else float("inf")
            with trio.move_on_at(deadline):
                await self._wakeup.wait()
            if self._wakeup.is_set() and not self._closed:
                self._wakeup = trio.Event()

    async def wait_writable(self) -> None:
        await trio.lowlevel.checkpoint()  # never full

    def receive_into(self, batch: list[tuple[bytes, Address]], limit: int) -> None:
        """Append the datagrams that have arrived, up to ``limit`` in ``batch``."""
        now, queue = trio.current_time(), self._queue
        while len(batch) < limit and queue and queue[0][0] <= now:
            _, _, data, source = heapq.heappop(queue)
            batch.append((data, source))

    def send(self, datagrams: list[bytes], addr: Address) -> int:
        """Send every datagram to ``addr`` now; returns how many (all)."""
        for data in datagrams:
            self._send_now(data, addr)
        return len(datagrams)

    def _enqueue(self, at: float, seq: int, data: bytes, source: Address) -> bool:
        if len(self._queue) >= self._net.queue_size:
            return False
        heapq.heappush(self._queue, (at, seq, data, source))
        self._wakeup.set()
        return True


class VirtualNat:
    """A NAT in front of private sockets, with RFC 4787 mapping and filtering behaviours.

    ``mapping``: ``"endpoint-independent"`` (one public port per private socket) or
    ``"address-and-port-dependent"`` (a new public port per destination: a "symmetric"
    NAT, which defeats server-reflexive candidates). ``filtering``:
    ``"endpoint-independent"`` (full cone), ``"address-dependent"`` or
    ``"address-and-port-dependent"``: inbound datagrams pass only from destinations the
    private socket sent to before.

    ``conntrack_race``: behave like a Linux router whose filter does not drop
    unsolicited packets before conntrack confirms them (no ``ct state new drop``): a
    filtered inbound datagram still claims its (public address, source) tuple, so
    when the private socket later sends to that source itself, the router cannot use
    the socket's usual public port for it and picks another one, for that
    destination only. Hole punching then fails unless the far side learns the new
    port (peer-reflexive). ``tests/netlab`` shows the real thing.
    """

    _BEHAVIOURS = ("endpoint-independent", "address-dependent", "address-and-port-dependent")

    def __init__(
        self,
        net: VirtualNet,
        public_ip: str,
        filtering: str,
        mapping: str,
        *,
        conntrack_race: bool = False,
    ) -> None:
        if filtering not in self._BEHAVIOURS:
            raise ValueError(f"unknown filtering {filtering!r}")
        if mapping not in ("endpoint-independent", "address-and-port-dependent"):
            raise ValueError(f"unknown mapping {mapping!r}")
        self._net = net
        self.public_ip = public_ip
        self.filtering = filtering
        self.mapping_behaviour = mapping
        self._ports = itertools.count(40000)
        # (private, destination or None) -> public, and back.
        self._public_by_key: dict[tuple[Address, Address | None], Address] = {}
        self._key_by_public: dict[Address, tuple[Address, Address | None]] = {}
        self._contacted: dict[Address, set[Address]] = {}
        self.conntrack_race = conntrack_race
        # (public, remote) tuples claimed by filtered inbound datagrams (the race), and
        # the per-destination ports that private sockets got because of them.
        self._claimed: set[tuple[Address, Address]] = set()
        self._remapped: dict[tuple[Address, Address], Address] = {}
        # Private sockets are only reachable through a mapping (or from inside).
        self._sockets: dict[Address, VirtualSocket] = {}

    async def bind(self, addr: Address) -> VirtualSocket:
        """A socket on the private side (``addr`` is its private address)."""
        await trio.lowlevel.checkpoint()
        return self._net._bind(addr, self)

    def mapping(self, private: Address, destination: Address | None = None) -> Address | None:
        """The public address of ``private`` (towards ``destination`` if symmetric)."""
        return self._public_by_key.get(self._key(private, destination))

    def _key(self, private: Address, destination: Address | None) -> tuple[Address, Address | None]:
        symmetric = self.mapping_behaviour == "address-and-port-dependent"
        return (private, destination if symmetric else None)

    def _outbound(self, private: Address, destination: Address) -> Address:
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
            self._net._routes[public] = self
        self._contacted.setdefault(private, set()).add(destination)
        return public

    def _remap(self, private: Address, destination: Address) -> Address:
        # The usual port is taken towards this destination: a new one, bound to it.
        public = (self.public_ip, next(self._ports))
        self._remapped[(private, destination)] = public
        self._key_by_public[public] = (private, destination)
        self._net._routes[public] = self
        self._contacted.setdefault(private, set()).add(destination)
        return public

    def _filtered(self, public: Address, source: Address) -> None:
        """An inbound datagram was dropped by the filter (it may still claim a tuple)."""
        if self.conntrack_race and len(self._claimed) < 4096:
            self._claimed.add((public, source))

    def _inbound(self, public: Address, source: Address) -> Address | None:
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


class VirtualNet:
    """The network: sockets by address, NAT routes, and the seeded impairments."""

    def __init__(
        self,
        seed: int = 0,
        *,
        loss: float = 0.0,
        duplicate: float = 0.0,
        delay: float = 0.005,
        jitter: float = 0.0,
        queue_size: int = 256,
    ) -> None:
        self.rng = random.Random(seed)
        self.loss = loss
        self.duplicate = duplicate
        self.delay = delay
        self.jitter = jitter
        self.queue_size = queue_size
        self._sockets: dict[Address, VirtualSocket] = {}
        self._routes: dict[Address, VirtualNat] = {}
        self._seq = itertools.count()
        self._ports = itertools.count(10000)
        self._counts = dict.fromkeys(VirtualNetStatistics.__dataclass_fields__, 0)

    async def bind(self, addr: Address) -> VirtualSocket:
        """A socket on the open network; port 0 picks a free port."""
        await trio.lowlevel.checkpoint()
        return self._bind(addr, None)

    def add_nat(
        self,
        public_ip: str,
        filtering: str = "address-and-port-dependent",
        mapping: str = "endpoint-independent",
        *,
        conntrack_race: bool = False,
    ) -> VirtualNat:
        """A NAT with its own private address space (see :class:`VirtualNat`)."""
        return VirtualNat(self, public_ip, filtering, mapping, conntrack_race=conntrack_race)

    def statistics(self) -> VirtualNetStatistics:
        return VirtualNetStatistics(**self._counts)

    def _bind(self, addr: Address, nat: VirtualNat | None) -> VirtualSocket:
        host = ipaddress.ip_address(addr[0]).compressed
        port = int(addr[1]) or next(self._ports)
        key = (host, port)
        table = nat._sockets if nat is not None else self._sockets
        if key in table:
            raise OSError(98, f"address {key} already in use")
        sock = VirtualSocket(self, key, nat)
        table[key] = sock
        return sock

    def _unbind(self, sock: VirtualSocket) -> None:
        table = sock._nat._sockets if sock._nat is not None else self._sockets
        table.pop(sock.getsockname(), None)

    def _send(
        self,
        data: bytes,
        source: Address,
        destination: Address,
        private_network: VirtualNat | None = None,
    ) -> None:
        counts = self._counts
        counts["sent"] += 1
        if self.rng.random() < self.loss:
            counts["lost"] += 1
            return
        copies = 1
        if self.rng.random() < self.duplicate:
            counts["duplicated"] += 1
            copies = 2
        if private_network is not None:
            sock = private_network._sockets.get(destination)
        elif (nat := self._routes.get(destination)) is not None:
            private = nat._inbound(destination, source)
            if private is None:
                counts["dropped_by_nat"] += 1
                nat._filtered(destination, source)
                return
            sock = nat._sockets.get(private)
        else:
            sock = self._sockets.get(destination)
        if sock is None:
            counts["dropped_no_listener"] += 1
            return
        now = trio.current_time()
        for _ in range(copies):
            at = now + self.delay + self.rng.random() * self.jitter
            if sock._enqueue(at, next(self._seq), data, source):
                counts["delivered"] += 1
            else:
                counts["dropped_queue_full"] += 1
