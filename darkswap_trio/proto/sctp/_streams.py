"""SCTP receive side: TSN tracking for SACKs, reassembly, per-stream ordering, a_rwnd.

TSNs are kept *unwrapped* (plain Python ints that never wrap) so every comparison is
ordinary; only the wire values are 32-bit. Fragments of one message carry consecutive
TSNs (no I-DATA), so reassembly walks TSN neighbours in one dict and only when the
arriving chunk can complete a message (it is the end fragment, or it fills a hole):
in-order traffic costs O(1) per fragment plus one join per message.
"""

from __future__ import annotations

from collections import deque

from ._chunks import DATA_BEGINNING, DATA_END, DATA_UNORDERED, DataChunk
from ._events import MessageReceived, SctpEvent

MASK32 = 0xFFFFFFFF
# Gap ack offsets are 16 bits; data further ahead of the cumulative TSN is dropped.
MAX_TSN_AHEAD = 0xFFFF
MAX_DUPS_REPORTED = 16
MAX_GAP_BLOCKS = 100

# receive_data() verdicts, used by the association to decide when to SACK.
IN_ORDER = 0
OUT_OF_ORDER = 1
DUPLICATE = 2
DROPPED = 3


def unwrap32(value: int, reference: int) -> int:
    """The unwrapped int closest to ``reference`` whose low 32 bits are ``value``."""
    delta = (value - reference) & MASK32
    if delta >= 0x80000000:
        delta -= 0x100000000
    return reference + delta


def ssn_after(a: int, b: int) -> bool:
    """Serial number arithmetic on 16 bits: is ``a`` after ``b``?"""
    return 0 < ((a - b) & 0xFFFF) < 0x8000


class _InboundStream:
    __slots__ = ("expected_ssn", "waiting")

    def __init__(self) -> None:
        self.expected_ssn = 0
        self.waiting: dict[int, MessageReceived] = {}


class SctpReceiver:
    """Reassembles the peer's DATA into :class:`MessageReceived` events on ``events``.

    Every byte held here or in ``events`` counts against ``capacity``; the advertised
    window shrinks to 0 when the application stops polling (backpressure).
    """

    def __init__(self, peer_initial_tsn: int, capacity: int, events: deque[SctpEvent]) -> None:
        self.cum_tsn = peer_initial_tsn - 1
        self.highest_tsn = self.cum_tsn
        self.capacity = capacity
        self.buffered = 0
        self.above: set[int] = set()
        self.dups: list[int] = []
        self.messages_received = 0
        self._events = events
        self._fragments: dict[int, DataChunk] = {}
        self._streams: dict[int, _InboundStream] = {}

    @property
    def a_rwnd(self) -> int:
        free = self.capacity - self.buffered
        return free if free > 0 else 0

    def receive_data(self, chunk: DataChunk) -> int:
        """Take one DATA chunk; returns IN_ORDER, OUT_OF_ORDER, DUPLICATE or DROPPED."""
        cum = self.cum_tsn
        delta = (chunk.tsn - cum) & MASK32
        if delta >= 0x80000000 or delta == 0:
            if len(self.dups) < MAX_DUPS_REPORTED:
                self.dups.append(chunk.tsn)
            return DUPLICATE
        tsn = cum + delta
        size = len(chunk.user_data)
        if delta == 1 and not self.above:
            # Fast path: the next TSN with nothing buffered beyond it.
            if self.buffered >= self.capacity:
                return DROPPED
            self.cum_tsn = self.highest_tsn = tsn
            verdict = IN_ORDER
        else:
            if tsn in self.above:
                if len(self.dups) < MAX_DUPS_REPORTED:
                    self.dups.append(chunk.tsn)
                return DUPLICATE
            if delta > MAX_TSN_AHEAD:
                return DROPPED
            if tsn > self.highest_tsn:
                # New data beyond everything seen: only while the window is open.
                if self.buffered >= self.capacity:
                    return DROPPED
                self.highest_tsn = tsn
            elif self.buffered >= 2 * self.capacity:
                # Holes are always filled (else a full buffer could deadlock), within a bound.
                return DROPPED
            if delta == 1:
                above = self.above
                tsn += 1
                while tsn in above:
                    above.remove(tsn)
                    tsn += 1
                self.cum_tsn = tsn - 1
                tsn = cum + 1
                verdict = IN_ORDER
            else:
                self.above.add(tsn)
                verdict = OUT_OF_ORDER
        flags = chunk.flags
        if flags & 3 == 3:
            self.buffered += size
            self._deliver(chunk.stream_id, chunk.ssn, chunk.ppid, chunk.user_data, flags)
        else:
            fragments = self._fragments
            if not flags & DATA_BEGINNING and tsn - 1 <= cum and tsn - 1 not in fragments:
                # A later fragment of a message whose start a FORWARD-TSN skipped: it can
                # never complete (counted as received, its bytes dropped).
                return verdict
            self.buffered += size
            fragments[tsn] = chunk
            if flags & DATA_END or tsn + 1 in fragments:
                self._try_reassemble(tsn)
        return verdict

    def _try_reassemble(self, tsn: int) -> None:
        fragments = self._fragments
        start = tsn
        chunk: DataChunk | None
        chunk = fragments[start]
        while not chunk.flags & DATA_BEGINNING:
            chunk = fragments.get(start - 1)
            if chunk is None or chunk.flags & DATA_END:
                return
            start -= 1
        end = tsn
        chunk = fragments[end]
        while not chunk.flags & DATA_END:
            chunk = fragments.get(end + 1)
            if chunk is None or chunk.flags & DATA_BEGINNING:
                return
            end += 1
        first = fragments[start]
        parts = [fragments.pop(t).user_data for t in range(start, end + 1)]
        self._deliver(first.stream_id, first.ssn, first.ppid, b"".join(parts), first.flags)

    def _deliver(self, stream_id: int, ssn: int, ppid: int, data: bytes, flags: int) -> None:
        message = MessageReceived(stream_id, ppid, data)
        if flags & DATA_UNORDERED:
            self.messages_received += 1
            self._events.append(message)
            return
        stream = self._streams.get(stream_id)
        if stream is None:
            stream = self._streams[stream_id] = _InboundStream()
        if ssn == stream.expected_ssn:
            self.messages_received += 1
            self._events.append(message)
            ssn = (ssn + 1) & 0xFFFF
            waiting = stream.waiting
            while waiting and ssn in waiting:
                self.messages_received += 1
                self._events.append(waiting.pop(ssn))
                ssn = (ssn + 1) & 0xFFFF
            stream.expected_ssn = ssn
        elif ssn_after(ssn, stream.expected_ssn) and ssn not in stream.waiting:
            stream.waiting[ssn] = message
        else:
            self.buffered -= len(data)  # stale or repeated SSN: a peer bug, drop it

    def release(self, size: int) -> None:
        """The application took a delivered message of ``size`` bytes."""
        self.buffered -= size

    def gap_blocks(self) -> list[tuple[int, int]]:
        if not self.above:
            return []
        cum = self.cum_tsn
        tsns = sorted(self.above)
        blocks = []
        start = prev = tsns[0]
        for t in tsns[1:]:
            if t != prev + 1:
                blocks.append((start - cum, prev - cum))
                if len(blocks) >= MAX_GAP_BLOCKS:
                    return blocks
                start = t
            prev = t
        blocks.append((start - cum, prev - cum))
        return blocks

    def take_dups(self) -> list[int]:
        dups, self.dups = self.dups, []
        return dups

    def forward_tsn(self, new_cum_tsn: int, streams: list[tuple[int, int]]) -> bool:
        """RFC 3758 3.6: skip abandoned TSNs and SSNs; returns whether anything moved."""
        new_cum = unwrap32(new_cum_tsn, self.cum_tsn)
        if new_cum <= self.cum_tsn:
            return False
        if new_cum - self.cum_tsn > MAX_TSN_AHEAD:
            return False  # beyond anything we could have acknowledged: bogus
        fragments = self._fragments
        for t in [t for t in fragments if t <= new_cum]:
            self.buffered -= len(fragments.pop(t).user_data)
        self.above = {t for t in self.above if t > new_cum}
        tsn = new_cum + 1
        while tsn in self.above:
            self.above.remove(tsn)
            tsn += 1
        self.cum_tsn = tsn - 1
        if self.highest_tsn < self.cum_tsn:
            self.highest_tsn = self.cum_tsn
        # A middle/end fragment whose predecessor was skipped can never complete.
        for t in sorted(t for t in fragments if t <= self.cum_tsn):
            if not fragments[t].flags & DATA_BEGINNING and t - 1 not in fragments:
                self.buffered -= len(fragments.pop(t).user_data)
        for stream_id, ssn in streams:
            stream = self._streams.get(stream_id)
            if stream is None:
                stream = self._streams[stream_id] = _InboundStream()
            if not ssn_after(stream.expected_ssn, ssn):
                # Skip up to and including ssn; drop what was waiting below it.
                for old in [s for s in stream.waiting if not ssn_after(s, ssn)]:
                    self.buffered -= len(stream.waiting.pop(old).data)
                stream.expected_ssn = (ssn + 1) & 0xFFFF
                self._deliver_waiting(stream)
        return True

    def _deliver_waiting(self, stream: _InboundStream) -> None:
        ssn = stream.expected_ssn
        while ssn in stream.waiting:
            self.messages_received += 1
            self._events.append(stream.waiting.pop(ssn))
            ssn = (ssn + 1) & 0xFFFF
        stream.expected_ssn = ssn

    def reset_streams(self, stream_ids: tuple[int, ...]) -> None:
        """RFC 6525: incoming SSNs of these streams (all when empty) restart at 0."""
        ids = list(self._streams) if not stream_ids else stream_ids
        for stream_id in ids:
            stream = self._streams.pop(stream_id, None)
            if stream is not None:
                for message in stream.waiting.values():
                    self.buffered -= len(message.data)
