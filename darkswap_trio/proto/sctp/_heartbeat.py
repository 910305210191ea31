"""SCTP HEARTBEAT (RFC 9260 8.3): path liveness and an RTT sample every interval.

The Heartbeat Info we send is (send time, nonce); only an ACK echoing the nonce of the
heartbeat still outstanding counts, so a forged or stale echo cannot fake an RTT.
"""

from __future__ import annotations

import struct

from ._chunks import HeartbeatChunk

_INFO = struct.Struct("!dQ")


class PathHeartbeat:
    def __init__(self, interval: float, max_misses: int) -> None:
        self.interval = interval
        self.max_misses = max_misses
        self.deadline: float | None = None
        self.rtt: float | None = None
        self._nonce: int | None = None
        self._misses = 0
        self._sent = 0

    def start(self, now: float) -> None:
        self.deadline = now + self.interval

    def on_timer(self, now: float, rto: float) -> bytes | None:
        """The HEARTBEAT chunk to send, or None when the peer is deemed unreachable."""
        if self._nonce is not None:
            self._misses += 1
            if self._misses > self.max_misses:
                self.deadline = None
                return None
        self._sent += 1
        self._nonce = (self._misses << 32) | self._sent
        self.deadline = now + self.interval + rto
        return HeartbeatChunk(_INFO.pack(now, self._nonce)).encode()

    def on_ack_untrusted(self, info: bytes, now: float) -> float | None:
        """The measured RTT if ``info`` answers our outstanding heartbeat."""
        if len(info) != _INFO.size:
            return None
        sent_at, nonce = _INFO.unpack(info)
        if nonce != self._nonce or not 0 <= now - sent_at <= 3600:
            return None
        self._nonce = None
        self._misses = 0
        self.rtt = now - sent_at
        return self.rtt
