"""The ICE agent's timers: outstanding STUN transactions and consent freshness.

Both are plain bookkeeping over ``now`` values handed in by the agent, so the agent
itself only decides what a timeout means.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from aioice.candidate import Candidate

from ..stun import StunTransaction
from ._checklist import CandidatePair
from ._events import IceOutbox

__all__ = [
    "CONSENT_INTERVAL",
    "CONSENT_TIMEOUT",
    "ConsentFreshness",
    "PendingTransaction",
    "TransactionTable",
]

CONSENT_INTERVAL = 5.0  # RFC 7675 section 5.1, jittered by 0.8-1.2
CONSENT_TIMEOUT = 30.0


@dataclass
class PendingTransaction:
    """An outstanding client transaction and what it was for."""

    kind: str  # "gather" | "check" | "consent"
    transaction: StunTransaction
    addr: tuple[str, int]
    local: tuple[str, int]
    pair: CandidatePair | None = None
    base: Candidate | None = None
    nominate: bool = False
    sent_controlling: bool = False
    sent_at: float = 0.0

    @property
    def transaction_id(self) -> bytes:
        return self.transaction.data[8:20]


class TransactionTable:
    """Outstanding transactions by transaction id; sends their requests to ``outbox``."""

    def __init__(self, outbox: IceOutbox) -> None:
        self._by_id: dict[bytes, PendingTransaction] = {}
        self._outbox = outbox

    def start(self, pending: PendingTransaction) -> None:
        """Remember ``pending`` and send its request."""
        self._by_id[pending.transaction_id] = pending
        self.resend(pending)

    def resend(self, pending: PendingTransaction) -> None:
        self._outbox.send(pending.transaction.data, pending.addr, pending.local)

    def get(self, transaction_id: bytes) -> PendingTransaction | None:
        return self._by_id.get(transaction_id)

    def remove(self, pending: PendingTransaction) -> None:
        self._by_id.pop(pending.transaction_id, None)

    def has_kind(self, kind: str) -> bool:
        return any(p.kind == kind for p in self._by_id.values())

    def clear(self) -> None:
        self._by_id.clear()

    def poll_timeout(self) -> float | None:
        return min((p.transaction.poll_timeout() for p in self._by_id.values()), default=None)

    def expire(self, now: float) -> Iterator[tuple[PendingTransaction, bool]]:
        """Yield (pending, timed_out) for each transaction to retransmit or give up.

        Timed-out transactions are removed before they are yielded.
        """
        for pending in list(self._by_id.values()):
            outcome = pending.transaction.handle_timeout(now)
            if outcome.timed_out:
                self.remove(pending)
                yield pending, True
            elif outcome.retransmit:
                yield pending, False


class ConsentFreshness:
    """RFC 7675: a check every ~5 s (jittered), consent lost after 30 s of silence."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self.next_check_at: float | None = None
        self.expires_at: float | None = None

    def start(self, now: float) -> None:
        self.next_check_at = now + self._interval()
        self.expires_at = now + CONSENT_TIMEOUT

    def stop(self) -> None:
        self.next_check_at = self.expires_at = None

    def refreshed(self, now: float) -> None:
        """An authenticated response to a consent check arrived."""
        if self.expires_at is not None:
            self.expires_at = now + CONSENT_TIMEOUT

    def poll_timeout(self) -> float | None:
        deadlines = [d for d in (self.next_check_at, self.expires_at) if d is not None]
        return min(deadlines, default=None)

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def check_due(self, now: float) -> bool:
        """Whether to send a consent check now; schedules the next one if so."""
        if self.next_check_at is None or now < self.next_check_at:
            return False
        self.next_check_at = now + self._interval()
        return True

    def _interval(self) -> float:
        return CONSENT_INTERVAL * (0.8 + 0.4 * self._rng.random())
