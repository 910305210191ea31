"""Errors of a relay session (shared by the handshake and the session)."""

from __future__ import annotations


class RelayError(Exception):
    """A relay refused something; ``code`` is the protocol's machine-readable error code.

    ``retry_after`` is the seconds a busy relay asked us to wait (its ``Retry-After``), or None.
    """

    def __init__(
        self, message: str, code: str | None = None, *, retry_after: float | None = None
    ) -> None:
        super().__init__(message if code is None else f"{message} [{code}]")
        self.code = code
        self.message = message
        self.retry_after = retry_after


class RelayAuthenticationError(RelayError):
    """The relay could not prove the PeerId we expected, or refused our proof."""


class CircuitRefused(RelayError):
    """The relay refused a circuit; ``code`` names the reason (e.g. ``too_many_circuits``)."""
