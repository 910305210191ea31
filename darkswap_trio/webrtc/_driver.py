"""The trio driver of a :class:`~darkswap_trio.proto.peer.PeerCore`: one socket, two tasks.

* :meth:`PeerDriver.read_datagrams` waits until the socket is readable, takes every
  datagram the kernel holds (coalesced runs with UDP GRO, see :mod:`._udp_offload`)
  and hands the batch to the core task through a bounded memory channel (full: the
  reader waits and the kernel drops, as UDP does);
* :meth:`PeerDriver.run` is the only task that feeds the core: per wake-up it takes
  every batch already queued (so SCTP bundles and delays its SACKs), fires due
  timers, hands the events to :class:`~._peer_channels.PeerChannels` and sends the
  core's datagrams in runs (one syscall for a run of equal sizes, UDP GSO). A full
  socket keeps the rest in the core until it drains.

Application calls (send on a channel, open/close a channel, trickled candidates) are
synchronous calls into the core from the caller's task -- trio switches tasks only
at ``await``, so each call is atomic -- then :meth:`PeerDriver.wake`.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

import trio

from ..proto import peer
from ._peer_channels import PeerChannels

__all__ = ["DatagramSocket", "PeerDriver"]

_BATCH = 64  # datagrams per hand-over and per send
Address = tuple[str, int]


class DatagramSocket(Protocol):
    """What the driver needs of its socket: a UDP socket (``UdpBatchSocket``) or a
    ``darkswap_trio.testing.VirtualSocket``. ``send`` returns how many it took before
    it would block; refused datagrams count as taken and in ``send_errors``."""

    send_errors: int

    def getsockname(self) -> Address: ...

    async def wait_readable(self) -> None: ...

    async def wait_writable(self) -> None: ...

    def receive_into(self, batch: list[tuple[bytes, Address]], limit: int) -> None: ...

    def send(self, datagrams: list[bytes], addr: Address) -> int: ...


class PeerDriver:
    """See the module docstring. :attr:`app` is where the core's events go."""

    def __init__(self, core: peer.PeerCore, sock: DatagramSocket, *, inbox_size: int = 16):
        self.core = core
        self.sock = sock
        self.app = PeerChannels(core, self.wake)
        self.datagrams_sent = 0
        self.send_errors = 0
        self._inbox_send, self._inbox_receive = trio.open_memory_channel[
            list[tuple[bytes, Address]] | None
        ](inbox_size)
        self._wake_pending = False
        self._unsent: deque[tuple[bytes, Address]] = deque()  # the socket was full

    def wake(self) -> None:
        """Make the core task flush: called after any application call into the core."""
        if not self._wake_pending:
            self._wake_pending = True
            try:
                self._inbox_send.send_nowait(None)
            except (trio.WouldBlock, trio.ClosedResourceError):
                pass  # batches are queued: the core task runs and flushes anyway

    async def read_datagrams(self) -> None:
        """The reader task: batches of (data, addr) into the core task's inbox."""
        sock, send = self.sock, self._inbox_send
        while True:
            await sock.wait_readable()
            batch: list[tuple[bytes, Address]] = []
            try:
                sock.receive_into(batch, _BATCH)
            except OSError:
                self.send_errors += 1  # an ICMP error reported on the socket
            if batch:
                await send.send(batch)

    async def run(self) -> None:
        """The core task: see the module docstring."""
        core, receive = self.core, self._inbox_receive
        item: list[tuple[bytes, Address]] | None = None
        while True:
            # One cancel scope until a timer's deadline passes: moving its deadline costs
            # less than a scope per wait, and the data path waits once per batch.
            with trio.CancelScope() as timers:
                while True:
                    now = trio.current_time()
                    self._wake_pending = False
                    if item:
                        core.receive_batch(item, now)
                    while True:  # everything already queued, before any flush
                        try:
                            item = receive.receive_nowait()
                        except trio.WouldBlock:
                            break
                        if item:
                            core.receive_batch(item, now)
                    item = None
                    core.handle_timeout(now)
                    self.flush()
                    deadline = core.poll_timeout()
                    timers.deadline = float("inf") if deadline is None else deadline
                    if self._unsent:
                        await self.sock.wait_writable()
                        self._send_unsent()
                        continue
                    item = await receive.receive()

    def flush(self) -> None:
        """Events to the application, then the core's datagrams (unless the socket is
        full), then the events that sending made."""
        self.app.dispatch()
        if not self._unsent:
            self._transmit()
            self.app.dispatch()

    def _transmit(self) -> None:
        sock, poll = self.sock, self.core.poll_datagrams
        while (run := poll(_BATCH)) is not None:
            addr, datagrams = run
            errors = sock.send_errors
            taken = sock.send(datagrams, addr)
            refused = sock.send_errors - errors
            self.send_errors += refused
            self.datagrams_sent += taken - refused
            if taken < len(datagrams):
                self._unsent.extend((datagram, addr) for datagram in datagrams[taken:])
                return

    def _send_unsent(self) -> None:
        unsent, sock = self._unsent, self.sock
        while unsent:
            data, addr = unsent[0]
            errors = sock.send_errors
            if not sock.send([data], addr):
                return
            if sock.send_errors == errors:
                self.datagrams_sent += 1
            else:
                self.send_errors += 1
            unsent.popleft()

    def close(self) -> None:
        """Local close: SCTP ABORT and DTLS close_notify go out now (best effort)."""
        self.core.close(trio.current_time())
        self._unsent.clear()
        self.flush()
        self._unsent.clear()
