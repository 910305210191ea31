"""Rate and concurrency limits: token bucket, keyed LRU limiter, counters, IP canonicalisation."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay._limits import ConcurrencyCounter, KeyedRateLimiter, TokenBucket, canonical_ip

# --- canonical_ip -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("1.2.3.4", "1.2.3.4"),
        ("::ffff:1.2.3.4", "1.2.3.4"),
        ("::FFFF:1.2.3.4", "1.2.3.4"),
        ("::ffff:0102:0304", "1.2.3.4"),
        ("[::ffff:1.2.3.4]", "1.2.3.4"),
        ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
        ("2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("[fe80::1%25eth0]", "fe80::1"),
        ("::1", "::1"),
        ("0:0:0:0:0:0:0:1", "::1"),
        (" 10.0.0.1 ", "10.0.0.1"),
        # NAT64 / 6to4 addresses are different hosts, not the same IPv4 quota.
        ("64:ff9b::1.2.3.4", "64:ff9b::102:304"),
    ],
)
def test_canonical_ip(raw: str, canonical: str) -> None:
    assert canonical_ip(raw) == canonical


@pytest.mark.parametrize(
    "bad", ["", "localhost", "1.2.3", "1.2.3.256", "::g", "[1.2.3.4", "1.2.3.4:80", "01.2.3.4"]
)
def test_canonical_ip_rejects_non_addresses(bad: str) -> None:
    with pytest.raises(ValueError):
        canonical_ip(bad)


@given(st.ip_addresses(v=4))
def test_mapped_and_plain_ipv4_share_a_key(address) -> None:
    assert canonical_ip(f"::ffff:{address}") == canonical_ip(str(address)) == str(address)


@given(st.ip_addresses(v=6))
def test_canonical_ipv6_is_idempotent(address) -> None:
    once = canonical_ip(address.exploded)
    assert canonical_ip(once) == once
    assert canonical_ip(f"[{once}]") == once


@given(st.text(max_size=50))
def test_canonical_ip_raises_only_value_error(text: str) -> None:
    try:
        canonical_ip(text)
    except ValueError:
        pass


# --- TokenBucket ------------------------------------------------------------------------


def test_bucket_starts_full_and_refills_at_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=4)
    assert all(bucket.try_take(1, now=10.0) for _ in range(4))
    assert not bucket.try_take(1, now=10.0)
    assert bucket.time_until(1, now=10.0) == pytest.approx(0.5)
    assert not bucket.try_take(1, now=10.4)
    assert bucket.try_take(1, now=10.5)
    # Refill caps at burst, however long the pause.
    assert bucket.tokens(now=1000.0) == 4
    assert bucket.is_full(now=1000.0)


def test_bucket_amount_larger_than_burst_never_allowed() -> None:
    bucket = TokenBucket(rate=100.0, burst=10)
    assert bucket.time_until(11, now=0.0) == math.inf
    assert not bucket.try_take(11, now=1e6)
    assert bucket.try_take(10, now=1e6)


def test_bucket_rate_zero_is_unlimited() -> None:
    bucket = TokenBucket(rate=0, burst=0)
    assert all(bucket.try_take(1e9, now=0.0) for _ in range(100))
    assert bucket.time_until(1e12, now=0.0) == 0.0


def test_bucket_clock_going_backwards_does_not_refill() -> None:
    bucket = TokenBucket(rate=1.0, burst=2)
    assert bucket.try_take(2, now=100.0)
    assert not bucket.try_take(1, now=50.0)  # earlier time: no tokens appear
    assert not bucket.try_take(1, now=100.5)
    assert bucket.try_take(1, now=101.0)


def test_bucket_rejects_negative_parameters() -> None:
    with pytest.raises(ValueError):
        TokenBucket(-1, 1)
    with pytest.raises(ValueError):
        TokenBucket(1, -1)


@given(
    rate=st.floats(0.01, 1000),
    burst=st.integers(1, 1000),
    steps=st.lists(
        st.tuples(st.floats(0, 5), st.floats(0.01, 50)),  # (time advance, amount asked)
        max_size=200,
    ),
)
def test_bucket_never_grants_more_than_burst_plus_rate_times_elapsed(rate, burst, steps) -> None:
    bucket = TokenBucket(rate, burst)
    start = now = 1000.0
    granted = 0.0
    for advance, amount in steps:
        now += advance
        wait = bucket.time_until(amount, now)
        if bucket.try_take(amount, now):
            granted += amount
            assert wait == 0.0
        else:
            assert wait > 0.0
        assert granted <= burst + rate * (now - start) + 1e-6 * (1 + granted)


@given(rate=st.floats(0.1, 100), burst=st.integers(1, 100), amount=st.floats(0.01, 1))
def test_bucket_time_until_is_accurate(rate, burst, amount) -> None:
    bucket = TokenBucket(rate, burst)
    assert bucket.try_take(burst, now=0.0)  # drain
    wait = bucket.time_until(amount, now=0.0)
    assert wait == pytest.approx(amount / rate)
    assert bucket.try_take(amount, now=wait * (1 + 1e-9) + 1e-12)


# --- KeyedRateLimiter -------------------------------------------------------------------


def test_keyed_limiter_is_per_key() -> None:
    limiter = KeyedRateLimiter(rate=1.0, burst=2, max_keys=10)
    assert limiter.try_take("a", 1, 0.0) and limiter.try_take("a", 1, 0.0)
    assert not limiter.try_take("a", 1, 0.0)
    assert limiter.try_take("b", 2, 0.0)  # another key is unaffected
    assert limiter.time_until("a", 1, 0.0) == pytest.approx(1.0)
    assert limiter.time_until("never-seen", 1, 0.0) == 0.0
    stats = limiter.statistics()
    assert (stats.keys, stats.allowed, stats.refused) == (2, 3, 1)


def test_keyed_limiter_lru_bound_and_eviction_order() -> None:
    limiter = KeyedRateLimiter(rate=1.0, burst=1, max_keys=3)
    for key in "abc":
        assert limiter.try_take(key, 1, 0.0)
    assert not limiter.try_take("a", 1, 0.0)  # touches "a": now most recently used
    assert limiter.try_take("d", 1, 0.0)  # evicts "b", the least recently used
    assert len(limiter) == 3
    assert "b" not in limiter and "a" in limiter and "c" in limiter
    # "a" kept its depleted bucket: eviction hit the idle key, not the busy one.
    assert not limiter.try_take("a", 1, 0.0)
    stats = limiter.statistics()
    assert stats.evicted == 1 and stats.evicted_not_full == 1


def test_keyed_limiter_prune_drops_only_refilled_buckets() -> None:
    limiter = KeyedRateLimiter(rate=1.0, burst=2, max_keys=10)
    limiter.try_take("old", 2, 0.0)
    limiter.try_take("new", 2, 1.5)
    assert limiter.prune(now=2.5) == 1  # "old" refilled at t=2, "new" not until t=3.5
    assert "old" not in limiter and "new" in limiter


def test_keyed_limiter_rate_zero_remembers_nothing() -> None:
    limiter = KeyedRateLimiter(rate=0, burst=0, max_keys=1)
    assert all(limiter.try_take(i, 1e9, 0.0) for i in range(1000))
    assert len(limiter) == 0


@given(
    max_keys=st.integers(1, 50),
    ops=st.lists(st.tuples(st.integers(0, 500), st.floats(0, 2)), max_size=300),
)
def test_keyed_limiter_never_exceeds_max_keys(max_keys, ops) -> None:
    limiter = KeyedRateLimiter(rate=1.0, burst=1, max_keys=max_keys)
    now = 0.0
    for key, advance in ops:
        now += advance
        limiter.try_take(key, 1, now)
        assert len(limiter) <= max_keys
    stats = limiter.statistics()
    assert stats.keys == len(limiter) <= max_keys
    assert stats.allowed + stats.refused == len(ops)


# --- ConcurrencyCounter -----------------------------------------------------------------


def test_concurrency_counter_per_key_and_total_limits() -> None:
    counter = ConcurrencyCounter(max_per_key=2, max_total=3)
    assert counter.acquire("ip1") and counter.acquire("ip1")
    assert not counter.acquire("ip1")  # per-key limit
    assert counter.acquire("ip2")
    assert not counter.acquire("ip3")  # total limit
    assert counter.count("ip1") == 2 and counter.total == 3
    assert counter.release("ip1")
    assert counter.acquire("ip3")
    stats = counter.statistics()
    assert (stats.keys, stats.total, stats.refused) == (3, 3, 2)


def test_concurrency_counter_never_negative_and_forgets_idle_keys() -> None:
    counter = ConcurrencyCounter(max_per_key=1)
    assert not counter.release("ghost")  # nothing held: ignored
    assert counter.total == 0 and counter.count("ghost") == 0
    assert counter.acquire("a")
    assert counter.release("a")
    assert not counter.release("a")  # double release: no effect, no extra slot
    assert counter.acquire("a")
    assert not counter.acquire("a")
    assert counter.release("a")
    assert counter.statistics().keys == 0


def test_concurrency_counter_zero_means_no_per_key_limit() -> None:
    counter = ConcurrencyCounter(max_per_key=0)
    assert all(counter.acquire("a") for _ in range(100))


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5)), max_size=200))
def test_concurrency_counter_matches_model(ops) -> None:
    counter = ConcurrencyCounter(max_per_key=3, max_total=8)
    model: dict[int, int] = {}
    for is_acquire, key in ops:
        if is_acquire:
            allowed = model.get(key, 0) < 3 and sum(model.values()) < 8
            assert counter.acquire(key) == allowed
            if allowed:
                model[key] = model.get(key, 0) + 1
        else:
            held = model.get(key, 0) > 0
            assert counter.release(key) == held
            if held:
                model[key] -= 1
        assert counter.count(key) == model.get(key, 0) >= 0
        assert counter.total == sum(model.values())
