"""VirtualNet: a seeded in-memory datagram network for trio tests.

Sockets bound on a :class:`VirtualNet` have the subset of the ``trio.socket`` UDP API
the ICE driver uses (``await sendto``, ``await recvfrom``, ``getsockname``,
``close``), and the batch interface a peer connection's driver takes
(``open_peer_connection(datagram_socket=...)``: ``wait_readable``, ``receive_into``,
``send``, ``wait_writable``), so the same driver code runs on real UDP and here. The
network loses, duplicates, delays and reorders datagrams from one seeded
``random.Random`` through the shared :class:`~._link.LinkModel`, and
:class:`VirtualNat` rewrites source addresses with a :class:`~._link.Nat` table.
Delivery times are trio clock deadlines, so with ``MockClock(autojump_threshold=0)``
(pytest-trio's ``autojump_clock``) simulated seconds pass instantly.

No tasks run inside the network: a datagram in flight sits in the destination
socket's bounded queue, stamped with its delivery time, and ``recvfrom`` sleeps until
then. The network is usable from one trio run only.
"""

from __future__ import annotations

import ipaddress
import itertools
import random
from dataclasses import dataclass

import trio

from ._link import DelayLine, LinkModel, Nat

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
        self._queue: DelayLine[tuple[bytes, Address]] = DelayLine(net.queue_size)
        self._wakeup = trio.Event()
        self._interrupted = False
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
            self._net._send(bytes(data), nat.table.outbound(self._addr, destination), destination)
        else:
            self._net._send(bytes(data), self._addr, destination)

    async def recvfrom(self, bufsize: int) -> tuple[bytes, Address]:
        while True:
            if self._closed:
                raise trio.ClosedResourceError("socket was closed")
            now = trio.current_time()
            deadline = self._queue.next_time()
            if deadline is not None and deadline <= now:
                _, (data, source) = self._queue.pop()
                await trio.lowlevel.checkpoint()
                return data[:bufsize], source
            if deadline is None:
                deadline = float("inf")
            with trio.move_on_at(deadline):
                await self._wakeup.wait()
            if self._wakeup.is_set() and not self._closed:
                self._wakeup = trio.Event()

    # -- the batch interface (darkswap_trio.webrtc's DatagramSocket) --------------------

    def next_delivery(self) -> float | None:
        """When the next queued datagram arrives (trio time), or None: for steppers."""
        return self._queue.next_time()

    async def wait_readable(self) -> None:
        """Until a datagram has arrived (ClosedResourceError once closed)."""
        while True:
            if self._closed:
                raise trio.ClosedResourceError("socket was closed")
            due = self._queue.next_time()
            if due is not None and due <= trio.current_time():
                await trio.lowlevel.checkpoint()
                return
            with trio.move_on_at(float("inf") if due is None else due):
                await self._wakeup.wait()
            if self._wakeup.is_set() and not self._closed:
                self._wakeup = trio.Event()
            if self._interrupted:
                self._interrupted = False
                return

    async def wait_writable(self) -> None:
        await trio.lowlevel.checkpoint()  # never full

    def interrupt_readers(self) -> None:
        """A task in :meth:`wait_readable` returns now (and finds nothing, perhaps)."""
        self._interrupted = True
        self._wakeup.set()

    def receive_into(self, batch: list[tuple[bytes, Address]], limit: int) -> None:
        """Append the datagrams that have arrived, up to ``limit`` in ``batch``."""
        if len(batch) < limit:
            batch.extend(self._queue.pop_due(trio.current_time(), limit - len(batch)))

    def send(self, datagrams: list[bytes], addr: Address) -> int:
        """Send every datagram to ``addr`` now; returns how many (all)."""
        for data in datagrams:
            self._send_now(data, addr)
        return len(datagrams)

    def _enqueue(self, at: float, data: bytes, source: Address) -> bool:
        if not self._queue.push(at, (data, source)):
            return False
        self._wakeup.set()
        return True


class VirtualNat:
    """A NAT in front of private sockets: a :class:`~._link.Nat` table (``table``, see
    there for ``filtering``, ``mapping`` and ``conntrack_race``) and the sockets bound
    behind it."""

    def __init__(
        self,
        net: VirtualNet,
        public_ip: str,
        filtering: str,
        mapping: str,
        *,
        conntrack_race: bool = False,
    ) -> None:
        self._net = net
        self.table = Nat(public_ip, filtering, mapping, conntrack_race=conntrack_race)
        # Private sockets are only reachable through a mapping (or from inside).
        self._sockets: dict[Address, VirtualSocket] = {}

    @property
    def public_ip(self) -> str:
        return self.table.public_ip

    async def bind(self, addr: Address) -> VirtualSocket:
        """A socket on the private side (``addr`` is its private address)."""
        await trio.lowlevel.checkpoint()
        return self._net._bind(addr, self)

    def mapping(self, private: Address, destination: Address | None = None) -> Address | None:
        """The public address of ``private`` (towards ``destination`` if symmetric)."""
        return self.table.mapping(private, destination)


class VirtualNet:
    """The network: sockets by address, NATs, and the seeded impairments (``link``)."""

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
        self.link = LinkModel(loss, duplicate, jitter=jitter, delay=delay)
        self.queue_size = queue_size
        self._sockets: dict[Address, VirtualSocket] = {}
        self._nats: list[VirtualNat] = []
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
        nat = VirtualNat(self, public_ip, filtering, mapping, conntrack_race=conntrack_race)
        self._nats.append(nat)
        return nat

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
        counts, link, rng = self._counts, self.link, self.rng
        counts["sent"] += 1
        if link.lost(rng):
            counts["lost"] += 1
            return
        copies = link.copies(rng)
        if copies > 1:
            counts["duplicated"] += 1
        if private_network is not None:
            sock = private_network._sockets.get(destination)
        elif (nat := self._nat_owning(destination)) is not None:
            private = nat.table.inbound(destination, source)
            if private is None:
                counts["dropped_by_nat"] += 1
                nat.table.filtered(destination, source)
                return
            sock = nat._sockets.get(private)
        else:
            sock = self._sockets.get(destination)
        if sock is None:
            counts["dropped_no_listener"] += 1
            return
        now = trio.current_time()
        for _ in range(copies):
            if sock._enqueue(link.arrival(rng, now), data, source):
                counts["delivered"] += 1
            else:
                counts["dropped_queue_full"] += 1

    def _nat_owning(self, public: Address) -> VirtualNat | None:
        for nat in self._nats:
            if nat.table.owns(public):
                return nat
        return None
