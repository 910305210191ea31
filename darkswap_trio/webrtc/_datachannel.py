"""A WebRTC data channel as a trio channel: :class:`DataChannel`.

A :class:`DataChannel` is a handle on one entry of the connection's
:class:`~darkswap_trio.proto.datachannel.DataChannelRegistry`; it owns no task. Sending
queues the message straight into the SCTP association (a synchronous call, so the
buffered amount is exact) and wakes the task that owns the cores; receiving takes
messages the core task appended to the channel's bounded buffer. When that buffer is
full the core stops taking messages from SCTP, so the receive window closes and the
peer's sender blocks: backpressure all the way to the remote application.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from ..proto.datachannel import ChannelInfo

if TYPE_CHECKING:
    from ._connection_core import ConnectionCore

__all__ = ["DataChannel", "DataChannelStatistics"]


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

    def __init__(self, core: ConnectionCore, info: ChannelInfo) -> None:
        self._core = core
        self._info = info
        self._messages: deque[bytes | str] = deque()
        self._buffered_bytes = 0
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
        return self._core.buffered_amount(self.id)

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
            core = self._core
            while core.buffered_amount(self.id) > core.high_water_mark:
                self._low_water = trio.Event()
                await self._low_water.wait()
                self._check_sendable()
            core.send_message(self.id, value)
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
        try:
            while True:
                if self._locally_closed:
                    raise trio.ClosedResourceError("data channel was closed")
                if self._messages:
                    message = self._messages.popleft()
                    self._buffered_bytes -= (
                        len(message) if not isinstance(message, str) else len(message.encode())
                    )
                    self._core.channel_drained(self.id)
                    await trio.lowlevel.checkpoint()
                    return message
                if self._remote_closed:
                    raise trio.EndOfChannel
                if self._broken is not None:
                    raise trio.BrokenResourceError("the peer connection is gone") from self._broken
                await self._receivers.park()
        finally:
            self._receiving = False

    async def aclose(self) -> None:
        """Close the channel (SCTP stream reset); the peer's receive() ends."""
        if not self._locally_closed:
            self._locally_closed = True
            self._messages.clear()  # nobody will read them: free them, never stall SCTP
            self._buffered_bytes = 0
            self._core.close_channel(self.id)
            self._core.channel_drained(self.id)
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

    # ------------------------------------------------------------------ core side

    def _check_sendable(self) -> None:
        if self._locally_closed:
            raise trio.ClosedResourceError("data channel was closed")
        if self._broken is not None:
            raise trio.BrokenResourceError("the peer connection is gone") from self._broken
        if self._remote_closed:
            raise trio.BrokenResourceError("the peer closed the data channel")

    def _room_for_more(self, limit: int) -> bool:
        """False when the receive buffer is full (one message always fits)."""
        return not self._messages or self._buffered_bytes < limit or self._locally_closed

    def _deliver(self, message: bytes | str) -> None:
        if self._locally_closed:
            return  # we closed: nobody reads any more
        size = len(message) if not isinstance(message, str) else len(message.encode())
        self._messages.append(message)
        self._buffered_bytes += size
        self._counts[2] += 1
        self._counts[3] += size
        self._receivers.unpark_all()

    def _on_buffered_low(self) -> None:
        self._low_water.set()

    def _on_remote_closed(self) -> None:
        self._remote_closed = True
        self._receivers.unpark_all()
        self._low_water.set()

    def _on_closed(self) -> None:
        self._remote_closed = True
        self._closed_event.set()
        self._receivers.unpark_all()
        self._low_water.set()

    def _on_broken(self, error: BaseException) -> None:
        if self._broken is None:
            self._broken = error
        self._closed_event.set()
        self._receivers.unpark_all()
        self._low_water.set()
