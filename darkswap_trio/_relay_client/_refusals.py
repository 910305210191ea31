"""How the relay manager reads a failed connection: permanent, busy, or worth a backoff."""

from __future__ import annotations

import ssl

import trio

from ._errors import RelayError

__all__ = ["PERMANENT_REFUSALS", "BUSY_REFUSALS", "busy_wait", "describe", "is_permanent",
           "real_cause", "sole_leaf"]  # fmt: skip

# Refusals that a retry cannot change: the relay is not who its multiaddr says, or the
# credentials we have are not accepted (token_expired is left out: a provider may well
# hand out a fresh token on the next attempt).
PERMANENT_REFUSALS = frozenset(
    {
        "relay_id_mismatch",
        "relay_auth_failed",
        "token_required",
        "invalid_token",
        "token_peer_mismatch",
    }
)

# Refusals that say the relay is alive but swamped (a restart storm): the peer waits as
# long as the relay's Retry-After asks, and the attempt does not count as a failure.
BUSY_REFUSALS = frozenset({"relay_busy"})


def busy_wait(exc: BaseException) -> float | None:
    """Seconds to wait before retrying a busy relay (None: ``exc`` is not a busy refusal)."""
    if not isinstance(exc, RelayError) or exc.code not in BUSY_REFUSALS:
        return None
    return exc.retry_after if exc.retry_after is not None else 1.0


def sole_leaf(exc: BaseException) -> BaseException:
    """The one exception inside (nested) single-member groups, e.g. from a session's nursery."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def real_cause(exc: BaseException) -> BaseException:
    """The exception that says what went wrong: trio wraps a failed TLS handshake in an
    empty BrokenResourceError whose __cause__ is the ssl error."""
    while isinstance(exc, trio.BrokenResourceError) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def is_permanent(exc: BaseException) -> bool:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return True  # an untrusted certificate stays untrusted
    return isinstance(exc, RelayError) and exc.code in PERMANENT_REFUSALS
