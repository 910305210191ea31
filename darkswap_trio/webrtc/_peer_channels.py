"""Where a peer core's events go: :class:`PeerChannels`, the application side of one
connection.

It is the :class:`~._datachannel.ChannelOwner` of every data channel of the connection
(calls from a channel go straight into the core, then wake the driver) and it keeps
what ``PeerConnection`` waits on: the connection state, channels the peer opened, our
gathered candidates. The driver hands it the core's events (:meth:`PeerChannels.dispatch`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable

import trio
from aioice import Candidate

from ..proto import datachannel as dc
from ..proto import peer
from ._datachannel import DataChannel

__all__ = ["ConnectionFailed", "PeerChannels"]


class ConnectionFailed(Exception):
    """Why the connection failed or ended (the cause of BrokenResourceError)."""


class PeerChannels:
    """See the module docstring. ``wake`` makes the driver flush the core."""

    def __init__(
        self,
        core: peer.PeerCore,
        wake: Callable[[], None],
        wait_message: Callable[[DataChannel], Awaitable[None]] | None = None,
    ) -> None:
        self.core = core
        self.wake = wake
        #: ChannelOwner.wait_message: the driver's (a receiver may read the socket
        #: itself), or parking until the driver hands the channel something.
        self.wait_message = wait_message or DataChannel.park
        self.failure: ConnectionFailed | None = None
        self.channels: dict[int, DataChannel] = {}
        self.accept_queue: deque[DataChannel] = deque()
        self.acceptors = trio.lowlevel.ParkingLot()
        self.state_changed = trio.lowlevel.ParkingLot()
        self.candidates: list[Candidate | None] = []  # then None at the end
        self.candidates_changed = trio.lowlevel.ParkingLot()

    # ------------------------------------------------------------------ ChannelOwner

    @property
    def high_water_mark(self) -> int:
        return self.core.high_water_mark

    def buffered_amount(self, stream_id: int) -> int:
        return self.core.buffered_amount(stream_id)

    def send_message(self, stream_id: int, message: bytes | str) -> None:
        try:
            self.core.send(stream_id, message, trio.current_time())
        except dc.ChannelStateError as exc:
            raise trio.ClosedResourceError(str(exc)) from exc
        self.wake()

    def close_channel(self, stream_id: int) -> None:
        self.core.close_channel(stream_id, trio.current_time())
        self.wake()

    def channel_drained(self, stream_id: int, size: int) -> None:
        if self.core.channel_drained(stream_id, size):
            self.wake()  # SCTP delivery waited for this reader

    def open_channel(self, label: str, **options: object) -> DataChannel:
        info = self.core.open_channel(label, trio.current_time(), **options)
        channel = self.channels[info.stream_id] = DataChannel(self, info)
        self.wake()
        return channel

    # ------------------------------------------------------------------ core events

    def dispatch(self) -> None:
        """Every event the core has, to the channels and waiters."""
        channels = self.channels
        while (event := self.core.poll_event()) is not None:
            if type(event) is peer.ChannelMessage:
                channel = channels.get(event.stream_id)
                if channel is not None:
                    channel.on_message(event.message, event.size)
                else:
                    self.core.channel_drained(event.stream_id, event.size)
            elif type(event) is peer.BufferedAmountLow:
                if (channel := channels.get(event.stream_id)) is not None:
                    channel.on_buffered_amount_low()
            elif type(event) is peer.ChannelOpened:
                channel = channels[event.info.stream_id] = DataChannel(self, event.info)
                self.accept_queue.append(channel)
                self.acceptors.unpark_all()
            elif type(event) is peer.ChannelClosed:
                if (channel := channels.pop(event.stream_id, None)) is not None:
                    channel.on_closed()
            elif type(event) is peer.StateChanged:
                self._state_changed(event)
            elif type(event) is peer.CandidateGathered or type(event) is peer.GatheringComplete:
                candidate = event.candidate if type(event) is peer.CandidateGathered else None
                self.candidates.append(candidate)
                self.candidates_changed.unpark_all()

    def _state_changed(self, event: peer.StateChanged) -> None:
        if event.state in ("failed", "disconnected", "closed") and self.failure is None:
            self.failure = ConnectionFailed(event.reason)
            for channel in list(self.channels.values()):
                channel.on_broken(self.failure)
            self.acceptors.unpark_all()
            self.candidates_changed.unpark_all()
        self.state_changed.unpark_all()
