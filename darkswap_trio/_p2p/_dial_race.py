"""connect_to_peer's race: the direct and relay attempts to one peer, and its outcome.

Each attempt runs inside its own cancel scope here, so the race can stop it. A relay
that answers ``unknown_peer`` ends the whole race at once: the direct attempt signals
through a relay too and would otherwise only wait for its timeout (30 s by default).
"""

from __future__ import annotations

import trio

from .._relay_client._session import RelayError


class PeerUnreachable(RelayError):
    """Neither the direct nor the relay path to a peer could be opened.

    ``code`` is ``unknown_peer`` when a relay answered that the peer is not connected
    to it (raised as soon as that answer arrives), ``unreachable`` when every attempt
    failed or timed out, ``no_path`` when no path is enabled.
    """


class DialRace:
    """The outcome of connect_to_peer's concurrent attempts ("direct", "relay")."""

    def __init__(self, *attempts: str) -> None:
        self.pending = len(attempts)
        self.errors: list[str] = []
        self.done = trio.Event()
        self.unknown_peer = False  # every failed attempt was an ``unknown_peer``
        self._finished = {"direct", "relay"} - set(attempts)  # not started: nothing to end
        self._known_failures = 0
        self.scopes = {"direct": trio.CancelScope(), "relay": trio.CancelScope()}

    def failed(self, what: str, exc: BaseException, *, unknown_peer: bool = False) -> None:
        if what in self._finished:
            return
        self._finished.add(what)
        self.scopes[what].cancel()
        self.errors.append(f"{what}: {type(exc).__name__}: {exc}")
        self._known_failures += not unknown_peer
        self.unknown_peer = not self._known_failures
        self.pending -= 1
        if self.pending <= 0:
            self.done.set()

    def peer_unknown(self, exc: BaseException) -> None:
        """No connected relay knows the peer: no attempt can succeed; stop them all."""
        self.failed("relay", exc, unknown_peer=True)
        self.failed("direct", exc, unknown_peer=True)

    def abandon(self) -> None:
        for scope in self.scopes.values():
            scope.cancel()
