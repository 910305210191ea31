"""RetrySchedule: busy refusals are queued in time at the measured registration rate."""

from __future__ import annotations

from relay._retry_schedule import OPTIMISM, RetrySchedule


def test_each_refused_peer_gets_a_later_slot_at_the_registration_rate():
    schedule = RetrySchedule(initial_rate=100.0)
    # At 100 registrations/s (taken x OPTIMISM), the k-th refused peer gets the k-th
    # slot to free up: 1,000 refusals spread over 1,000 / 125 = 8 s, one second's worth
    # per Retry-After value.
    waits = [schedule.refused(512, now=10.0) for _ in range(1000)]
    assert waits == sorted(waits)
    assert waits[0] == 1 and waits[-1] == int(999 / (100 * OPTIMISM))  # floor
    assert max(waits.count(w) for w in set(waits) - {1}) <= 100 * OPTIMISM + 1
    # Time passing uses up the queue: one second on, everyone is a second closer.
    schedule.exits += 100  # the measured rate stays 100/s
    assert schedule.refused(512, now=11.0) == 7  # its slot: 10 + 1,001 / 125 s


def test_the_rate_is_measured_from_connections_leaving_the_pending_table():
    schedule = RetrySchedule(initial_rate=100.0)
    schedule.refused(1, now=0.0)
    schedule.exits += 1000  # 1,000 registered in the next 2 s: 500/s
    schedule.refused(1, now=2.0)
    assert schedule.rate == 300.0  # smoothed halfway
    # A mark left from a quiet period measures nothing.
    schedule.refused(1, now=100.0)
    assert schedule.rate == 300.0


def test_waits_are_bounded_and_a_stale_queue_is_forgotten():
    schedule = RetrySchedule(initial_rate=20.0, min_rate=20.0, max_wait=60)
    waits = [schedule.refused(512, now=0.0) for _ in range(5000)]
    assert min(waits) >= 1 and max(waits) == 60
    assert schedule.refused(512, now=1000.0) == 1  # slots in the past: back at once
    schedule.refused(512, now=1001.0)
    assert schedule.rate == 20.0  # never below min_rate
    assert schedule.refused(0, now=1001.0) == 1
