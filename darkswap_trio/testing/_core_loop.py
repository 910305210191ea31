"""Drive the ICE or DTLS core alone (or DTLS over ICE) on a UDP socket: :class:`CoreLoop`.

The library has one driver, and it runs every core together (``PeerConnection``).
Interop tests and benchmarks of one layer against another implementation of it
(aioice, aiortc's ORTC transports) run that layer's core with this loop instead: it
feeds the core datagrams and timers, sends its transmits, and keeps what it hands
up. No backpressure, no limits: test and benchmark use only.
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Callable

import trio

from ..proto import dtls as dtls_mod
from ..proto import ice as ice_mod
from ..proto.dtls._records import is_dtls

__all__ = ["CoreLoop"]


class CoreLoop:
    """``ice`` and/or ``dtls`` on ``sock`` (a non-blocking stdlib UDP socket).

    With ``ice``, STUN is handled and data from validated addresses goes to ``dtls``
    (if set, from then on) or to :attr:`received`. With ``dtls`` alone, datagrams go
    to and come from ``peer``; records land in :attr:`received`, and datagrams that
    are not DTLS (SRTP) in :attr:`other`. Run :meth:`run` in a nursery; call
    :meth:`flush` after calling into a core.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        ice: ice_mod.IceAgent | None = None,
        dtls: dtls_mod.DtlsEndpoint | None = None,
        peer: tuple[str, int] | None = None,
    ) -> None:
        self.sock = sock
        sock.setblocking(False)
        self.ice = ice
        self.dtls = dtls
        self.peer = peer
        self.local = sock.getsockname()[:2]
        self.events: list[object] = []  # every ICE and DTLS event, in order
        self.received: deque[bytes] = deque()
        self.other: deque[bytes] = deque()
        self.changed = trio.lowlevel.ParkingLot()

    def send(self, data: bytes) -> None:
        """Application data: a DTLS record, or (ICE alone) a datagram on the pair."""
        if self.dtls is not None:
            self.dtls.send(data)
        else:
            assert self.ice is not None
            transmit = self.ice.send_data(data)
            if transmit is not None:
                self.sock.sendto(transmit.data, transmit.addr)
        self.flush()

    def send_raw(self, data: bytes) -> None:
        """A datagram to ``peer`` that bypasses the cores (SRTP, say)."""
        assert self.peer is not None
        self.sock.sendto(data, self.peer)

    def flush(self) -> None:
        """Events up, transmits out, waiters woken."""
        now = trio.current_time()
        ice = self.ice
        if ice is not None:
            while (event := ice.poll_event()) is not None:
                self.events.append(event)
                if type(event) is ice_mod.DataReceived:
                    if self.dtls is not None:
                        self.dtls.receive(event.data, now)
                    else:
                        self.received.append(event.data)
            while (transmit := ice.poll_transmit()) is not None:
                self.sock.sendto(transmit.data, transmit.addr)
        dtls = self.dtls
        if dtls is not None:
            while (dtls_event := dtls.poll_event()) is not None:
                self.events.append(dtls_event)
                if type(dtls_event) is dtls_mod.DataReceived:
                    self.received.append(dtls_event.data)
            while (datagram := dtls.poll_transmit()) is not None:
                if ice is None:
                    assert self.peer is not None
                    self.sock.sendto(datagram, self.peer)
                elif (transmit := ice.send_data(datagram)) is not None:
                    self.sock.sendto(transmit.data, transmit.addr)
        self.changed.unpark_all()

    async def wait_for(self, predicate: Callable[[], object]) -> None:
        while not predicate():
            await self.changed.park()

    async def receive(self) -> bytes:
        await self.wait_for(lambda: self.received)
        return self.received.popleft()

    async def run(self) -> None:
        """Datagrams, timers and transmits, until cancelled."""
        sock = self.sock
        while True:
            deadlines = [
                deadline
                for core in (self.ice, self.dtls)
                if core is not None and (deadline := core.poll_timeout()) is not None
            ]
            with trio.move_on_at(min(deadlines, default=float("inf"))):
                await trio.lowlevel.wait_readable(sock)
            now = trio.current_time()
            while True:
                try:
                    data, addr = sock.recvfrom(65536)
                except BlockingIOError:
                    break
                if self.ice is not None:
                    self.ice.receive(data, addr[:2], now, self.local)
                elif is_dtls(data):
                    assert self.dtls is not None
                    self.dtls.receive(data, now)
                else:
                    self.other.append(data)
            for core in (self.ice, self.dtls):
                if core is not None and (d := core.poll_timeout()) is not None and d <= now:
                    core.handle_timeout(now)
            self.flush()
