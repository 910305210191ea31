"""A WebRTC data channel as a trio channel: :class:`DataChannel`.

A :class:`DataChannel` is a handle on one channel of a connection; it owns no task and
talks to the connection only through :class:`ChannelOwner`. Sending queues the message
straight into the SCTP association (a synchronous call, so the buffered amount is
exact) and wakes the task that owns the core; receiving takes messages the owner
handed over (:meth:`DataChannel.on_message`). Each message taken is given back with
:meth:`ChannelOwner.channel_drained`: while a reader is ``receive_buffer_size`` behind,
the core stops taking messages from SCTP, so the receive window closes and the peer's
sender blocks: backpressure all the way to the remote application.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from ..proto.datachannel import ChannelInfo

__all__ = ["ChannelOwner", "DataChannel", "DataChannelStatistics"]


class ChannelOwner(Protocol):
    """What a :class:`DataChannel` needs from its connection (the trio driver).

    ``send_message`` raises ClosedResourceError once the channel or the connection is
    closed, MessageTooLarge (a ValueError) above the peer's limit. The owner calls the
    channel back through its ``on_*`` methods."""

    @property
    def high_water_mark(self) -> int: ...

    def buffered_amount(self, stream_id: int) -> int: ...

    def send_message(self, stream_id: int, message: bytes | str) -> None: ...

    def close_channel(self, stream_id: int) -> None: ...

    def channel_drained(self, stream_id: int, size: int) -> None: ...

    @property
    def wait_message(self) -> Callable[[DataChannel], Awaitable[None]]:
        """``await wait_message(channel)`` returns once ``channel`` may have news (a
        message, its end, a failure): the caller checks again (it may have none)."""
        ...


@dataclass(frozen=True)
class DataChannelStatistics:
    """A snapshot of one channel's counters."""

    id: int
    label: str
    state: str  # "open", "closing" or "closed"
    messages_sent: int
    bytes_sent: int
    messages_received: int
    bytes_received: int
    buffered_amount: int
    received_buffered: int  # messages waiting for receive()


class DataChannel(trio.abc.Channel["bytes | str"]):
    """One data channel (RFC 8831) of a peer connection.

    ``await send(message)`` takes ``bytes`` or ``str`` (empty allowed) and waits while
    :attr:`buffered_amount` is above the high-water mark; once it waited, it resumes
    when the amount fell to half the mark (hysteresis: fewer wake-ups).
    ``await receive()`` returns the next message and raises :class:`trio.EndOfChannel`
    once the peer closed the channel (after every message it sent before).
    ``await aclose()`` resets our outgoing SCTP stream, which the peer sees as the end
    of the channel.

    Raises :class:`trio.ClosedResourceError` after our own :meth:`aclose` and
    :class:`trio.BrokenResourceError` when the connection failed underneath,
    :class:`trio.BusyResourceError` for two concurrent receives (or sends).
    """

    def __init__(self, owner: ChannelOwner, info: ChannelInfo) -> None:
        self._owner = owner
        self._info = info
        self._messages: deque[tuple[bytes | str, int]] = deque()  # with their sizes
        self._receivers = trio.lowlevel.ParkingLot()
        self._low_water = trio.Event()
        self._receiving = False
        self._sending = False
        self._locally_closed = False
        self._remote_closed = False  # the peer reset its stream: EndOfChannel after the buffer
        self._broken: BaseException | None = None
        self._closed_event = trio.Event()  # both directions reset, or the connection ended
        self._counts = [0, 0, 0, 0]  # messages/bytes sent, messages/bytes received

    # ------------------------------------------------------------------ properties

    @property
    def label(self) -> str:
        return self._info.label

    @property
    def protocol(self) -> str:
        return self._info.protocol

    @property
    def id(self) -> int:
        """The SCTP stream id."""
        return self._info.stream_id

    @property
    def ordered(self) -> bool:
        return self._info.ordered

    @property
    def max_retransmits(self) -> int | None:
        return self._info.max_retransmits

    @property
    def max_packet_life_time(self) -> int | None:
        """Milliseconds, as in the W3C API."""
        return self._info.max_packet_lifetime_ms

    @property
    def negotiated(self) -> bool:
        return self._info.negotiated

    @property
    def buffered_amount(self) -> int:
        """Bytes queued in SCTP or in flight, not yet acknowledged by the peer."""
        return self._owner.buffered_amount(self.id)

    @property
    def state(self) -> str:
        if self._closed_event.is_set():
            return "closed"
        if self._locally_closed or self._remote_closed:
            return "closing"
        return "open"

    # ------------------------------------------------------------------ trio.abc.Channel

    async def send(self, value: bytes | str) -> None:
        """Send one message; waits while the buffered amount is above the high-water mark."""
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this data channel")
        self._sending = True
        try:
            self._check_sendable()
            owner, stream_id = self._owner, self._info.stream_id
            while owner.buffered_amount(stream_id) > owner.high_water_mark:
                self._low_water = trio.Event()
                await self._low_water.wait()
                self._check_sendable()
            owner.send_message(stream_id, value)
            self._counts[0] += 1
            self._counts[1] += len(value) if not isinstance(value, str) else len(value.encode())
            await trio.lowlevel.checkpoint()
        finally:
            self._sending = False

    async def receive(self) -> bytes | str:
        """The next message; EndOfChannel once the peer closed the channel."""
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this data channel")
        self._receiving = True
        parked = False
        try:
            while True:
                if self._locally_closed:
                    raise trio.ClosedResourceError("data channel was closed")
                if self._messages:
                    message, size = self._messages.popleft()
                    self._owner.channel_drained(self._info.stream_id, size)
                    if not parked:  # parking was this call's checkpoint (as trio's channels)
                        await trio.lowlevel.checkpoint()
                    return message
                if self._remote_closed:
                    raise trio.EndOfChannel
                if self._broken is not None:
                    raise trio.BrokenResourceError("the peer connection is gone") from self._broken
                await self._owner.wait_message(self)
                parked = True
        finally:
            self._receiving = False

    async def aclose(self) -> None:
        """Close the channel (SCTP stream reset); the peer's receive() ends."""
        if not self._locally_closed:
            self._locally_closed = True
            self._messages.clear()  # nobody will read them (the owner forgets them too)
            self._owner.close_channel(self.id)
            self._receivers.unpark_all()
            self._low_water.set()
        await trio.lowlevel.checkpoint()

    async def wait_closed(self) -> None:
        """Wait until both directions are reset (or the connection ended)."""
        await self._closed_event.wait()

    def statistics(self) -> DataChannelStatistics:
        return DataChannelStatistics(
            id=self.id,
            label=self.label,
            state=self.state,
            messages_sent=self._counts[0],
            bytes_sent=self._counts[1],
            messages_received=self._counts[2],
            bytes_received=self._counts[3],
            buffered_amount=self.buffered_amount,
            received_buffered=len(self._messages),
        )

    def __repr__(self) -> str:
        return f"<DataChannel id={self.id} label={self.label!r} {self.state}>"

    # ------------------------------------------------------------------ owner side

    def has_news(self) -> bool:
        """Whether :meth:`receive` would return or raise now (the owner asks)."""
        return bool(self._messages or self._locally_closed or self._remote_closed or self._broken)

    async def park(self) -> None:
        """Wait for :meth:`on_message` and the like (the owner's :meth:`wait_message`
        when it has nothing better to do)."""
        await self._receivers.park()

    def _check_sendable(self) -> None:
        if self._locally_closed:
            raise trio.ClosedResourceError("data channel was closed")
        if self._broken is not None:
            raise trio.BrokenResourceError("the peer connection is gone") from self._broken
        if self._remote_closed:
            raise trio.BrokenResourceError("the peer closed the data channel")

    def on_message(self, message: bytes | str, size: int) -> None:
        """Called by the owner: a message for :meth:`receive` (``size`` goes back with
        :meth:`ChannelOwner.channel_drained` once it is taken)."""
        if self._locally_closed:
            return  # we closed: nobody reads any more
        self._messages.append((message, size))
        self._counts[2] += 1
        self._counts[3] += size
        if self._receivers:  # usually nobody: the receiver reads the socket itself
            self._receivers.unpark_all()

    def on_buffered_amount_low(self) -> None:
        """Called by the owner: a waiting :meth:`send` may go on."""
        self._low_water.set()

    def on_closed(self) -> None:
        """Called by the owner: both directions are reset."""
        self._remote_closed = True
        self._closed_event.set()
        self._receivers.unpark_all()
        self._low_water.set()

    def on_broken(self, error: BaseException) -> None:
        """Called by the owner: the connection ended (``error`` says why)."""
        if self._broken is None:
            self._broken = error
        self._closed_event.set()
        self._receivers.unpark_all()
        self._low_water.set()
