"""When to acknowledge the peer's DATA (RFC 9260 6.2) and what the SACK says.

SACKs are delayed: every second packet, at once on gaps, duplicates or a DATA chunk
flagged immediate, else after ``delayed_ack``. A driver may hand over a batch of
datagrams before polling: the SACK then rides on whatever is sent next, but still
goes out at least every ``max_packets`` packets, because RFC-strict senders grow
their window per SACK, not per byte. A window update is due when the application
drains a receive buffer we had advertised as (nearly) full.
"""

from __future__ import annotations

import struct

from ._chunks import SackChunk
from ._streams import MASK32, SctpReceiver

_PLAIN_SACK = struct.Struct("!BBHIIHH")  # a SACK chunk with no gap blocks or duplicates


class SackScheduler:
    """The acknowledgement side of an association; the association reads its flags
    on the per-packet path (``due``, ``unacked``, ``deadline``, ``max_packets``)."""

    __slots__ = (
        "deadline",
        "delayed_ack",
        "due",
        "max_packets",
        "unacked",
        "_last_rwnd",
        "_mtu",
        "_window",
    )

    def __init__(self, window: int, mtu: int, delayed_ack: float, max_packets: int | None) -> None:
        self.due = False  # a SACK goes into the next packet
        self.deadline: float | None = None  # the delayed-ack timer
        self.unacked = 0  # packets with DATA since the last SACK
        self.max_packets = max_packets or 1 << 30
        self.delayed_ack = delayed_ack
        self._window = window
        self._mtu = mtu
        self._last_rwnd = window

    def after_data(self, urgent: bool, now: float) -> None:
        """A packet with DATA was taken (``urgent``: a gap, a duplicate, or closing)."""
        self.unacked += 1
        if urgent or self.unacked >= 2:
            self.due = True
        elif self.deadline is None:
            self.deadline = now + self.delayed_ack

    def after_forward_tsn(self) -> None:
        self.unacked += 1
        self.due = True

    def handle_timeout(self) -> None:
        self.deadline = None
        self.due = True

    def build(self, receiver: SctpReceiver, room: int) -> bytes:
        """The SACK to send now, fitted into ``room`` bytes."""
        rwnd = receiver.a_rwnd
        self.due = False
        self.deadline = None
        self.unacked = 0
        self._last_rwnd = rwnd
        if not receiver.dups and not receiver.above:
            # In order and nothing repeated (a conversation, a clean transfer): what
            # SackChunk(cum, rwnd).encode() makes, for less.
            return _PLAIN_SACK.pack(3, 0, 16, receiver.cum_tsn & MASK32, rwnd, 0, 0)
        dups = receiver.take_dups()[: (room - 16) // 8]
        gaps = receiver.gap_blocks()[: (room - 16) // 4 - len(dups)]
        return SackChunk(receiver.cum_tsn & MASK32, rwnd, gaps, dups).encode()

    def window_opened(self, a_rwnd: int) -> None:
        """The application took data: tell a sender we stalled that room opened again."""
        if self._last_rwnd < self._mtu * 4 and a_rwnd >= self._last_rwnd + self._window // 4:
            self.due = True
