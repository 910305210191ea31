"""Per-IP and relay-wide message budgets (issue #10 item 7: cheap floods saturate the core).

A session's own token bucket (``messages_per_peer``) starts full, so a flooder that
reconnects used to get a fresh burst every time. :class:`AbuseGuard` keeps the budgets
that survive reconnects, keyed by canonical IP:

- ``messages_per_ip``: every text frame of a registered session, all sessions of the
  address together.
- ``handshakes_per_ip``: registrations started (the first frame of a session, which
  makes the relay sign a Challenge), so connection churn is paid per address.
- ``messages_total`` and ``handshakes_total``: relay-wide. While the relay receives
  more than this (and for a second after), a session's text frames pass only within its
  *fair share* of the relay-wide rate (the rate divided by the registered sessions), and registrations of
  addresses that have spent over half their own burst are shed: a CPU ceiling against
  floods and churn spread over many addresses (see "Overload" below).

All checks run on the raw frame (its length and whether it is text or binary, known
from the WebSocket layer), before any JSON is decoded. A session that keeps sending
past its budgets is closed (1008) and its address *penalized*: for ``abuse_penalty``
seconds its new connections are closed at TCP accept without reading a byte.

Overload. Per-session and per-IP rates cannot tell 500 flooders on 100 addresses from
honest peers once the relay's core is saturated: each flooder is then served no faster
than an honest session (the relay reads each socket once per scheduler round) and stays
within every budget, while its Pings take the core. So the relay-wide budgets follow the
relay's own load: :meth:`AbuseGuard.observe_lag` gets the event loop's lateness (how long
a timer waits behind runnable tasks, sampled by the server) and scales the relay-wide
rates down multiplicatively while the lag exceeds ``overload_lag``, back up additively
when it does not (AIMD, like TCP congestion control). Frames shed because the *relay* is
busy are not the peer's fault: no strike, no close, no penalty. A session whose frames are
shed :data:`PAUSE_AFTER` times in a row with nothing passing in between (a pure text
flood: honest peers interleave binary circuit frames or stay within their share) stops
being read for :data:`OVERLOAD_PAUSE` seconds (doubling up to 8 s while the overload
lasts): TCP flow control holds its flood in the kernel at no CPU cost, where dropped
frames still cost their parsing. The trade-off: a session that only sends text and
sends more than its share while the relay is overloaded waits too, honest or not.

Like :mod:`relay._limits`, nothing here reads the clock: callers pass ``now``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from ._config import LimitsConfig
from ._limits import KeyedRateLimiter, TokenBucket


class _Settable(Protocol):
    def set(self) -> None: ...


__all__ = ["OVERLOAD_PAUSE", "PAUSE_AFTER", "AbuseGuard", "SessionShare"]

PAUSE_AFTER = 16  # overload sheds in a row (nothing passing) before a session is paused
OVERLOAD_PAUSE = 1.0  # seconds a paused session is not read (its share refills meanwhile)
OVERLOAD_MEMORY = 1.0  # seconds the relay counts as overloaded after its budget ran dry
MAX_BACKOFF = 3  # ... doubled for each pause while the overload lasts, up to 8 s
_DECREASE = 0.75  # load factor kept per lag sample over overload_lag
_INCREASE = 0.02  # load factor regained per lag sample within overload_lag
_MIN_LOAD = 0.01  # the relay-wide rates never drop below this fraction of the configured
_MIN_SHARE = 1.0  # messages per second every session keeps under overload


class SessionShare:
    """One session's fair share of the relay-wide message rate, used under overload."""

    __slots__ = ("bucket", "streak", "pauses")

    def __init__(self, rate: float) -> None:
        self.bucket = TokenBucket(rate, rate)  # starts full: a second's worth
        self.streak = 0  # frames shed in a row for overload; reset by a frame that passes
        self.pauses = 0  # pauses since the relay was last within its budget (backoff)


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
        self._total_rates = (self.total.rate, self.total.burst)
        self._handshake_rates = (self.handshakes_total.rate, self.handshakes_total.burst)
        self.overload_lag = float(limits.overload_lag)
        self._traffic_waiter: _Settable | None = None
        self._overloaded_until = -math.inf  # fair shares apply until then
        self.load = 1.0  # fraction of the configured relay-wide rates in force (AIMD)
        # Registered sessions, for the fair share (the server points it at its router).
        self.active_sessions: Callable[[], int] = lambda: 1
        self.penalty = float(limits.abuse_penalty)
        self.max_penalized = table
        # "Spent over half its burst": who is shed when a relay-wide budget is exceeded.
        self._heavy = limits.messages_per_ip_burst / 2
        self._heavy_handshakes = limits.handshakes_per_ip_burst / 2
        # Penalized address -> end of its penalty, oldest first (bounded like the limiters).
        self._penalized: OrderedDict[str, float] = OrderedDict()
        self.frames_shed = 0  # frames dropped undecoded by any budget (sessions' included)

    def new_share(self) -> SessionShare:
        return SessionShare(self.share_rate())

    def share_rate(self) -> float:
        """A session's fair share of the relay-wide message rate in force."""
        return max(_MIN_SHARE, self.total.rate / max(1, self.active_sessions()))

    def message_allowed(self, ip: str, now: float, share: SessionShare | None = None) -> str | None:
        """Charge one message of a registered session from ``ip``: None, or the limit hit."""
        if self._traffic_waiter is not None:
            self._traffic_waiter.set()  # the load watcher sleeps while the relay is idle
            self._traffic_waiter = None
        if not self.messages.try_take(ip, 1, now):
            return "messages_per_ip"
        total = self.total
        if not total.rate:
            return None
        if not total.try_take(1, now):
            self._overloaded_until = now + OVERLOAD_MEMORY
            if share is None:
                return "messages_total" if self.messages.tokens(ip, now) < self._heavy else None
        if share is None:
            return None
        if now < self._overloaded_until:
            # Over the relay-wide budget: every frame fits its session's fair share, so
            # the relay-wide tokens do not go to whoever asks most often (a flooder).
            bucket = share.bucket
            bucket.rate = bucket.burst = self.share_rate()
            if not bucket.try_take(1, now):
                return "messages_total"
        elif share.pauses and self.load >= 1.0:
            share.pauses = 0  # the overload is over: the next one starts without backoff
        return None

    def overload_pause(self, share: SessionShare) -> float:
        """A frame of ``share``'s session was shed for overload: seconds to stop reading it."""
        share.streak += 1
        if share.streak < PAUSE_AFTER:
            return 0.0
        share.streak = 0
        share.pauses += 1
        return OVERLOAD_PAUSE * (1 << min(share.pauses - 1, MAX_BACKOFF))

    def idle_until_traffic(self, waiter: _Settable) -> bool:
        """Whether the load watcher may stop sampling: nothing to recover (full rates) and
        then ``waiter.set()`` is called on the next message. An idle relay runs no timer
        at all (and simulated clocks can jump freely); traffic resumes the sampling."""
        if self.load < 1.0:
            return False
        self._traffic_waiter = waiter
        return True

    def observe_lag(self, lag: float) -> None:
        """The event loop ran ``lag`` seconds late: adjust the relay-wide rates (AIMD)."""
        if self.overload_lag <= 0:
            return
        if lag > self.overload_lag:
            load = max(_MIN_LOAD, self.load * _DECREASE)
        else:
            load = min(1.0, self.load + _INCREASE)
        if load == self.load:
            return
        self.load = load
        for bucket, (rate, burst) in (
            (self.total, self._total_rates),
            (self.handshakes_total, self._handshake_rates),
        ):
            if rate:  # 0 stays unlimited
                bucket.rate, bucket.burst = rate * load, max(1.0, burst * load)

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
