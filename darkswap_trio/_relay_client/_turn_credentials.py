"""TURN credentials from a relay over signaling (docs/PROTOCOL.md 13.6), SDK side.

:meth:`RelaySession.turn_credentials` sends ``TurnCredentialsRequest``; the session's
reader hands the answer (``TurnCredentials``, or an ``Error`` with a TURN code) to the
oldest waiter here. The frame itself is checked by the signaling codec
(``decode_message_untrusted``: only ``SignalingParseError``); this module turns it into
the public :class:`TurnCredentials`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from ..proto import signaling as sig

__all__ = ["TurnCredentialWaiters", "TurnCredentials", "TurnUnavailable"]

# Error codes that answer a TurnCredentialsRequest (and nothing else).
TURN_ERROR_CODES = frozenset({"turn_disabled", "turn_refused"})


class TurnUnavailable(Exception):
    """The relay gives no TURN credentials: ``code`` is ``turn_disabled`` (it serves no
    TURN), ``turn_refused`` (not to this session), ``unsupported`` (a relay that predates
    the message) or ``timeout``."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(f"{message} [{code}]")
        self.code = code


@dataclass(frozen=True)
class TurnCredentials:
    """Long-term TURN credentials (TURN REST API form) and the relay's TURN URIs.

    ``expires_at`` is a ``time.time()`` value; ``uris`` are RFC 7065 ``turn:``/``turns:``
    URIs, usable as a WebRTC ``iceServers`` entry with ``username`` and ``password``.
    """

    username: str
    password: str
    ttl: float
    expires_at: float
    uris: tuple[str, ...]

    @classmethod
    def from_message(cls, msg: sig.TurnCredentials, unix_now: float) -> TurnCredentials:
        return cls(msg.username, msg.password, msg.ttl, unix_now + msg.ttl, msg.uris)


class TurnCredentialWaiters:
    """Outstanding requests of one session, answered in order (the relay answers each
    request once, in the order it reads them)."""

    def __init__(self) -> None:
        self._waiters: deque[trio.MemorySendChannel[sig.TurnCredentials | sig.Error]] = deque()

    async def request(
        self, send: Callable[[sig.Message], Awaitable[None]], timeout: float
    ) -> TurnCredentials:
        channel, receive = trio.open_memory_channel[sig.TurnCredentials | sig.Error](1)
        self._waiters.append(channel)
        try:
            await send(sig.TurnCredentialsRequest())
            with trio.move_on_after(timeout):
                try:
                    answer = await receive.receive()
                except trio.EndOfChannel:
                    raise trio.BrokenResourceError("relay session closed") from None
                if isinstance(answer, sig.Error):
                    raise TurnUnavailable(answer.message, answer.code or "turn_refused")
                return TurnCredentials.from_message(answer, time.time())
            raise TurnUnavailable(f"no answer within {timeout:.3g}s", "timeout")
        finally:
            if channel in self._waiters:
                self._waiters.remove(channel)

    def deliver(self, msg: sig.TurnCredentials | sig.Error) -> bool:
        """Give an answer to the oldest waiter; False if none waits."""
        if not self._waiters:
            return False
        self._waiters.popleft().send_nowait(msg)
        return True

    def answers(self, error: sig.Error) -> bool:
        """Whether ``error`` answers a TurnCredentialsRequest (then it was delivered)."""
        if error.code in TURN_ERROR_CODES:
            return self.deliver(error)
        if error.code == "unknown_type" and "TurnCredentialsRequest" in error.message:
            return self.deliver(sig.Error(error.message, "unsupported"))
        return False

    def close(self) -> None:
        for waiter in self._waiters:
            waiter.close()
        self._waiters.clear()
