"""RetrySchedule: busy refusals are queued in time at the measured registration rate."""

from __future__ import annotations

from relay._retry_schedule import RetrySchedule


def test_each_refused_peer_gets_a_later_slot_at_the_registration_rate():
    schedule = RetrySchedule(initial_rate=100.0)
    # 500 pending at 100/s: the first refused peer comes back after the backlog (5 s),
    # and 100 more refusals spread over the following second.
    waits = [schedule.refused(500, now=10.0) for _ in range(300)]
    assert waits[0] == 5
    assert waits == sorted(waits)
    assert waits[-1] == 8  # 5 s + 300 / 100 per s
    assert max(waits.count(w) for w in set(waits)) <= 101


def test_the_rate_is_measured_from_connections_leaving_the_pending_table():
    schedule = RetrySchedule(initial_rate=100.0)
    schedule.refused(0, now=0.0)
    schedule.exits += 1000  # 1,000 registered in the next 2 s: 500/s
    schedule.refused(0, now=2.0)
    assert schedule.rate == 300.0  # smoothed halfway
    # A mark left from a quiet period measures nothing.
    schedule.refused(0, now=100.0)
    assert schedule.rate == 300.0


def test_waits_are_bounded_and_a_stale_queue_is_forgotten():
    schedule = RetrySchedule(initial_rate=20.0, min_rate=20.0, max_wait=60)
    waits = [schedule.refused(512, now=0.0) for _ in range(5000)]
    assert min(waits) >= 1 and max(waits) == 60
    assert schedule.refused(0, now=1000.0) == 1  # slots in the past: back at once
    schedule.exits += 0
    schedule.refused(0, now=1001.0)
    assert schedule.rate == 20.0  # never below min_rate
