"""Retry-After for a busy relay: each refused peer gets its own later slot (sans-IO).

After a restart every peer comes back at once; the pending table fills and the rest are
refused as busy. Telling them all "retry in 1 s" only moves the stampede one second on,
and each wasted attempt costs CPU on both ends. Instead the schedule queues them in
time: the k-th peer refused (counted while the relay stays busy) is sent ``k / rate``
seconds into the future, where ``rate`` is how fast connections leave the pending table
(measured, smoothed): each pending connection that registers frees a slot for the next
in line, so the crowd returns at about the pace the relay registers. The rate is taken
a little optimistically (x ``OPTIMISM``): a peer that comes back too early costs one
cheap refusal, a slot nobody comes for costs registration capacity. ``Retry-After`` is
whole seconds, rounded down; the client adds up to one second of jitter.
"""

from __future__ import annotations

import math

__all__ = ["RetrySchedule"]

OPTIMISM = 1.25


class RetrySchedule:
    """Slots handed out to busy refusals; ``exits`` is bumped as pending connections go."""

    def __init__(
        self,
        *,
        initial_rate: float = 200.0,
        min_rate: float = 20.0,
        max_wait: int = 60,
        window: float = 1.0,
    ) -> None:
        self.exits = 0  # connections that left the pending table (registered or gone)
        self.rate = initial_rate  # smoothed exits per second while busy
        self.min_rate = min_rate
        self.max_wait = max_wait
        self.window = window
        self._mark: tuple[float, int] | None = None
        self._next_slot = -math.inf  # the latest slot handed out (trio clock)

    def _measure(self, now: float) -> None:
        if self._mark is None:
            self._mark = (now, self.exits)
            return
        since, exits = self._mark
        elapsed = now - since
        if elapsed < self.window:
            return
        if elapsed <= 5 * self.window:  # a stale mark (the relay was not busy) says nothing
            measured = (self.exits - exits) / elapsed
            self.rate = max(self.min_rate, 0.5 * self.rate + 0.5 * measured)
        self._mark = (now, self.exits)

    def refused(self, pending: int, now: float) -> int:
        """Seconds a peer refused now should wait: the ``Retry-After`` value (>= 1).

        ``pending`` is the number of connections in the full pending table.
        """
        self._measure(now)
        if pending <= 0:
            return 1  # room already (a refusal raced a registration)
        slot = max(self._next_slot, now) + 1.0 / (self.rate * OPTIMISM)
        wait = slot - now
        if wait < self.max_wait:
            self._next_slot = slot
        return max(1, min(self.max_wait, math.floor(wait)))
