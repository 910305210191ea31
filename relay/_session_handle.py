"""What the relay's router may do with a signaling session, and nothing more.

:class:`~relay._router.RelayRouter` holds sessions only as :class:`SessionHandle`: it
queues frames on them and closes them, and never reaches into their state. The session
(:class:`~relay._session.SignalingSession`) implements it and calls router *methods*,
never router state, so the two depend one way: session -> router -> this module.

Every method here is synchronous and never blocks (a router call must not wait for a
slow reader), except :meth:`SessionHandle.probe_alive`, which the router awaits only
while one contended registration waits for it.
"""

from __future__ import annotations

from typing import Protocol

from darkswap_trio.proto.signaling import Error, Message

# WebSocket close codes (PROTOCOL.md section 6).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
CLOSE_TOKEN_EXPIRED = 4001


class SessionHandle(Protocol):
    """A signaling session as the router sees it."""

    @property
    def peer_id(self) -> str | None:
        """The registered peer id (None before registration)."""

    @property
    def extended(self) -> bool:
        """Whether the peer speaks darkswap-relay/1 (False: a legacy client)."""
        ...

    @property
    def has_libp2p_id(self) -> bool:
        """Whether its peer id is a libp2p PeerId (see :func:`relay._legacy.incompatible`)."""
        ...

    def send_control(self, msg: Message) -> None:
        """Queue (or write at once) a JSON message; a peer that lets its control queue
        fill is closed as stalled."""

    def send_circuit_data(
        self, relay_id: bytes, sender: str, payload: bytes | memoryview, frame: bytes | None = None
    ) -> None:
        """Circuit data from ``sender`` (``frame``: the sender's DATA frame of
        ``payload``, forwarded as is); bounded by the circuit's credit window."""

    def credit_granted(self, relay_id: bytes, increment: int) -> None:
        """The receiving end of circuit ``relay_id`` granted ``increment`` bytes."""

    def circuit_closed(self, relay_id: bytes, text: str, reason: str) -> None:
        """Circuit ``relay_id`` (UUID ``text``) closed for ``reason``."""

    async def probe_alive(self, timeout: float) -> bool:
        """True if the peer sends any frame within ``timeout`` of a Ping."""
        ...

    def close(self, code: int, error: Error | None = None, reason: str = "") -> None:
        """Send ``error`` (if any), then close with WebSocket ``code``. Idempotent."""
