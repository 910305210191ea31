"""A ready signaling helper for two processes: offer, answer and trickled candidates over
one TCP connection (what aiortc ships as ``contrib.signaling.TcpSocketSignaling``).

Each message is one JSON line: ``{"type": "offer"|"answer", "sdp": "..."}`` or
``{"type": "candidate", "candidate": "candidate:..."}`` (``null`` ends the candidates).
It carries signaling only; the data flows peer to peer. Two peers that share a relay
use :class:`WebRtcTransport` instead, which signals through the relay.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from ..proto.errors import SignalingParseError

MAX_LINE = 64 * 1024  # an SDP with many candidates stays far below this
_TYPES = ("offer", "answer", "candidate")


@dataclass(frozen=True)
class SignalMessage:
    """``type`` is "offer", "answer" (``sdp`` set) or "candidate" (``candidate`` set, or
    None at the end of candidates)."""

    type: str
    sdp: str | None = None
    candidate: str | None = None


def parse_signal_line_untrusted(line: bytes) -> SignalMessage:
    """Decode one JSON line; raises only SignalingParseError."""
    try:
        value = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise SignalingParseError(f"signaling line is not JSON: {exc}") from None
    if not isinstance(value, dict) or value.get("type") not in _TYPES:
        raise SignalingParseError("signaling line lacks a type of offer, answer or candidate")
    if value["type"] == "candidate":
        candidate = value.get("candidate")
        if candidate is not None and not isinstance(candidate, str):
            raise SignalingParseError("candidate must be a string or null")
        return SignalMessage("candidate", candidate=candidate)
    if not isinstance(value.get("sdp"), str):
        raise SignalingParseError(f"{value['type']} lacks its sdp string")
    return SignalMessage(value["type"], sdp=value["sdp"])


class TcpSignaling:
    """Signaling over a connected ``trio.abc.Stream``; see :func:`open_tcp_signaling`."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._buffer = bytearray()
        self._send_lock = trio.Lock()

    async def send_description(self, type: str, sdp: str) -> None:
        """Send our offer or answer (``type`` "offer" / "answer")."""
        if type not in ("offer", "answer") or not isinstance(sdp, str):
            raise ValueError("send_description takes 'offer' or 'answer' and an SDP string")
        await self._send({"type": type, "sdp": sdp})

    async def send_candidate(self, candidate: str | None) -> None:
        """Send one trickled candidate (``candidate:...``); None ends our candidates."""
        await self._send({"type": "candidate", "candidate": candidate})

    async def _send(self, message: dict[str, str | None]) -> None:
        async with self._send_lock:  # a candidate task and the main task share the stream
            await self.stream.send_all(json.dumps(message).encode() + b"\n")

    async def receive(self) -> SignalMessage:
        """The next message; EndOfChannel when the far end closed, SignalingParseError
        for a malformed or oversized line."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return parse_signal_line_untrusted(line)
            if len(self._buffer) > MAX_LINE:
                raise SignalingParseError(f"signaling line longer than {MAX_LINE} bytes")
            data = await self.stream.receive_some(MAX_LINE)
            if not data:
                raise trio.EndOfChannel("the signaling peer closed the connection")
            self._buffer += data

    async def aclose(self) -> None:
        await self.stream.aclose()


@asynccontextmanager
async def open_tcp_signaling(
    host: str,
    port: int,
    *,
    listen: bool = False,
    on_listening: Callable[[int], None] | None = None,
) -> AsyncIterator[TcpSignaling]:
    """Connect to ``host:port``, or with ``listen=True`` wait there for one peer to connect
    (port 0 picks a free port; ``on_listening(port)`` is called once listening)."""
    if listen:
        listeners = await trio.open_tcp_listeners(port, host=host)
        try:
            if on_listening is not None:
                on_listening(listeners[0].socket.getsockname()[1])
            stream = await listeners[0].accept()
        finally:
            for listener in listeners:
                await listener.aclose()
    else:
        stream = await trio.open_tcp_stream(host, port)
    signaling = TcpSignaling(stream)
    try:
        yield signaling
    finally:
        await signaling.aclose()
