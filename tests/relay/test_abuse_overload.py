"""Issue #10 item 7: the relay-wide budgets under overload (relay._abuse, "Overload").

When the relay is over its relay-wide message budget, every session keeps its fair share;
a pure text flood beyond it is paused (not read, so it costs no CPU) rather than parsed
and dropped, and nobody is closed or penalized for the relay being busy. The full-scale
run, with the budget driven by the event loop's lag, is benchmarks/bench_abuse.py.
"""

from __future__ import annotations

import trio
from relayclient import connect, make_config, new_peer
from test_abuse import limit_hits
from test_abuse_flood import PING, discard, registered_raw

from darkswap_trio.proto.signaling import Offer
from relay import LimitsConfig, serve_relay
from relay._abuse import MAX_BACKOFF, OVERLOAD_PAUSE, PAUSE_AFTER, AbuseGuard

FLOODERS = 4
BURST = 256  # Pings per write


async def flood_without_reconnecting(source_ip: str, port: int, counts: dict) -> None:
    """Register once, then write Pings without pause (blocking when the relay stops reading)."""
    client = await registered_raw(source_ip, port)
    async with client.stream, trio.open_nursery() as drain:
        drain.start_soon(discard, client.stream, drain.cancel_scope)
        try:
            while True:
                await client.stream.send_all(PING * BURST)
                counts["written"] += BURST
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            counts["closed"] += 1  # the relay closed the session: must not happen here


async def test_overloaded_relay_pauses_text_floods_and_keeps_honest_delivery(nursery):
    """Four flooders against a relay-wide budget of 100 messages/s (the lag-driven
    scaling off, so the budget is fixed): the honest pair's every Offer arrives in
    order, within its fair share; the flooders are paused, not closed, not penalized,
    and their frames mostly stay unread in TCP buffers."""
    with trio.fail_after(30):
        config = make_config(messages_total_rate=100, messages_total_burst=100, overload_lag=0)
        server = await nursery.start(serve_relay, config)
        port, guard = server.signaling_port, server.router.abuse
        counts = {"written": 0, "closed": 0}
        async with trio.open_nursery() as attack:
            for i in range(FLOODERS):
                attack.start_soon(flood_without_reconnecting, f"127.0.0.{30 + i}", port, counts)
            while limit_hits(server, "messages_total") < FLOODERS * PAUSE_AFTER:
                await trio.sleep(0.01)  # every flooder is over its share: the relay is busy
            async with connect(server) as a, connect(server) as b:
                a_id, b_id = str(new_peer().peer_id), str(new_peer().peer_id)
                await a.register_legacy(a_id)
                await b.register_legacy(b_id)
                shed_before = guard.frames_shed
                # 6 sessions share 100/s: ~16/s each; the pair sends 10 Offers a second.
                for i in range(20):
                    await a.send(Offer(from_=a_id, to=b_id, sdp=f"offer {i}"))
                    offer = await b.expect(Offer)
                    assert offer.sdp == f"offer {i}"
                    await trio.sleep(0.1)
                shed_during = guard.frames_shed - shed_before
            pings_answered = server.metrics.value(
                "darkswap_relay_frames_received_total", {"kind": "Ping"}
            )
            attack.cancel_scope.cancel()
        assert counts["closed"] == 0  # busy is not abuse: no flooder was closed ...
        assert limit_hits(server, "abuse_penalty") == 0 and guard.penalized_count == 0
        assert limit_hits(server, "messages_per_peer") == 0  # ... nor struck
        # The flooders were paused: in the honest pair's 2 s each was read for its
        # share (~16/s) plus a streak of PAUSE_AFTER per 1 s pause (unpaused, thousands
        # would have been parsed and dropped), and most of what they wrote was never read.
        assert shed_during <= FLOODERS * 4 * PAUSE_AFTER, shed_during
        assert pings_answered is not None and pings_answered < counts["written"] / 4
        await server.shutdown(1)


def test_fair_share_under_the_relay_wide_budget():
    limits = LimitsConfig(messages_total_rate=100, messages_total_burst=10)
    guard = AbuseGuard(limits)
    guard.active_sessions = lambda: 10  # a fair share of 10 messages/s
    heavy, light = guard.new_share(), guard.new_share()
    verdicts = [guard.message_allowed("198.51.100.1", 0.0, heavy) for _ in range(30)]
    # 10 relay-wide tokens, then its own share of 10, then nothing ...
    assert verdicts == [None] * 20 + ["messages_total"] * 10
    # ... while another session (even from the same address) still has its share.
    assert guard.message_allowed("198.51.100.1", 0.0, light) is None
    # A pure flood streak pauses its session, longer each time while the overload lasts.
    guard.load = 0.5
    pauses = []
    for _ in range(MAX_BACKOFF + 2):
        for _ in range(PAUSE_AFTER - 1):
            assert guard.overload_pause(heavy) == 0.0
        pauses.append(guard.overload_pause(heavy))
    assert pauses == [OVERLOAD_PAUSE * 2**i for i in range(MAX_BACKOFF + 1)] + [
        OVERLOAD_PAUSE * 2**MAX_BACKOFF
    ]
    # Once the relay is within its budget again, the backoff starts over.
    guard.load = 1.0
    assert guard.message_allowed("198.51.100.2", 10.0, heavy) is None
    assert heavy.pauses == 0


def test_relay_wide_budgets_follow_the_event_loop_lag():
    limits = LimitsConfig(
        messages_total_rate=1000, messages_total_burst=1000,
        handshakes_total_rate=100, handshakes_total_burst=200, overload_lag=0.05,
    )  # fmt: skip
    guard = AbuseGuard(limits)
    guard.observe_lag(0.01)
    assert guard.load == 1.0 and guard.total.rate == 1000
    for _ in range(4):
        guard.observe_lag(0.2)  # the loop runs late: multiplicative decrease
    assert guard.load == 0.75**4
    assert guard.total.rate == 1000 * 0.75**4 and guard.handshakes_total.rate == 100 * 0.75**4
    for _ in range(1000):
        guard.observe_lag(0.2)
    assert guard.total.rate == 10  # never below 1% of the configured rate
    for _ in range(100):
        guard.observe_lag(0.0)  # additive increase, back to the configured budgets
    assert guard.load == 1.0 and guard.total.rate == 1000 and guard.total.burst == 1000
    # Disabled (0) budgets stay disabled, and overload_lag = 0 keeps the budgets fixed.
    fixed = AbuseGuard(LimitsConfig(messages_total_rate=0, overload_lag=0))
    fixed.observe_lag(10.0)
    assert fixed.load == 1.0 and fixed.total.rate == 0
