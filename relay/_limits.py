"""Rate and concurrency limits: pure, clock-free building blocks for the relay.

Nothing here reads the clock or does I/O: callers pass ``now`` (``trio.current_time()``
in the server), so the behaviour is deterministic and tests step time explicitly.

- :func:`canonical_ip`: one spelling per address, so ``::ffff:1.2.3.4`` and
  ``1.2.3.4`` share a per-IP quota (coturn CVE-2020-26262 class of bypass).
- :class:`TokenBucket`: classic token bucket (rate per second, burst capacity).
- :class:`KeyedRateLimiter`: one bucket per key (IP, peer id) in a bounded LRU table.
- :class:`ConcurrencyCounter`: how many of something each key holds (sessions per IP,
  circuits per peer), with a per-key and an optional total maximum.
"""

from __future__ import annotations

import functools
import ipaddress
import math
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

__all__ = [
    "ConcurrencyCounter",
    "ConcurrencyStatistics",
    "KeyedRateLimiter",
    "RateLimiterStatistics",
    "TokenBucket",
    "canonical_ip",
]


@functools.lru_cache(maxsize=4096)  # parsed on every connection; clients reconnect
def canonical_ip(host: str) -> str:
    """The canonical text form of an IP address, for use as a limiter key.

    Strips ``[...]`` brackets and an IPv6 zone id (``%eth0``), maps IPv4-mapped IPv6
    (``::ffff:1.2.3.4``) to plain IPv4, and writes IPv6 in compressed lower-case form.

    Raises:
        ValueError: ``host`` is not an IP address literal (host names are not resolved).
    """
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.split("%", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"not an IP address: {host!r}") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


class TokenBucket:
    """A token bucket: ``burst`` tokens of capacity, refilled at ``rate`` per second.

    Starts full. Over any interval of length ``T`` it grants at most
    ``burst + rate * T`` tokens. ``rate == 0`` means unlimited (every take succeeds).
    Time is passed in; a ``now`` earlier than the last one seen counts as no time
    passing (never as a refill).
    """

    __slots__ = ("rate", "burst", "_tokens", "_last")

    def __init__(self, rate: float, burst: float) -> None:
        if rate < 0 or burst < 0 or math.isnan(rate) or math.isnan(burst):
            raise ValueError("rate and burst must be non-negative")
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = self.burst
        self._last: float | None = None

    @property
    def unlimited(self) -> bool:
        return self.rate == 0

    def _refill(self, now: float) -> None:
        if self._last is None:
            self._last = now
            return
        if now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now

    def tokens(self, now: float) -> float:
        """Tokens available at ``now`` (``inf`` when unlimited)."""
        if self.unlimited:
            return math.inf
        self._refill(now)
        return self._tokens

    def is_full(self, now: float) -> bool:
        """Whether the bucket is back at capacity (forgetting it would change nothing)."""
        return self.unlimited or self.tokens(now) >= self.burst

    def try_take(self, amount: float, now: float) -> bool:
        """Take ``amount`` tokens if available; return whether it was allowed."""
        if self.rate == 0:  # unlimited (not the property: this runs for every frame)
            return True
        self._refill(now)
        if amount <= self._tokens:
            self._tokens -= amount
            return True
        return False

    def time_until(self, amount: float, now: float) -> float:
        """Seconds from ``now`` until ``amount`` tokens are available.

        0 when available now; ``inf`` when ``amount`` exceeds the burst (never).
        """
        if self.unlimited:
            return 0.0
        if amount > self.burst:
            return math.inf
        self._refill(now)
        missing = amount - self._tokens
        if missing <= 0:
            return 0.0
        return missing / self.rate


@dataclass(frozen=True)
class RateLimiterStatistics:
    keys: int  # buckets currently remembered
    max_keys: int
    allowed: int  # takes granted since creation
    refused: int  # takes refused since creation
    evicted: int  # buckets dropped to keep the table bounded
    evicted_not_full: int  # of which were not yet refilled (their key got a fresh bucket)


class KeyedRateLimiter:
    """One :class:`TokenBucket` per key, at most ``max_keys`` of them (LRU).

    An attacker rotating keys cannot grow memory without bound: the least recently
    used bucket is dropped to make room. Dropping a full bucket is harmless (a new one
    starts full too); dropping a depleted one resets that key's quota, which needs
    ``max_keys`` distinct keys within one refill period and is counted in
    :attr:`RateLimiterStatistics.evicted_not_full`.
    """

    def __init__(self, rate: float, burst: float, max_keys: int) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        TokenBucket(rate, burst)  # validates the arguments
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()
        self._allowed = 0
        self._refused = 0
        self._evicted = 0
        self._evicted_not_full = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._buckets

    def _bucket(self, key: Hashable, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is not None:
            self._buckets.move_to_end(key)
            return bucket
        while len(self._buckets) >= self.max_keys:
            _, oldest = self._buckets.popitem(last=False)
            self._evicted += 1
            if not oldest.is_full(now):
                self._evicted_not_full += 1
        bucket = TokenBucket(self.rate, self.burst)
        self._buckets[key] = bucket
        return bucket

    def try_take(self, key: Hashable, amount: float, now: float) -> bool:
        """Take ``amount`` tokens from ``key``'s bucket; return whether allowed."""
        if self.rate == 0:
            self._allowed += 1
            return True  # unlimited: remember nothing
        ok = self._bucket(key, now).try_take(amount, now)
        if ok:
            self._allowed += 1
        else:
            self._refused += 1
        return ok

    def time_until(self, key: Hashable, amount: float, now: float) -> float:
        """Seconds until ``key`` may take ``amount`` (0 now, ``inf`` never)."""
        if self.rate == 0:
            return 0.0
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0.0 if amount <= self.burst else math.inf
        return bucket.time_until(amount, now)

    def tokens(self, key: Hashable, now: float) -> float:
        """Tokens ``key`` has at ``now`` (``inf`` when unlimited; a full bucket when unknown)."""
        if self.rate == 0:
            return math.inf
        bucket = self._buckets.get(key)
        return self.burst if bucket is None else bucket.tokens(now)

    def forget(self, key: Hashable) -> None:
        """Drop ``key``'s bucket (no-op when absent)."""
        self._buckets.pop(key, None)

    def prune(self, now: float) -> int:
        """Drop every bucket that has refilled completely; return how many were dropped."""
        full = [key for key, bucket in self._buckets.items() if bucket.is_full(now)]
        for key in full:
            del self._buckets[key]
        return len(full)

    def statistics(self) -> RateLimiterStatistics:
        return RateLimiterStatistics(
            keys=len(self._buckets),
            max_keys=self.max_keys,
            allowed=self._allowed,
            refused=self._refused,
            evicted=self._evicted,
            evicted_not_full=self._evicted_not_full,
        )


@dataclass(frozen=True)
class ConcurrencyStatistics:
    keys: int  # keys holding at least one slot
    total: int  # slots held across all keys
    max_per_key: int
    max_total: int | None
    refused: int  # acquire() calls refused since creation


class ConcurrencyCounter:
    """Counts slots held per key, refusing beyond ``max_per_key`` (and ``max_total``).

    Memory is proportional to the keys currently holding a slot: a key is forgotten
    when its count returns to zero. Counts never go negative: releasing a key that
    holds nothing is ignored (and reported by the return value), so a double release
    in an error path cannot hand out extra slots later.
    ``max_per_key == 0`` means no per-key limit.
    """

    def __init__(self, max_per_key: int, max_total: int | None = None) -> None:
        if max_per_key < 0 or (max_total is not None and max_total < 0):
            raise ValueError("limits must be non-negative")
        self.max_per_key = max_per_key
        self.max_total = max_total
        self._counts: dict[Hashable, int] = {}
        self._total = 0
        self._refused = 0

    def count(self, key: Hashable) -> int:
        return self._counts.get(key, 0)

    @property
    def total(self) -> int:
        return self._total

    def can_acquire(self, key: Hashable) -> bool:
        if self.max_total is not None and self._total >= self.max_total:
            return False
        return not (self.max_per_key and self._counts.get(key, 0) >= self.max_per_key)

    def acquire(self, key: Hashable) -> bool:
        """Take one slot for ``key``; False (nothing taken) when a limit is reached."""
        if not self.can_acquire(key):
            self._refused += 1
            return False
        self._counts[key] = self._counts.get(key, 0) + 1
        self._total += 1
        return True

    def release(self, key: Hashable) -> bool:
        """Give back one slot of ``key``; False if ``key`` held none (nothing changes)."""
        current = self._counts.get(key, 0)
        if current <= 0:
            return False
        if current == 1:
            del self._counts[key]
        else:
            self._counts[key] = current - 1
        self._total -= 1
        return True

    def statistics(self) -> ConcurrencyStatistics:
        return ConcurrencyStatistics(
            keys=len(self._counts),
            total=self._total,
            max_per_key=self.max_per_key,
            max_total=self.max_total,
            refused=self._refused,
        )
