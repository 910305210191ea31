"""RelayCircuit: one relay circuit as a ``trio.abc.Channel[bytes]``.

Flow control follows docs/PROTOCOL.md section 5.2: we may send only as many payload
bytes as the credit we hold, and we return credit to the far end as our application
consumes what it received. Because the far end can never send beyond the credit we
granted, the receive buffer is bounded by the circuit window without ever blocking
the session's reader task.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from ..proto.signaling import CircuitLimits


@dataclass(frozen=True)
class CircuitStatistics:
    relay_id: str
    peer_id: str
    bytes_sent: int
    bytes_received: int
    messages_sent: int
    messages_received: int
    send_credit: int  # payload bytes we may still send before credit returns
    buffered_bytes: int  # received, not yet taken by receive()
    closed: bool
    close_reason: str | None


class CircuitClosedError(trio.BrokenResourceError):
    """The circuit was closed by the far end or the relay; ``reason`` says why."""

    def __init__(self, relay_id: str, reason: str) -> None:
        super().__init__(f"relay circuit {relay_id} closed: {reason}")
        self.relay_id = relay_id
        self.reason = reason


class RelayCircuit(trio.abc.Channel[bytes]):
    """A bidirectional message channel to ``peer_id`` through a relay.

    ``send`` waits for credit (backpressure from the far end's reader), raises
    ``ValueError`` for a message larger than ``limits.max_data_frame``,
    :class:`CircuitClosedError` (a BrokenResourceError) once the circuit is gone and
    ``trio.ClosedResourceError`` after our own ``aclose``. ``receive`` raises
    ``trio.EndOfChannel`` once the circuit closed and the buffer is drained.
    """

    def __init__(
        self,
        relay_id: str,
        relay_key: bytes,
        peer_id: str,
        limits: CircuitLimits,
        *,
        initiator: bool,
        send_data: Callable[[bytes], Awaitable[None]],
        try_send_data: Callable[[bytes], bool],
        flush: Callable[[], Awaitable[None]],
        flush_needed: Callable[[], bool],
        send_credit: Callable[[bytes, int], Awaitable[None]],
        send_close: Callable[[str], Awaitable[None]],
        on_closed: Callable[[RelayCircuit], None],
        blocking: Callable[[], None] | None = None,
    ) -> None:
        self.relay_id = relay_id
        self.relay_key = relay_key  # the UUID's 16 bytes, used in binary frames
        self.peer_id = peer_id
        self.limits = limits
        self.initiator = initiator
        self._send_data = send_data
        self._try_send_data = try_send_data
        self._flush = flush
        self._flush_needed = flush_needed
        self._send_credit = send_credit
        self._send_close = send_close
        self._on_closed = on_closed
        self._blocking = blocking  # told when a receiver is about to block (a schedule point)
        self._credit = limits.window
        self._credit_changed = trio.Event()
        self._buffer: deque[bytes] = deque()
        self._buffered = 0
        # The one task waiting in receive()/deliver_to() for news (data, credit to
        # return, a close), parked without an Event: an arrival reschedules it directly.
        self._waiter: trio.lowlevel.Task | None = None
        # deliver_to(): each payload goes to this callable as it arrives, not to _buffer
        self._sink: Callable[[bytes | memoryview], None] | None = None
        self._sink_error: Exception | None = None
        self._unreturned = 0
        self._credit_batch = max(1, min(limits.window // 2, limits.window))
        self._local_closed = False
        self._local_reason = "closed"
        self._remote_reason: str | None = None
        # trio's clock, read directly: trio.current_time() costs two more calls per message
        self._now = trio.lowlevel.current_clock().current_time
        # trio time of the last message either way (an owner's idle policy reads it)
        self.last_activity = self._now()
        self._sending = False
        self._receiving = False
        self.bytes_sent = self.bytes_received = 0
        self.messages_sent = self.messages_received = 0

    # -- called by the session's reader (never block) ------------------------------

    def _deliver(self, payload: bytes | memoryview) -> bool:
        """Queue received payload (a view is copied, unless it goes to a sink); False
        means the far end broke flow control."""
        if self._remote_reason is not None or self._local_closed:
            return True  # late data after close is dropped, as the protocol says
        sink = self._sink
        if sink is not None and self._sink_error is None:
            return self._deliver_to_sink(sink, payload)
        size = len(payload)
        if self._buffered + size > self.limits.window:
            return False
        self._buffer.append(payload if type(payload) is bytes else bytes(payload))
        self._buffered += size
        self.last_activity = self._now()
        self.bytes_received += size
        self.messages_received += 1
        if self._waiter is not None:
            self._wake()
        return True

    def _wake(self) -> None:
        """Reschedule the task waiting for news, if any (it re-checks what it waits for)."""
        task = self._waiter
        if task is not None:
            self._waiter = None
            trio.lowlevel.reschedule(task)

    def _deliver_to_sink(
        self, sink: Callable[[bytes | memoryview], None], payload: bytes | memoryview
    ) -> bool:
        # Unreturned bytes are what the far end may still have in flight: never above
        # the window it was granted (it is credit we owe, not a buffer).
        if self._unreturned + len(payload) > self.limits.window:
            return False
        self._unreturned += len(payload)
        self.last_activity = self._now()
        self.bytes_received += len(payload)
        self.messages_received += 1
        try:
            sink(payload)
        except Exception as exc:  # raised in deliver_to's task, not the session's reader
            self._sink_error = exc  # what follows is buffered for receive()
            self._wake()
        if self._unreturned >= self._credit_batch:
            self._wake()  # deliver_to() returns the credit
        return True

    def _add_credit(self, increment: int) -> None:
        self._credit += increment
        self._credit_changed.set()

    def _remote_close(self, reason: str) -> None:
        if self._remote_reason is None:
            self._remote_reason = reason
            self._wake()
            self._credit_changed.set()
            self._on_closed(self)

    # -- public API ------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._local_closed or self._remote_reason is not None

    @property
    def close_reason(self) -> str | None:
        return (
            self._remote_reason
            if self._remote_reason
            else (self._local_reason if self._local_closed else None)
        )

    async def send(self, value: bytes) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this circuit")
        data = value if type(value) is bytes else bytes(value)
        size = len(data)
        if size > self.limits.max_data_frame:
            raise ValueError(
                f"message of {size} bytes exceeds the circuit's max_data_frame "
                f"({self.limits.max_data_frame})"
            )
        self._sending = True
        try:
            while True:
                if self._local_closed or self._remote_reason is not None:
                    self._check_sendable()  # raises
                if self._credit >= size:
                    break
                self._credit_changed = trio.Event()
                await self._credit_changed.wait()
            # Counted once written: a send cancelled while waiting for the session's
            # write turn sent nothing, and must not cost credit.
            await self._send_data(data)
            self._credit -= size
            self.bytes_sent += size
            self.messages_sent += 1
            self.last_activity = self._now()
        finally:
            self._sending = False

    def try_send_nowait(self, value: bytes) -> bool:
        """Send ``value`` now if that needs no waiting: no other sender, enough credit,
        the session can write at once. False: nothing was sent (use :meth:`send`).

        Never blocks and is not a checkpoint; raises like :meth:`send` when the circuit
        is closed or the message too large. After True, :attr:`flush_needed` says the
        socket took only part of the frame: call :meth:`flush` (its rest also goes out
        before the session's next frame).
        """
        if self._sending:
            return False
        data = bytes(value)
        if len(data) > self.limits.max_data_frame:
            raise ValueError(
                f"message of {len(data)} bytes exceeds the circuit's max_data_frame "
                f"({self.limits.max_data_frame})"
            )
        self._check_sendable()
        if self._credit < len(data) or not self._try_send_data(data):
            return False
        self._credit -= len(data)
        self.bytes_sent += len(data)
        self.messages_sent += 1
        self.last_activity = self._now()
        return True

    @property
    def flush_needed(self) -> bool:
        """A frame written by :meth:`try_send_nowait` is not wholly in the socket yet."""
        return self._flush_needed()

    async def flush(self) -> None:
        """Finish writing what :meth:`try_send_nowait` started (shielded)."""
        await self._flush()

    def _check_sendable(self) -> None:
        if self._local_closed:
            raise trio.ClosedResourceError("circuit was closed locally")
        if self._remote_reason is not None:
            raise CircuitClosedError(self.relay_id, self._remote_reason)

    def _take(self) -> bytes:
        payload = self._buffer.popleft()
        self._buffered -= len(payload)
        self._unreturned += len(payload)
        return payload

    async def _wait_data_unless_ended(self) -> None:
        """Wait for the next arrival; raise what a receive raises once the circuit ended.

        Parks the task itself (no Event per wait): the reader's ``_wake`` reschedules it.
        Cancelled, it simply leaves: nothing was taken from the buffer.
        """
        if self._local_closed:
            raise trio.ClosedResourceError("circuit was closed locally")
        if self._remote_reason is not None:
            raise trio.EndOfChannel
        if self._blocking is not None:
            self._blocking()
        self._waiter = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort_wait)

    def _abort_wait(self, _: object) -> trio.lowlevel.Abort:
        self._waiter = None
        return trio.lowlevel.Abort.SUCCEEDED

    async def receive(self) -> bytes:
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this circuit")
        self._receiving = True
        try:
            while not self._buffer:
                await self._wait_data_unless_ended()
            payload = self._buffer.popleft()  # _take(), inline: once per message
            size = len(payload)
            self._buffered -= size
            self._unreturned += size
            if self._unreturned >= self._credit_batch and self._remote_reason is None:
                await self._return_credit()
            return payload
        finally:
            self._receiving = False

    async def deliver_to(self, sink: Callable[[bytes | memoryview], None]) -> None:
        """Hand every received message to ``sink`` as it arrives, instead of to
        :meth:`receive`: called by the session's reader task, so a message costs no task
        switch and is never buffered here (``sink`` copies what it keeps: a message may
        be a memoryview of the relay's frame; the far end's
        window then bounds only what is in flight). Messages already buffered go first.

        Runs until the circuit ends, returning credit meanwhile, and raises what
        :meth:`receive` would then (EndOfChannel, ClosedResourceError) or what ``sink``
        raised (what arrives after that is buffered for :meth:`receive`). A receive while
        this runs raises BusyResourceError.
        """
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this circuit")
        self._receiving = True
        try:
            while self._buffer:
                sink(self._take())
            self._sink, self._sink_error = sink, None
            while True:
                if self._sink_error is not None:
                    raise self._sink_error
                if self._unreturned >= self._credit_batch and self._remote_reason is None:
                    await self._return_credit()
                    continue
                await self._wait_data_unless_ended()
        finally:
            self._sink = None
            self._receiving = False

    async def _return_credit(self) -> None:
        increment, self._unreturned = self._unreturned, 0
        # Shielded: the payload is already taken, so a cancelled receive() must not lose
        # it. Bounded: credit is a control frame (no wait behind data) and every write is
        # bounded by the session's SEND_TIMEOUT.
        with trio.CancelScope(shield=True):
            try:
                await self._send_credit(self.relay_key, increment)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the session is gone; the next receive() reports the close

    async def aclose(self, *, reason: str = "closed") -> None:
        """Close the circuit; the far end is told ``closed_by_peer``. Idempotent.

        ``reason`` becomes our :attr:`close_reason` (e.g. ``idle`` or ``refused`` when
        an owner's policy closes it).
        """
        if self._local_closed:
            await trio.lowlevel.checkpoint()
            return
        self._local_closed = True
        self._local_reason = reason
        self._wake()
        self._credit_changed.set()
        already_gone = self._remote_reason is not None
        self._on_closed(self)
        if already_gone:
            await trio.lowlevel.checkpoint()
            return
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            try:
                await self._send_close(self.relay_id)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    def statistics(self) -> CircuitStatistics:
        return CircuitStatistics(
            relay_id=self.relay_id,
            peer_id=self.peer_id,
            bytes_sent=self.bytes_sent,
            bytes_received=self.bytes_received,
            messages_sent=self.messages_sent,
            messages_received=self.messages_received,
            send_credit=self._credit,
            buffered_bytes=self._buffered,
            closed=self.closed,
            close_reason=self.close_reason,
        )

    def __repr__(self) -> str:
        return f"<RelayCircuit {self.relay_id} to {self.peer_id} closed={self.closed}>"
