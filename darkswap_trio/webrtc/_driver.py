"""The trio driver of a :class:`~darkswap_trio.proto.peer.PeerCore`: one socket, one task.

* :meth:`PeerDriver.run` is the task that owns the core and reads the socket: it waits
  until the socket is readable (or the next timer is due), takes every datagram the
  kernel holds (coalesced runs with UDP GRO, see :mod:`._udp_offload`) and feeds them
  to the core as one batch (so SCTP bundles and delays its SACKs), fires due timers,
  hands the events to :class:`~._peer_channels.PeerChannels` and sends the core's
  datagrams in runs (one syscall for a run of equal sizes, UDP GSO). A full socket
  keeps the rest in the core until it drains; then the task waits until it is writable.
* Application calls (send on a channel, open/close a channel, trickled candidates) are
  synchronous calls into the core from the caller's task -- trio switches tasks only
  at ``await``, so each call is atomic and the core task is always parked between
  batches -- then :meth:`PeerDriver.wake`, which flushes right there: the datagrams
  leave from the caller's task, with no hop to the core task (that hop and the one
  from a separate reader task were most of a small message's round trip). Only when
  the socket is full does the caller leave the flush to the core task.
* A data channel's ``receive()`` that finds nothing queued reads the socket itself
  (:meth:`PeerDriver.wait_message`) when the socket can interrupt its readers and no
  other receiver does: the core task hands the socket over (and keeps its timers), so
  a message is returned in the pass that read it, without waking the core task first
  and then the receiver (one scheduler pass, and the core task's bookkeeping, off
  every round trip). The receiver hands the socket back to the core task when it has
  its message; whatever else gives it news (a message through TURN over TCP, a close,
  a failure) interrupts its wait. What its read made (a SACK due, a STUN answer) is
  left unflushed: the reply's send usually carries it, else the next task to wait on
  the socket (the receiver again, or the core task one scheduling pass later) sends
  it first. So in a conversation the core task only looks, once per round trip, and
  goes back to sleep: no flush, no timer update, usually no pass of its own.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Protocol

import trio

from ..proto import peer
from ._peer_channels import PeerChannels

if TYPE_CHECKING:
    from ._datachannel import DataChannel

__all__ = ["DatagramSocket", "PeerDriver"]

_BATCH = 64  # datagrams per read and per send
_MAX_READS = 4  # batches read before the core's output goes out
Address = tuple[str, int]


class DatagramSocket(Protocol):
    """What the driver needs of its socket: a UDP socket (``UdpBatchSocket``) or a
    ``darkswap_trio.testing.VirtualSocket``. ``send`` returns how many it took before
    it would block; refused datagrams count as taken and in ``send_errors``."""

    send_errors: int

    def getsockname(self) -> Address: ...

    def wait_readable(self) -> Awaitable[None]: ...

    async def wait_writable(self) -> None: ...

    def receive_into(self, batch: list[tuple[bytes, Address]], limit: int) -> None: ...

    def send(self, datagrams: list[bytes], addr: Address) -> int: ...


class InterruptibleSocket(DatagramSocket, Protocol):
    """A socket that can end a ``wait_readable`` early (with ClosedResourceError, or by
    returning): what lets a receiver read it itself (``PeerDriver.wait_message``)."""

    def interrupt_readers(self) -> None: ...


class PeerDriver:
    """See the module docstring. :attr:`app` is where the core's events go."""

    def __init__(self, core: peer.PeerCore, sock: DatagramSocket):
        self.core = core
        self.sock = sock
        interrupt = getattr(sock, "interrupt_readers", None)
        self._interrupt = interrupt if callable(interrupt) else None
        self.app = PeerChannels(core, self.wake, self.wait_message if self._interrupt else None)
        self.datagrams_sent = 0
        self.send_errors = 0
        self.receiver_reads = 0  # socket reads done by a receiving application task
        self._timers: trio.CancelScope | None = None  # the core task's, while it waits
        self._flushing = False
        self._unsent: deque[tuple[bytes, Address]] = deque()  # the socket was full
        # The socket's reader: the core task (in wait_readable when _core_reading), or
        # a receiving channel (_reader; _reader_waiting while in wait_readable), while
        # the core task waits parked (_core_parked; its timers still run).
        self._core_reading = False
        self._reader: DataChannel | None = None
        self._reader_waiting = False
        self._core_parked: trio.lowlevel.Task | None = None  # see _park_core
        # A receiver returned with its message and what that read made (a SACK due, a
        # STUN answer) was not flushed yet: the reply's send usually flushes it, else
        # the next waiter on the socket (wait_message or the core task) does.
        self._unflushed = False

    def wake(self) -> None:
        """After any application call into the core: its output goes out now (events
        to the application, datagrams to the socket) and its next deadline is the core
        task's."""
        if self._flushing or self._unsent:
            return  # the flush under way takes it, or the core task once writable
        self._flush_output()

    def _flush_output(self) -> None:
        self._unflushed = False
        self.flush()
        if self._unsent and self._timers is not None:
            self._timers.cancel()  # the socket is full: the core task waits until writable
        else:
            self._set_deadline()

    def _set_deadline(self) -> None:
        # Only ever earlier: most changes move a timer later (SCTP restarts T3 with every
        # DATA it sends), and a deadline that passes for nothing costs one wake-up of the
        # core task, far less than moving the deadline twice per message.
        timers = self._timers
        if timers is not None:
            deadline = self.core.poll_timeout()
            if deadline is not None and deadline < timers.deadline:
                timers.deadline = deadline

    async def wait_message(self, channel: DataChannel) -> None:
        """``channel``'s receive() found nothing: read the socket in this task, unless
        another receiver does or the socket is full (then park: see module docstring).
        Returns when the channel has news, or was interrupted (the caller re-checks)."""
        if self._reader is not None or self._unsent:
            await channel.park()
            return
        if self._core_reading:
            # trio aborts the core task's wait_readable inside cancel(): the socket is
            # free now; the core task notices later and parks with its timers.
            assert self._timers is not None
            self._core_reading = False
            self._timers.cancel()
        self._reader = channel
        sock = self.sock
        try:
            while True:
                if self._unflushed:
                    self._flush_output()  # what an earlier read made (see _unflushed)
                self._reader_waiting = True
                try:
                    await sock.wait_readable()
                except trio.ClosedResourceError:
                    return  # interrupt_readers(): news from elsewhere
                finally:
                    self._reader_waiting = False
                self.receiver_reads += 1
                # One datagram first (or one coalesced run): a round trip's reply is
                # all there is, and trying for more costs a failed recvmsg.
                self._read(1)
                self.app.dispatch()
                if channel.has_news():
                    self._unflushed = True  # usually the reply's send flushes it
                    return
                self._read()
                self.app.dispatch()
                if channel.has_news():
                    self._unflushed = True
                    return
                self._flush_output()  # a STUN check to answer, a SACK due
        finally:
            self._reader = None
            core_task = self._core_parked
            if core_task is not None:
                self._core_parked = None
                trio.lowlevel.reschedule(core_task)

    def deliver(self, batch: list[tuple[bytes, Address]]) -> None:
        """Datagrams read elsewhere (a TURN server's TCP connection): fed to the core
        from the caller's task and flushed, as after an application call."""
        self.core.receive_batch(batch, trio.current_time())
        self.wake()

    async def run(self) -> None:
        """The core task: see the module docstring."""
        core, sock = self.core, self.sock
        while True:
            # One cancel scope until a timer's deadline passes: moving its deadline costs
            # less than a scope per wait, and the data path waits once per batch.
            with trio.CancelScope() as timers:
                self._timers = timers
                # Timers only here: a due one has already cancelled the scope (its
                # deadline is only ever moved earlier), so the batches below need none.
                core.handle_timeout(trio.current_time())
                flush = True
                while True:
                    if flush:
                        self._unflushed = False
                        self.flush()
                        self._set_deadline()
                    flush = True
                    if self._unsent:
                        try:
                            await sock.wait_writable()
                        except trio.ClosedResourceError:
                            continue  # interrupt_readers() wakes every waiter
                        self._send_unsent()
                        continue
                    if self._reader is not None:
                        await self._park_core()  # a receiver reads the socket
                        if self._reader is None:
                            # It has its message; its next receive() usually comes within
                            # a scheduling pass (a round trip's echo): look again after
                            # one, rather than take the socket only to have it taken back.
                            await trio.lowlevel.cancel_shielded_checkpoint()
                        # Whoever waits on the socket next flushes first (wait_message
                        # does), and an application call flushes itself: only output
                        # that a receiver left behind is the core task's to send.
                        flush = self._unflushed
                        continue
                    self._core_reading = True
                    await sock.wait_readable()
                    self._core_reading = False
                    self._read()
            self._timers = None
            self._core_reading = False

    async def _park_core(self) -> None:
        """The core task waits for the receiver to hand the socket back (a ParkingLot
        of one, without the lot: this is once per round trip). Its timers cancel it."""
        self._core_parked = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._unpark_cancelled)

    def _unpark_cancelled(self, _: object) -> trio.lowlevel.Abort:
        self._core_parked = None
        return trio.lowlevel.Abort.SUCCEEDED

    def _read(self, limit: int = _BATCH) -> None:
        """What the socket holds (up to a few batches of ``limit``), fed to the core."""
        core, sock = self.core, self.sock
        for _ in range(_MAX_READS):
            batch: list[tuple[bytes, Address]] = []
            try:
                sock.receive_into(batch, limit)
            except OSError:
                self.send_errors += 1  # an ICMP error reported on the socket
            if batch:
                core.receive_batch(batch, trio.current_time())
            if len(batch) < limit or limit < _BATCH:
                break  # the kernel has no more (or the caller wanted a taste)

    def flush(self) -> None:
        """Events to the application, then the core's datagrams (unless the socket is
        full), then the events that sending made."""
        self._flushing = True
        try:
            self.app.dispatch()
            if not self._unsent:
                self._transmit()
                self.app.dispatch()
        finally:
            self._flushing = False
        reader = self._reader
        if reader is not None and self._reader_waiting and reader.has_news():
            self._interrupt_reader()

    def _interrupt_reader(self) -> None:
        assert self._interrupt is not None
        self._reader_waiting = False  # once is enough
        self._interrupt()

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
        if self._reader_waiting:
            self._interrupt_reader()  # its channel is broken now, or soon the socket closed
