"""SCTP <-> DCEP: the data channels of one association, with receive backpressure.

:class:`ChannelMux` moves user messages between the association and the channel
registry, holds messages for streams whose outgoing reset is not answered yet, and
counts what each channel's reader has not taken: when a channel's reader falls
behind by ``receive_buffer_size`` bytes, the mux stops taking messages from SCTP, so
the receive window closes and the peer's sender blocks (backpressure all the way to
the remote application).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from .. import datachannel as dc
from .. import sctp as sctp_mod
from ..sctp import SctpAssociation
from ._events import (
    BufferedAmountLow,
    ChannelClosed,
    ChannelMessage,
    ChannelOpened,
    PeerCounts,
    PeerEvent,
)

__all__ = ["ChannelMux"]


class ChannelMux:
    """The channel side of a :class:`~._core.PeerCore` (one per SCTP association)."""

    def __init__(
        self,
        sctp: SctpAssociation,
        registry: dc.DataChannelRegistry,
        events: deque[PeerEvent | object],
        counts: PeerCounts,
        set_state: Callable[[str, str], None],
        *,
        receive_buffer_size: int,
        low_threshold: int,
    ) -> None:
        self.sctp = sctp
        self.registry = registry
        self._events = events
        self._counts = counts
        self._set_state = set_state
        self._limit = receive_buffer_size
        self._low_threshold = low_threshold
        # stream id -> [messages, bytes] handed out and not yet drained by the reader.
        self._unread: dict[int, list[int]] = {}
        self._closed_locally: set[int] = set()  # the reader is gone: drop what comes
        self._stalled: sctp_mod.MessageReceived | None = None  # waits for a reader
        # Streams whose outgoing reset is not answered yet: SCTP refuses new messages on
        # them, but the registry already reuses a closed channel's id; hold those here.
        self._resetting: dict[int, list[dc.SctpMessage]] = {}

    # ------------------------------------------------------------------ application

    def buffered_amount(self, stream_id: int) -> int:
        amount = self.sctp.buffered_amount(stream_id)
        if self._resetting:
            amount += sum(len(m.payload) for m in self._resetting.get(stream_id, ()))
        return amount

    def open_channel(self, label: str, now: float, **options: object) -> dc.ChannelInfo:
        stream_id = self.registry.open_channel(label, **options)  # type: ignore[arg-type]
        info = self.registry.channel(stream_id)
        self._track(info)
        self.pump(now)
        return info

    def send(self, stream_id: int, message: bytes | str, now: float) -> None:
        registry = self.registry
        if registry.sends_pending() or self._resetting:
            registry.send(stream_id, message)  # behind what waits, or held back
            self.pump(now)
            return
        ppid, payload, ordered, max_retransmits, lifetime_ms = registry.outgoing(stream_id, message)
        self._sctp_send(stream_id, ppid, payload, ordered, max_retransmits, lifetime_ms, now)

    def close_channel(self, stream_id: int, now: float) -> None:
        self._closed_locally.add(stream_id)
        self._unread.pop(stream_id, None)
        self.registry.close_channel(stream_id)
        self.pump(now)

    def drained(self, stream_id: int, size: int) -> bool:
        """The reader took a message; True if SCTP delivery waited for this channel."""
        unread = self._unread.get(stream_id)
        if unread is not None:
            unread[0] -= 1
            unread[1] -= size
        stalled = self._stalled
        return stalled is not None and stalled.stream_id == stream_id

    # ------------------------------------------------------------------ SCTP side

    def drain(self, now: float) -> bool:
        """SCTP events -> registry -> channel events; False once the association closed."""
        sctp, registry = self.sctp, self.registry
        while True:
            event: sctp_mod.SctpEvent | None = self._stalled
            if event is not None:
                self._stalled = None
            else:
                event = sctp.poll_event()
                if event is None:
                    break
            if type(event) is sctp_mod.MessageReceived:
                if not self._room_for(event.stream_id):
                    self._stalled = event  # backpressure: SCTP keeps the rest in its window
                    break
                data = event.data
                message = registry.receive_user_message(event.stream_id, event.ppid, data)
                if message is None:
                    self._drain_registry()
                elif event.stream_id not in self._closed_locally:
                    self._deliver(event.stream_id, message, len(data))
            elif type(event) is sctp_mod.BufferedAmountLow:
                self._events.append(BufferedAmountLow(event.stream_id))
            elif type(event) is sctp_mod.StreamsReset:
                for stream_id in event.stream_ids:
                    registry.receive_stream_reset(stream_id)
                self._drain_registry()
            elif type(event) is sctp_mod.OutgoingStreamsReset:
                for stream_id in event.stream_ids:
                    for held in self._resetting.pop(stream_id, ()):
                        self._send(held, now)
            elif type(event) is sctp_mod.Connected:
                registry.limit_streams(sctp.outbound_streams)
                self._set_state("connected", "")
            elif type(event) is sctp_mod.Closed:
                self._set_state("disconnected", f"SCTP association closed: {event.reason}")
                return False
        self.pump(now)
        return True

    def pump(self, now: float) -> None:
        """Registry instructions -> SCTP."""
        registry, sctp = self.registry, self.sctp
        while (instruction := registry.poll_send()) is not None:
            if type(instruction) is dc.SctpMessage:
                held = self._resetting.get(instruction.stream_id)
                if held is not None:
                    held.append(instruction)
                else:
                    self._send(instruction, now)
            else:
                self._resetting.setdefault(instruction.stream_id, [])
                sctp.reset_streams([instruction.stream_id])

    # ------------------------------------------------------------------ internals

    def _room_for(self, stream_id: int) -> bool:
        """False when the reader's buffer is full (one message always fits)."""
        unread = self._unread.get(stream_id)
        return unread is None or unread[0] <= 0 or unread[1] < self._limit

    def _drain_registry(self) -> None:
        events = self._events
        while (event := self.registry.poll_event()) is not None:
            if type(event) is dc.MessageReceived:
                stream_id = event.stream_id
                if stream_id in self._closed_locally:
                    continue  # we closed: nobody reads any more
                message = event.message
                size = len(message) if not isinstance(message, str) else len(message.encode())
                self._deliver(stream_id, message, size)
            elif type(event) is dc.ChannelOpenedByPeer:
                self._track(event.channel)
                events.append(ChannelOpened(event.channel))
            elif type(event) is dc.ChannelClosed:
                self._unread.pop(event.stream_id, None)
                self._closed_locally.discard(event.stream_id)
                events.append(ChannelClosed(event.stream_id))
            elif type(event) is dc.ProtocolViolation:
                self._counts.protocol_violations += 1

    def _deliver(self, stream_id: int, message: bytes | str, size: int) -> None:
        unread = self._unread.get(stream_id)
        if unread is not None:
            unread[0] += 1
            unread[1] += size
        self._events.append(ChannelMessage(stream_id, message, size))

    def _track(self, info: dc.ChannelInfo) -> None:
        self._unread[info.stream_id] = [0, 0]
        self._closed_locally.discard(info.stream_id)
        self.sctp.set_buffered_amount_low_threshold(info.stream_id, self._low_threshold)

    def _send(self, message: dc.SctpMessage, now: float) -> None:
        self._sctp_send(
            message.stream_id,
            message.ppid,
            message.payload,
            message.ordered,
            message.max_retransmits,
            message.lifetime_ms,
            now,
        )

    def _sctp_send(
        self,
        stream_id: int,
        ppid: int,
        payload: bytes,
        ordered: bool,
        max_retransmits: int | None,
        lifetime_ms: int | None,
        now: float,
    ) -> None:
        try:
            self.sctp.send(
                stream_id,
                ppid,
                payload,
                now,
                ordered=ordered,
                max_retransmits=max_retransmits,
                lifetime=None if lifetime_ms is None else lifetime_ms / 1000,
            )
        except ValueError:
            self._counts.send_errors += 1  # the association is closing
