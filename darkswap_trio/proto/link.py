"""The PeerLink protocol core: one reliable message stream over changing paths (sans-IO).

A link carries the application's messages as one byte stream: each message is a
big-endian u32 length followed by its bytes. The stream is cut into DATA frames that
fit the path in use (relay circuit: the circuit's ``max_data_frame``; data channel:
the peer's max-message-size) and every DATA frame carries the stream offset of its
first byte. Because offsets count bytes, not frames, unacknowledged data can be
re-cut for a path with a smaller frame limit: the receiver only sees bytes at offsets.

Resumption rule (docs/PROTOCOL.md, "PeerLink protocol"):

* The receiver keeps ``received`` (next expected offset). For a DATA frame at
  ``offset`` with ``n`` bytes, from any path: ``offset + n <= received`` is a
  duplicate (dropped); ``offset <= received`` delivers the new tail; ``offset >
  received`` is a protocol violation.
* ACK carries ``consumed``: every byte below it was taken by the application. The
  sender keeps every byte from the lowest unacknowledged offset on.
* Whenever the sender starts a run on a path (attach, upgrade, downgrade) it first
  sends everything from its lowest unacknowledged offset, in order. A run therefore
  starts at or below the receiver's ``received`` and is contiguous, so no gap can
  occur, and each byte is delivered exactly once, in order, over any path switches.

The core never reads a clock: ``now`` is passed in. Frames go out through
``poll_transmit(path, now)``; timers through ``poll_timeout``/``handle_timeout``.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

from .datachannel import MessageTooLarge
from .errors import ParseError
from .link_buffers import MessageCutter, SendBuffer

__all__ = [
    "ACK",
    "CLOSE",
    "CLOSE_ACK",
    "DATA",
    "RESET",
    "DIRECT_LOST",
    "LINK_HELLO",
    "PING",
    "LINK_ID_SIZE",
    "LinkCore",
    "LinkFrameError",
    "encode_hello",
    "parse_hello_untrusted",
    "LinkStatistics",
    "MessageTooLarge",
    "PathDead",
    "RemoteClosed",
    "RemoteLostDirect",
    "RemoteReset",
    "parse_frame_untrusted",
]

LINK_HELLO = b"\x00darkswap-link/1\x00"  # first message of every path of a link, + link id
LINK_ID_SIZE = 16
DATA, ACK, PING, CLOSE, DIRECT_LOST, CLOSE_ACK, RESET = 1, 2, 3, 4, 5, 6, 7
DATA_HEADER = 9  # type byte + u64 offset
_U64 = struct.Struct(">Q")
_DATA_KIND = bytes([DATA])
_LENGTH_PREFIX = 4


class LinkFrameError(ParseError):
    """A link frame is malformed or breaks the resumption rule (the link is broken)."""


@dataclass(frozen=True)
class Frame:
    kind: int
    offset: int = 0  # DATA: first byte; ACK: consumed; CLOSE: final stream length
    payload: bytes | memoryview = b""  # DATA: a view into the frame (no copy)


def parse_frame_untrusted(data: bytes | memoryview) -> Frame:
    """Decode one link frame; raises only :class:`LinkFrameError`."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or not data:
        raise LinkFrameError("empty or non-binary link frame")
    kind = data[0]
    if kind == DATA:
        if len(data) <= DATA_HEADER:
            raise LinkFrameError("DATA frame without payload")
        return Frame(DATA, _U64.unpack_from(data, 1)[0], memoryview(data)[DATA_HEADER:])
    if kind in (ACK, CLOSE):
        if len(data) != 9:
            raise LinkFrameError(f"frame type {kind} must be 9 bytes, got {len(data)}")
        return Frame(kind, _U64.unpack_from(data, 1)[0])
    if kind in (PING, DIRECT_LOST, CLOSE_ACK, RESET):
        if len(data) != 1:
            raise LinkFrameError(f"frame type {kind} must be 1 byte, got {len(data)}")
        return Frame(kind)
    raise LinkFrameError(f"unknown link frame type {kind}")


_NO_ID = bytes(LINK_ID_SIZE)
HELLO_SIZE = len(LINK_HELLO) + 2 * LINK_ID_SIZE


def encode_hello(sender_id: bytes, receiver_id: bytes | None = None) -> bytes:
    """The first message each end sends on every path: LINK_HELLO, the sender's link id
    and the receiver's link id (zeros while the sender does not know it yet)."""
    return LINK_HELLO + sender_id + (receiver_id or _NO_ID)


def parse_hello_untrusted(message: bytes | str | None) -> tuple[bytes, bytes | None] | None:
    """(sender id, receiver id or None) of a HELLO, or None if ``message`` is not one."""
    if (
        not isinstance(message, bytes)
        or len(message) != HELLO_SIZE
        or not message.startswith(LINK_HELLO)
    ):
        return None
    sender = message[len(LINK_HELLO) : len(LINK_HELLO) + LINK_ID_SIZE]
    receiver = message[len(LINK_HELLO) + LINK_ID_SIZE :]
    if sender == _NO_ID:
        return None
    return sender, (None if receiver == _NO_ID else receiver)


def encode_data(offset: int, payload: bytes) -> bytes:
    return bytes([DATA]) + _U64.pack(offset) + payload


def encode_offset_frame(kind: int, offset: int) -> bytes:
    return bytes([kind]) + _U64.pack(offset)


# -- events -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PathDead:
    """A watched path heard nothing for ``path_timeout``: stop using it."""

    path: str
    reason: str


@dataclass(frozen=True)
class RemoteClosed:
    """The far side closed the link; its stream ends at ``final_offset``."""

    final_offset: int


@dataclass(frozen=True)
class RemoteLostDirect:
    """The far side told us (DIRECT_LOST) that its direct path is dead."""


@dataclass(frozen=True)
class RemoteReset:
    """The far side has no such link (RESET): this link is over."""


LinkEvent = PathDead | RemoteClosed | RemoteLostDirect | RemoteReset


@dataclass(frozen=True)
class LinkStatistics:
    bytes_queued: int  # stream bytes the application handed us (with length prefixes)
    bytes_acked: int
    bytes_consumed: int  # stream bytes the application took from us
    unacked_bytes: int
    fragments_sent: int
    fragments_retransmitted: int
    bytes_retransmitted: int
    duplicates_dropped: int
    pings_sent: int


class _Path:
    def __init__(self, frame_limit: int, now: float, watched: bool) -> None:
        self.payload_limit = frame_limit - DATA_HEADER
        self.watched = watched
        self.last_heard = now
        self.last_ping = now
        self.last_sent = now
        self.ping_due = False
        self.ack_due = True  # tell the far side on this path where we are, at once
        self.lost_direct_due = False
        self.close_ack_due = False


class LinkCore:
    """Both directions of one link: a sender with a retransmit buffer, a reassembler.

    ``queue_message`` refuses a message above ``max_message_size`` with
    :class:`MessageTooLarge` whatever the path, and returns False while the window
    (unacknowledged bytes) is full: the driver waits for ACKs (backpressure).
    """

    def __init__(
        self,
        *,
        max_message_size: int = 1 << 20,
        window: int = 4 << 20,
        ack_delay: float = 0.02,
        ping_interval: float = 1.0,
        path_timeout: float = 3.0,
    ) -> None:
        if max_message_size < 1 or window < 2 * (max_message_size + _LENGTH_PREFIX):
            raise ValueError("window must hold two messages of max_message_size")
        if not 0 < ping_interval < path_timeout:
            raise ValueError("need 0 < ping_interval < path_timeout")
        self.max_message_size = max_message_size
        self.window = window
        self.ack_delay = ack_delay
        self.ping_interval = ping_interval
        self.path_timeout = path_timeout
        self._ack_threshold = max(window // 4, 1)
        self._paths: dict[str, _Path] = {}
        self.active: str | None = None  # the path our DATA goes on
        self._ack_path: str | None = None  # the path we last heard DATA/PING on
        # sender: the stream from the lowest unacknowledged offset on; its read position
        # is the next offset to send on the active path
        self._tx = SendBuffer()
        self._high = 0  # highest offset ever sent (above it nothing is a retransmission)
        self._close_at: int | None = None  # our final offset once close() was called
        self._close_sent = False
        self.close_confirmed = False  # the far side has our whole stream (CLOSE_ACK)
        # receiver
        self._received = 0
        self._cutter = MessageCutter(max_message_size)
        self._ready: deque[bytes] = deque()
        # Messages of the internal channel (take_prefixed), routed as they are cut
        self._channel_prefix: bytes | None = None
        self._channel_ready: list[bytes] = []
        self._consumed = 0
        self._ack_sent = 0
        self._ack_deadline: float | None = None
        self._ack_timer_fired = False
        self._remote_close: int | None = None
        self._events: deque[LinkEvent] = deque()
        self._fragments = self._retransmitted = self._retransmitted_bytes = 0
        self._duplicates = self._pings = 0

    # -- paths ----------------------------------------------------------------------

    def add_path(self, name: str, frame_limit: int, now: float, *, watched: bool = False) -> None:
        """A path is usable. ``watched`` paths die after ``path_timeout`` of silence."""
        if frame_limit <= DATA_HEADER:
            raise ValueError(f"frame limit {frame_limit} leaves no room for data")
        self._paths[name] = _Path(frame_limit, now, watched)

    def remove_path(self, name: str) -> None:
        self._paths.pop(name, None)
        if self.active == name:
            self.active = None
        if self._ack_path == name:
            self._ack_path = None

    def has_path(self, name: str) -> bool:
        return name in self._paths

    def use_path(self, name: str) -> None:
        """Send our DATA on ``name`` from now on, starting with everything unacknowledged."""
        if name not in self._paths:
            raise KeyError(name)
        self.active = name
        self._tx.seek(self._tx.acked)
        self._close_sent = False
        self._paths[name].ack_due = True

    def report_direct_lost(self, name: str) -> None:
        """Send DIRECT_LOST on ``name`` (so the far side drops its direct path too)."""
        if name in self._paths:
            self._paths[name].lost_direct_due = True

    # -- sending ----------------------------------------------------------------------

    def check_size(self, size: int) -> None:
        if size > self.max_message_size:
            raise MessageTooLarge(
                f"message of {size} bytes exceeds the link's max_message_size ({self.max_message_size})"
            )

    def can_queue(self, size: int) -> bool:
        tx = self._tx
        return tx.written + _LENGTH_PREFIX + size - tx.acked <= self.window or (
            tx.written == tx.acked
        )

    def queue_message(self, data: bytes) -> bool:
        """Append one message to the stream; False (nothing queued) if the window is full."""
        self.check_size(len(data))
        if self._close_at is not None:
            raise RuntimeError("link core is closed")
        if not self.can_queue(len(data)):
            return False
        self._tx.append_message(data)
        return True

    def close(self) -> None:
        """No more messages: tell the far side where our stream ends (reliably)."""
        if self._close_at is None:
            self._close_at = self._tx.written

    @property
    def all_acked(self) -> bool:
        return self._tx.acked == self._tx.written

    # -- receiving --------------------------------------------------------------------

    def receive_frame(self, name: str, data: bytes | memoryview, now: float) -> None:
        """Process one frame that arrived on path ``name``; LinkFrameError breaks the link."""
        path = self._paths.get(name)
        if path is not None:
            path.last_heard = now
        if len(data) > DATA_HEADER and data[0] == DATA:  # (no Frame for the common case)
            self._ack_path = name
            self._receive_data(_U64.unpack_from(data, 1)[0], memoryview(data)[DATA_HEADER:])
            if path is not None and now - path.last_sent >= self.ping_interval / 2:
                # Liveness for the sender: it hears from us while its data arrives, even
                # if our application is not consuming (a PING would queue behind its data).
                path.ack_due = True
            return
        frame = parse_frame_untrusted(data)
        if frame.kind == ACK:
            self._receive_ack(frame.offset)
        elif frame.kind == PING:
            self._ack_path = name
            if path is not None:
                path.ack_due = True
        elif frame.kind == CLOSE:
            if self._remote_close is None:
                self._remote_close = frame.offset
                self._events.append(RemoteClosed(frame.offset))
            if path is not None:
                path.ack_due = True
                path.close_ack_due = True
        elif frame.kind == CLOSE_ACK:
            self.close_confirmed = self._close_at is not None
        elif frame.kind == DIRECT_LOST:
            self._events.append(RemoteLostDirect())
        elif frame.kind == RESET:
            self._events.append(RemoteReset())

    def _receive_data(self, offset: int, payload: bytes | memoryview) -> None:
        end = offset + len(payload)
        if end <= self._received:
            self._duplicates += 1
            return
        if offset > self._received:
            raise LinkFrameError(
                f"gap in link stream: expected offset {self._received}, got {offset}"
            )
        if self._remote_close is not None and end > self._remote_close:
            raise LinkFrameError("data beyond the far side's close")
        if end - self._consumed > self.window + self.max_message_size:
            raise LinkFrameError("far side exceeded the link window")
        fresh = payload[self._received - offset :] if offset < self._received else payload
        self._received = end
        try:
            self._cutter.feed(fresh, self._cut)
        except ValueError as exc:
            raise LinkFrameError(f"{exc} (max {self.max_message_size})") from None

    def _cut(self, message: bytes) -> None:
        prefix = self._channel_prefix
        if prefix is not None and message.startswith(prefix):
            self._channel_ready.append(message)
        else:
            self._ready.append(message)

    def _receive_ack(self, consumed: int) -> None:
        if consumed > self._tx.written:
            raise LinkFrameError(
                f"ACK for offset {consumed} beyond what we sent ({self._tx.written})"
            )
        self._tx.release(consumed)

    def next_message(self, now: float) -> bytes | None:
        """The next complete message for the application, or None."""
        if not self._ready:
            return None
        message = self._ready.popleft()
        self._consumed += _LENGTH_PREFIX + len(message)
        if self._ack_deadline is None:
            self._ack_deadline = now + self.ack_delay
        return message

    def take_prefixed(self, prefix: bytes, now: float) -> list[bytes]:
        """Take every ready message that starts with ``prefix``, wherever it is queued.

        A second channel on the link (topics) is read this way, so it never waits behind
        application messages nobody reads; the ACK counts its bytes as consumed, which
        keeps the receive window bounded exactly as ``next_message`` does.
        """
        if prefix != self._channel_prefix:  # from now on such messages are routed as cut
            self._channel_prefix = prefix
            if any(message.startswith(prefix) for message in self._ready):
                self._channel_ready += [m for m in self._ready if m.startswith(prefix)]
                self._ready = deque(m for m in self._ready if not m.startswith(prefix))
        if not self._channel_ready:
            return []
        taken, self._channel_ready = self._channel_ready, []
        self._consumed += sum(_LENGTH_PREFIX + len(m) for m in taken)
        if self._ack_deadline is None:
            self._ack_deadline = now + self.ack_delay
        return taken

    @property
    def has_message(self) -> bool:
        return bool(self._ready or self._channel_ready)

    @property
    def message_ready(self) -> bool:
        """``next_message`` would return a message."""
        return bool(self._ready)

    @property
    def channel_message_ready(self) -> bool:
        """A message of the internal channel was cut since ``take_prefixed`` last ran."""
        return bool(self._channel_ready)

    @property
    def ack_deadline(self) -> float | None:
        """When a consumption not acknowledged yet must be (the delayed-ACK timer)."""
        return self._ack_deadline if self._consumed > self._ack_sent else None

    @property
    def ack_urgent(self) -> bool:
        """An ACK is due without waiting for its deadline (a quarter of the window was
        consumed, or the far side closed): a driver wakes a writer for it."""
        unsent = self._consumed - self._ack_sent
        return unsent >= self._ack_threshold or (unsent > 0 and self._remote_close is not None)

    @property
    def remote_closed(self) -> bool:
        return self._remote_close is not None

    @property
    def remote_finished(self) -> bool:
        """The far side closed and we consumed all it sent: receive() hits EndOfChannel."""
        return (
            self._remote_close is not None
            and not self._ready
            and not self._channel_ready
            and self._consumed >= self._remote_close
        )

    # -- output -----------------------------------------------------------------------

    def poll_transmit(self, name: str, now: float, *, short: bool = True) -> bytes | None:
        """The next frame to send on path ``name``, or None.

        ``short=False``: no DATA frame shorter than the path's limit (what remains is
        left for a later poll, which may then fill the frame with what came since).
        """
        path = self._paths.get(name)
        if path is None:
            return None
        frame = self._next_frame(name, path, now, short)
        if frame is not None:
            path.last_sent = now
        return frame

    def _next_frame(self, name: str, path: _Path, now: float, short: bool) -> bytes | None:
        if path.lost_direct_due:
            path.lost_direct_due = False
            return bytes([DIRECT_LOST])
        if path.close_ack_due:
            path.close_ack_due = False
            return bytes([CLOSE_ACK])
        if path.ack_due or (self._consumed != self._ack_sent and self._ack_here(name, now)):
            path.ack_due = False
            self._ack_sent = self._consumed
            self._ack_deadline = None
            self._ack_timer_fired = False
            return encode_offset_frame(ACK, self._consumed)
        if path.ping_due:
            path.ping_due = False
            path.last_ping = now
            self._pings += 1
            return bytes([PING])
        if name != self.active:
            return None
        tx = self._tx
        if tx.position < tx.written:
            if not short and tx.written - tx.position < path.payload_limit:
                return None
            offset = tx.position
            parts = tx.read(path.payload_limit)
            cursor = tx.position
            self._fragments += 1
            if offset < self._high:
                self._retransmitted += 1
                self._retransmitted_bytes += min(self._high, cursor) - offset
            self._high = max(self._high, cursor)
            return b"".join([_DATA_KIND, _U64.pack(offset), *parts])
        if self._close_at is not None and not self._close_sent:
            self._close_sent = True
            return encode_offset_frame(CLOSE, self._close_at)
        return None

    def _ack_here(self, name: str, now: float) -> bool:
        """An ACK is wanted (the caller saw unacknowledged consumption) on path ``name``:
        the one we last heard DATA or PING on, else the active one."""
        ack_path = self._ack_path
        if ack_path != name and (ack_path is not None or self.active != name):
            return False
        return self._ack_wanted(now)

    def _ack_wanted(self, now: float) -> bool:
        if self._consumed == self._ack_sent:
            return False
        if self._consumed - self._ack_sent >= self._ack_threshold or self._remote_close is not None:
            return True
        return self._ack_timer_fired or (
            self._ack_deadline is not None and now >= self._ack_deadline
        )

    def wants_transmit(self, name: str, now: float) -> bool:
        """Whether poll_transmit(name) would return a frame (without taking it)."""
        path = self._paths.get(name)
        if path is None:
            return False
        if path.lost_direct_due or path.ack_due or path.ping_due or path.close_ack_due:
            return True
        if self._consumed != self._ack_sent and self._ack_here(name, now):
            return True
        if name != self.active:
            return False
        tx = self._tx
        return tx.position < tx.written or (self._close_at is not None and not self._close_sent)

    def poll_event(self) -> LinkEvent | None:
        return self._events.popleft() if self._events else None

    def poll_timeout(self) -> float | None:
        deadline = self._ack_deadline if self._consumed > self._ack_sent else None
        for path in self._paths.values():
            if path.watched:
                heard = path.last_heard
                due = heard + self.path_timeout
                if not path.ping_due:
                    due = min(due, max(heard, path.last_ping) + self.ping_interval)
                deadline = due if deadline is None else min(deadline, due)
        return deadline

    def handle_timeout(self, now: float) -> None:
        if self._ack_deadline is not None and now >= self._ack_deadline:
            self._ack_deadline = None
            self._ack_timer_fired = self._consumed > self._ack_sent
        for name, path in list(self._paths.items()):
            if not path.watched:
                continue
            silent = now - path.last_heard
            if silent >= self.path_timeout:
                self.remove_path(name)
                self._events.append(PathDead(name, f"nothing heard for {silent:.1f} s"))
            elif silent >= self.ping_interval and now - path.last_ping >= self.ping_interval:
                path.ping_due = True

    def statistics(self) -> LinkStatistics:
        return LinkStatistics(
            bytes_queued=self._tx.written,
            bytes_acked=self._tx.acked,
            bytes_consumed=self._consumed,
            unacked_bytes=self._tx.written - self._tx.acked,
            fragments_sent=self._fragments,
            fragments_retransmitted=self._retransmitted,
            bytes_retransmitted=self._retransmitted_bytes,
            duplicates_dropped=self._duplicates,
            pings_sent=self._pings,
        )
