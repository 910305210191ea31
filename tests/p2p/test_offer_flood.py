"""Issue #10 defect 3: an Offer flood must not hold a peer's direct path.

Throwaway identities each send the victim one Offer whose only candidate is a UDP
socket that never answers, and no end-of-candidates, so ICE alone would wait forever.
The victim answers at most ``max_half_open`` of them at once (the oldest is evicted),
ends each after ``answer_timeout``, and an honest peer still connects directly.
"""

import logging
import os
from contextlib import AsyncExitStack

import pytest
import trio

from darkswap_trio import ConfigError, Keypair, P2PConfig, open_relay_session
from darkswap_trio._p2p._direct import WebRtcSignalingClient, WebRtcTransport
from darkswap_trio.testing import running_relay
from darkswap_trio.webrtc import PeerConnectionConfig, open_peer_connection

LOOPBACK = PeerConnectionConfig(host_addresses=["127.0.0.1"], include_loopback=True)
# Every throwaway identity comes from 127.0.0.1 here; the per-address relay limits
# (which would stop this flood at the relay) are lifted to reach the SDK's bounds.
OPEN_LIMITS = dict(
    max_sessions_per_ip=0,
    max_pending_per_ip=0,
    connections_per_ip_rate=1000.0,
    connections_per_ip_burst=1000,
)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def flood_offer_sdp(blackhole_port: int) -> str:
    """A real offer, its candidates replaced by one that never answers, no end-of-candidates."""
    async with open_peer_connection(LOOPBACK) as pc:
        sdp = await pc.create_offer()
    lines = [
        line
        for line in sdp.split("\r\n")
        if line and not line.startswith(("a=candidate", "a=end-of-candidates"))
    ]
    lines.append(f"a=candidate:1 1 udp 2130706431 127.0.0.1 {blackhole_port} typ host")
    return "\r\n".join(lines) + "\r\n"


async def wait_until(condition) -> None:
    while not condition():  # bounded by the caller's fail_after
        await trio.sleep(0.01)


async def test_an_offer_flood_is_bounded_and_an_honest_peer_still_goes_direct(caplog):
    caplog.set_level(logging.WARNING, logger="darkswap_trio.webrtc")
    flood, half_open, answer_timeout = 30, 16, 3.0
    with trio.fail_after(60):
        async with running_relay(**OPEN_LIMITS) as relay, AsyncExitStack() as stack:
            victim_session = await stack.enter_async_context(
                open_relay_session(relay.multiaddr, Keypair.generate())
            )
            victim = await stack.enter_async_context(
                WebRtcTransport(
                    victim_session, LOOPBACK, max_half_open=half_open, answer_timeout=answer_timeout
                )
            )
            blackhole = stack.enter_context(trio.socket.socket(type=trio.socket.SOCK_DGRAM))
            await blackhole.bind(("127.0.0.1", 0))
            sdp = await flood_offer_sdp(blackhole.getsockname()[1])
            flooders = [
                WebRtcSignalingClient(
                    await stack.enter_async_context(
                        open_relay_session(relay.multiaddr, Keypair.generate())
                    )
                )
                for _ in range(flood)
            ]
            fds_before = open_fds()

            for flooder in flooders:
                await flooder.send_offer(victim.local_peer_id, sdp)
            await wait_until(lambda: victim.statistics().offers_evicted == flood - half_open)
            assert victim.statistics().half_open_answers == half_open
            # Evicted answers close their sockets: one UDP socket per half-open answer.
            await wait_until(lambda: open_fds() - fds_before <= half_open)
            # An evicted identity that offers again at once is refused, not answered.
            await flooders[0].send_offer(victim.local_peer_id, sdp)
            await wait_until(lambda: victim.statistics().offers_refused == 1)
            assert victim.statistics().offers_evicted == flood - half_open

            # While the flood holds the table, an honest peer connects directly.
            honest_session = await stack.enter_async_context(
                open_relay_session(relay.multiaddr, Keypair.generate())
            )
            honest = await stack.enter_async_context(WebRtcTransport(honest_session, LOOPBACK))
            started = trio.current_time()
            to_victim = await honest.connect(victim.local_peer_id, timeout=10)
            from_honest = await victim.accept()
            time_to_direct = trio.current_time() - started
            assert time_to_direct < answer_timeout  # it did not wait for the flood to expire
            await to_victim.channel.send(b"direct despite the flood")
            assert await from_honest.channel.receive() == b"direct despite the flood"
            stats = victim.statistics()
            assert stats.connections == 1 and stats.offers_evicted == flood - half_open + 1

            # After the answer deadline no flood attempt is left, and neither are their sockets.
            await wait_until(lambda: victim.statistics().half_open_answers == 0)
            stats = victim.statistics()
            assert stats.answers_timed_out == half_open - 1 and stats.connections == 1
            await to_victim.aclose()
            await from_honest.aclose()
            await wait_until(lambda: victim.statistics().connections == 0)
            await honest.wait_idle()
            await victim.wait_idle()
            assert open_fds() - fds_before <= 4  # the honest session's sockets at most
    # 15 evictions, one warning (with totals), not one per offer.
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "evicting the oldest" in warnings[0].getMessage()


async def test_an_unanswered_answer_ends_at_the_deadline(autojump_clock):
    """The deadline alone (no eviction): an answer that never connects ends after 10 s."""
    async with (
        running_relay() as relay,
        open_relay_session(relay.multiaddr, Keypair.generate()) as victim_session,
        open_relay_session(relay.multiaddr, Keypair.generate()) as flooder_session,
        WebRtcTransport(victim_session, LOOPBACK) as victim,
    ):
        assert victim.answer_timeout == 10.0
        flooder = WebRtcSignalingClient(flooder_session)
        with trio.socket.socket(type=trio.socket.SOCK_DGRAM) as blackhole:
            await blackhole.bind(("127.0.0.1", 0))
            sdp = await flood_offer_sdp(blackhole.getsockname()[1])
            await flooder.send_offer(victim.local_peer_id, sdp)
            with trio.fail_after(60):
                await wait_until(lambda: victim.statistics().half_open_answers == 1)
                seen = trio.current_time()
                await wait_until(lambda: victim.statistics().half_open_answers == 0)
                ended = trio.current_time()
                assert 9.9 <= ended - seen <= 10.05
                stats = victim.statistics()
                assert (stats.answers_timed_out, stats.offers_evicted, stats.connections) == (
                    1,
                    0,
                    0,
                )
                await victim.wait_idle()
                # The same identity is not answered again for answer_timeout, then it is.
                await flooder.send_offer(victim.local_peer_id, sdp)
                await wait_until(lambda: victim.statistics().offers_refused == 1)
                assert victim.statistics().half_open_answers == 0
                await trio.sleep_until(ended + 10.0)
                await flooder.send_offer(victim.local_peer_id, sdp)
                await wait_until(lambda: victim.statistics().half_open_answers == 1)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(max_half_open=0),
        dict(answer_timeout=0),
        dict(answer_timeout=float("inf")),
        dict(max_connections=0),
    ],
)
async def test_bounds_are_validated(kwargs):
    async with (
        running_relay() as relay,
        open_relay_session(relay.multiaddr, Keypair.generate()) as session,
    ):
        with pytest.raises(ValueError):
            WebRtcTransport(session, **kwargs)
    with pytest.raises(ConfigError):
        P2PConfig(direct_max_half_open=0).validate()
    with pytest.raises(ConfigError):
        P2PConfig(direct_answer_timeout=0).validate()
