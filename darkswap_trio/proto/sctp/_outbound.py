"""What the SCTP sender keeps per message and per DATA chunk sent (records, no logic)."""

from __future__ import annotations


class OutboundMessage:
    __slots__ = (
        "stream_id",
        "ppid",
        "data",
        "offset",
        "unordered",
        "ssn",
        "expiry",
        "max_retransmits",
        "chunks",
        "abandoned",
    )

    def __init__(
        self,
        stream_id: int,
        ppid: int,
        data: bytes,
        unordered: bool,
        expiry: float | None,
        max_retransmits: int | None,
    ) -> None:
        self.stream_id = stream_id
        self.ppid = ppid
        self.data = data
        self.offset = 0
        self.unordered = unordered
        self.ssn = 0
        self.expiry = expiry
        self.max_retransmits = max_retransmits
        # Chunks are remembered only for partially reliable messages (to abandon them).
        self.chunks: list[SentChunk] | None = (
            [] if expiry is not None or max_retransmits is not None else None
        )
        self.abandoned = False


class SentChunk:
    __slots__ = (
        "tsn",
        "message",
        "size",
        "wire",
        "sent_count",
        "acked",
        "in_flight",
        "retransmit",
        "abandoned",
        "missing_reports",
        "sent_after",
        "sent_time",
    )

    def __init__(
        self, tsn: int, message: OutboundMessage, size: int, wire: bytes, now: float
    ) -> None:
        self.tsn = tsn
        self.message = message
        self.size = size
        self.wire = wire
        self.sent_count = 1
        self.acked = False
        self.in_flight = True
        self.retransmit = False
        self.abandoned = False
        self.missing_reports = 0
        # Highest TSN sent before this chunk's latest transmission: only chunks sent
        # after it (higher TSNs) can report this transmission missing.
        self.sent_after = tsn - 1
        self.sent_time = now  # of the latest transmission
