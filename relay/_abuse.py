"""Per-IP and relay-wide message budgets (issue #10 item 7: cheap floods saturate the core).

A session's own token bucket (``messages_per_peer``) starts full, so a flooder that
reconnects used to get a fresh burst every time. :class:`AbuseGuard` keeps the budgets
that survive reconnects, keyed by canonical IP:

- ``messages_per_ip``: every text frame of a registered session, all sessions of the
  address together.
- ``handshakes_per_ip``: registrations started (the first frame of a session, which
  makes the relay sign a Challenge), so connection churn is paid per address.
- ``messages_total`` and ``handshakes_total``: relay-wide. While the relay receives
  more than this, frames (registrations) of addresses that have spent over half their
  own burst are shed (light users, such as paced honest peers, still pass): a
  last-resort CPU ceiling against floods and churn spread over many addresses.

All checks run on the raw frame (its length and whether it is text or binary, known
from the WebSocket layer), before any JSON is decoded. A session that keeps sending
past its budgets is closed (1008) and its address *penalized*: for ``abuse_penalty``
seconds its new connections are closed at TCP accept without reading a byte.

Like :mod:`relay._limits`, nothing here reads the clock: callers pass ``now``.
"""

from __future__ import annotations

from collections import OrderedDict

from ._config import LimitsConfig
from ._limits import KeyedRateLimiter, TokenBucket

__all__ = ["AbuseGuard"]


class AbuseGuard:
    """The relay's per-IP message and handshake budgets, its total budget, its penalties."""

    def __init__(self, limits: LimitsConfig) -> None:
        table = limits.limiter_table_size
        self.messages = KeyedRateLimiter(
            limits.messages_per_ip_rate, limits.messages_per_ip_burst, table
        )
        self.handshakes = KeyedRateLimiter(
            limits.handshakes_per_ip_rate, limits.handshakes_per_ip_burst, table
        )
        self.total = TokenBucket(limits.messages_total_rate, limits.messages_total_burst)
        self.handshakes_total = TokenBucket(
            limits.handshakes_total_rate, limits.handshakes_total_burst
        )
        self.penalty = float(limits.abuse_penalty)
        self.max_penalized = table
        # "Spent over half its burst": who is shed when a relay-wide budget is exceeded.
        self._heavy = limits.messages_per_ip_burst / 2
        self._heavy_handshakes = limits.handshakes_per_ip_burst / 2
        # Penalized address -> end of its penalty, oldest first (bounded like the limiters).
        self._penalized: OrderedDict[str, float] = OrderedDict()
        self.frames_shed = 0  # frames dropped undecoded by any budget (sessions' included)

    def message_allowed(self, ip: str, now: float) -> str | None:
        """Charge one message of a registered session from ``ip``: None, or the limit hit."""
        if not self.messages.try_take(ip, 1, now):
            return "messages_per_ip"
        total = self.total
        if total.rate and not total.try_take(1, now):
            # Over the relay-wide budget: shed only addresses spending heavily.
            if self.messages.tokens(ip, now) < self._heavy:
                return "messages_total"
        return None

    def handshake_allowed(self, ip: str, now: float) -> str | None:
        """Charge one registration (a session's first frame) to ``ip``: None, or the limit."""
        if not self.handshakes.try_take(ip, 1, now):
            return "handshakes_per_ip"
        total = self.handshakes_total
        if total.rate and not total.try_take(1, now):
            if self.handshakes.tokens(ip, now) < self._heavy_handshakes:
                return "handshakes_total"
        return None

    def penalize(self, ip: str, now: float) -> None:
        """Refuse ``ip``'s connections at accept for :attr:`penalty` seconds."""
        if self.penalty <= 0 or not ip:
            return
        self._penalized.pop(ip, None)
        while len(self._penalized) >= self.max_penalized:
            self._penalized.popitem(last=False)
        self._penalized[ip] = now + self.penalty

    def penalized(self, ip: str, now: float) -> bool:
        """Whether ``ip`` is serving a penalty at ``now`` (expired ones are forgotten)."""
        until = self._penalized.get(ip)
        if until is None:
            return False
        if now < until:
            return True
        del self._penalized[ip]
        return False

    @property
    def penalized_count(self) -> int:
        return len(self._penalized)
