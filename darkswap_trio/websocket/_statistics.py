"""WebSocketStatistics: a snapshot of one WebSocket connection's counters."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WebSocketStatistics:
    """A snapshot of one connection's counters."""

    bytes_received: int
    bytes_sent: int
    messages_received: int
    messages_sent: int
    #: received bytes held but not yet turned into messages (a partial frame)
    receive_buffer_bytes: int
    #: the size of the next socket read (adapts between 4 KiB and 256 KiB)
    receive_size: int
