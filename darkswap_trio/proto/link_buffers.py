"""The PeerLink core's two stream buffers (sans-IO): what we sent and may have to resend,
and what we received but have not cut into messages yet.

Both keep the pieces they were given instead of one growing bytearray: appending to a
bytearray whose front was deleted moves the whole buffer when it grows (a 4 MiB window
cost ~100 us per 64 KiB message), and every join is a copy of the payload.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Callable

_U32 = struct.Struct(">I")
_LENGTH_PREFIX = 4
# A message up to this size is stored joined with its length prefix (one piece, one
# list entry); a larger one is stored as the prefix and the caller's bytes (no copy).
_JOIN_BELOW = 4096
_COMPACT_AT = 1024  # released pieces kept before the lists are compacted


class SendBuffer:
    """Stream bytes from ``acked`` to ``written``, and a read position for the next frame.

    ``read(limit)`` returns the pieces of the next at most ``limit`` bytes from the read
    position (whole pieces where possible: no copy until the frame is joined).
    """

    __slots__ = ("acked", "written", "position", "_pieces", "_starts", "_head", "_index")

    def __init__(self) -> None:
        self.acked = 0  # everything below was consumed by the far side
        self.written = 0  # the stream's length so far
        self.position = 0  # the next offset read() returns
        self._pieces: list[bytes] = []
        self._starts: list[int] = []  # stream offset of each piece
        self._head = 0  # first piece with bytes at or above ``acked``
        self._index = 0  # the piece holding ``position`` (len(_pieces) at the end)

    def append_message(self, data: bytes) -> None:
        """Append one message with its big-endian u32 length prefix."""
        prefix = _U32.pack(len(data))
        if len(data) < _JOIN_BELOW:
            self._append(prefix + data)
        else:
            self._append(prefix)
            self._append(data)

    def _append(self, piece: bytes) -> None:
        self._pieces.append(piece)
        self._starts.append(self.written)
        self.written += len(piece)

    def release(self, offset: int) -> None:
        """The far side consumed everything below ``offset``: forget it."""
        if offset <= self.acked:
            return
        self.acked = offset
        pieces, starts = self._pieces, self._starts
        head = self._head
        while head < len(pieces) and starts[head] + len(pieces[head]) <= offset:
            pieces[head] = b""  # the bytes go now; the entry when we compact
            head += 1
        self._head = head
        if self.position < offset:
            self.seek(offset)
        if head >= _COMPACT_AT and head * 2 >= len(pieces):
            del pieces[:head], starts[:head]
            self._index -= head
            self._head = 0

    def seek(self, offset: int) -> None:
        """Read from ``offset`` on (``acked <= offset <= written``)."""
        self.position = offset
        if offset >= self.written:
            self._index = len(self._pieces)
        else:
            self._index = bisect.bisect_right(self._starts, offset, self._head) - 1

    def read(self, limit: int) -> list[bytes | memoryview]:
        """The next at most ``limit`` bytes from the read position (which moves on)."""
        out: list[bytes | memoryview] = []
        pieces, starts = self._pieces, self._starts
        index, position, room = self._index, self.position, limit
        while room > 0 and index < len(pieces):
            piece = pieces[index]
            skip = position - starts[index]
            available = len(piece) - skip
            if available <= room:
                out.append(piece if skip == 0 else memoryview(piece)[skip:])
                position += available
                room -= available
                index += 1
            else:
                out.append(memoryview(piece)[skip : skip + room])
                position += room
                room = 0
        self._index, self.position = index, position
        return out


class MessageCutter:
    """Cuts received stream bytes into messages (u32 length prefix, then the message).

    A message that arrives in one piece is copied once (out of the frame); one spread
    over frames is joined once when complete.
    """

    __slots__ = ("max_message_size", "_header", "_need", "_parts", "_have")

    def __init__(self, max_message_size: int) -> None:
        self.max_message_size = max_message_size
        self._header = b""  # a length prefix cut by a frame boundary
        self._need = -1  # the size of the message being received; -1: reading a prefix
        self._parts: list[bytes | memoryview] = []
        self._have = 0

    @property
    def buffered(self) -> int:
        """Bytes held for a message not complete yet (its prefix included)."""
        return len(self._header) + self._have + (_LENGTH_PREFIX if self._need >= 0 else 0)

    def feed(self, data: bytes | memoryview, emit: Callable[[bytes], None]) -> None:
        """Take the next stream bytes; ``emit`` each message completed. Raises
        ValueError for a length above ``max_message_size`` (the caller's ParseError)."""
        view = memoryview(data)
        keep_views = isinstance(view.obj, bytes)  # immutable: a view of it stays valid
        start, end = 0, len(view)
        while start < end:
            need = self._need
            if need < 0:
                if not self._header and end - start >= _LENGTH_PREFIX:
                    need = _U32.unpack_from(view, start)[0]
                    start += _LENGTH_PREFIX
                else:
                    take = min(_LENGTH_PREFIX - len(self._header), end - start)
                    self._header += bytes(view[start : start + take])
                    start += take
                    if len(self._header) < _LENGTH_PREFIX:
                        return
                    need = _U32.unpack(self._header)[0]
                    self._header = b""
                if need > self.max_message_size:
                    raise ValueError(f"far side sent a {need}-byte message")
                self._need = need
            if not self._have and end - start >= need:
                emit(bytes(view[start : start + need]))
                start += need
                self._need = -1
                continue
            take = min(need - self._have, end - start)
            if not take:
                return
            # a view of immutable bytes (a frame) while the message is incomplete: the
            # join below is then the only copy
            part = view[start : start + take]
            self._parts.append(part if keep_views else bytes(part))
            self._have += take
            start += take
            if self._have == need:
                emit(b"".join(self._parts))
                self._parts = []
                self._have = 0
                self._need = -1
