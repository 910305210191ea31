"""Issue #10 defect 3: an Offer flood against a peer's direct path, at the issue's scale.

``--flood`` throwaway identities register on an in-process relay (its per-address
limits lifted: here they all come from 127.0.0.1) and each send the victim one Offer
whose only candidate is a UDP socket that never answers, without end-of-candidates.
Reported: the process's open descriptors over the baseline (taken once every session
is registered; flooders hold no UDP socket, so the growth is the victim's answering
sockets, plus the honest peer's one while it connects), one second after the flood, after ``--hold`` seconds, and the time an honest
peer takes to go direct to the victim during the flood (and without one, same run).

    PYTHONPATH=$PWD python benchmarks/offer_flood_direct.py --rates 50 200 1000  # after
    git archive main | tar -x -C /tmp/before && \\
        PYTHONPATH=/tmp/before python benchmarks/offer_flood_direct.py  # before (main)

Works against both: the bounds are used when ``WebRtcTransport`` has them.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys
from contextlib import AsyncExitStack

import trio

from darkswap_trio import Keypair, open_relay_session
from darkswap_trio._p2p._direct import WebRtcSignalingClient, WebRtcTransport
from darkswap_trio.testing import running_relay

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests" / "p2p"))
from test_offer_flood import LOOPBACK, flood_offer_sdp, open_fds  # noqa: E402

# The bench's relay lifts more per-address limits than the test's (it floods harder).
OPEN_LIMITS = dict(
    max_sessions_per_ip=0,
    max_pending_per_ip=0,
    connections_per_ip_rate=1e4,
    connections_per_ip_burst=10_000,
    messages_per_peer_burst=10_000,
)


async def honest_peer(stack: AsyncExitStack, relay) -> WebRtcTransport:
    session = await stack.enter_async_context(
        open_relay_session(relay.multiaddr, Keypair.generate())
    )
    return await stack.enter_async_context(WebRtcTransport(session, LOOPBACK))


async def time_to_direct(honest: WebRtcTransport, victim: WebRtcTransport, timeout: float) -> str:
    started = trio.current_time()
    try:
        connection = await honest.connect(victim.local_peer_id, timeout=timeout)
    except trio.BrokenResourceError as exc:
        return f"no direct path ({exc}) after {trio.current_time() - started:.1f} s"
    elapsed = trio.current_time() - started
    await connection.channel.send(b"hello")
    accepted = await victim.accept()
    assert await accepted.channel.receive() == b"hello"
    await connection.aclose()
    await accepted.aclose()
    return f"{elapsed * 1000:.0f} ms"


def bounds(victim: WebRtcTransport) -> str:
    if not hasattr(victim, "statistics"):
        return "n/a (no bounds)"
    s = victim.statistics()
    return (
        f"half-open {s.half_open_answers}, evicted {s.offers_evicted}, refused "
        f"{s.offers_refused}, timed out {s.answers_timed_out}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--flood", type=int, default=110)
    parser.add_argument("--max-connections", type=int, default=100)  # P2PConfig default
    parser.add_argument("--hold", type=float, default=15.0, help="seconds before the last look")
    parser.add_argument("--timeout", type=float, default=20.0, help="honest peer's connect timeout")
    parser.add_argument(
        "--answer-timeout",
        type=float,
        default=None,
        help="the victim's answer_timeout (default: the transport's)",
    )
    parser.add_argument(
        "--rates",
        type=float,
        nargs="*",
        default=[],
        help="then flood without end at these offers/s while honest peers connect",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="  log: %(levelname)s %(name)s %(message)s")
    answer_timeout = {} if args.answer_timeout is None else {"answer_timeout": args.answer_timeout}
    with trio.fail_after(args.hold + 2 * args.timeout + 120):
        async with running_relay(**OPEN_LIMITS) as relay, AsyncExitStack() as stack:
            victim_session = await stack.enter_async_context(
                open_relay_session(relay.multiaddr, Keypair.generate())
            )
            victim = await stack.enter_async_context(
                WebRtcTransport(
                    victim_session, LOOPBACK, max_connections=args.max_connections, **answer_timeout
                )
            )
            blackhole = stack.enter_context(trio.socket.socket(type=trio.socket.SOCK_DGRAM))
            await blackhole.bind(("127.0.0.1", 0))
            sdp = await flood_offer_sdp(blackhole.getsockname()[1])
            baseline_direct = await time_to_direct(
                await honest_peer(stack, relay), victim, args.timeout
            )
            honest = await honest_peer(stack, relay)  # a newcomer: no attempt with the victim yet
            flooders = [
                WebRtcSignalingClient(
                    await stack.enter_async_context(
                        open_relay_session(relay.multiaddr, Keypair.generate())
                    )
                )
                for _ in range(args.flood)
            ]
            await trio.sleep(0.5)
            base = open_fds()
            started = trio.current_time()
            for flooder in flooders:
                await flooder.send_offer(victim.local_peer_id, sdp)
            await trio.sleep(1.0)
            after_flood = open_fds() - base
            bounds_after_flood = bounds(victim)
            during = await time_to_direct(honest, victim, args.timeout)
            await trio.sleep(max(0.0, started + args.hold - trio.current_time()))
            print(f"\n{args.flood} flood offers, victim max_connections={args.max_connections}\n")
            print("| measure | value |\n| --- | --- |")
            print(f"| honest peer time to direct, no flood | {baseline_direct} |")
            print(
                f"| fds over baseline 1 s after the flood | {after_flood} ({bounds_after_flood}) |"
            )
            print(f"| honest peer time to direct, during the flood | {during} |")
            print(
                f"| fds over baseline {trio.current_time() - started:.0f} s after the flood "
                f"| {open_fds() - base} ({bounds(victim)}) |"
            )
            for rate in args.rates:
                honest = await honest_peer(stack, relay)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(keep_flooding, flooders, victim, sdp, rate)
                    await trio.sleep(1.0)  # the flood is under way before the honest Offer
                    result = await time_to_direct(honest, victim, args.timeout)
                    nursery.cancel_scope.cancel()
                print(
                    f"| honest peer time to direct, flood going on at {rate:.0f} offers/s "
                    f"| {result} ({bounds(victim)}) |"
                )


async def keep_flooding(
    flooders: list[WebRtcSignalingClient], victim: WebRtcTransport, sdp: str, rate: float
) -> None:
    """Round robin over the identities (one whose answer was evicted may offer again)."""
    interval, next_at = 1.0 / rate, trio.current_time()
    while True:  # until cancelled
        for flooder in flooders:
            next_at += interval
            await flooder.send_offer(victim.local_peer_id, sdp)
            await trio.sleep_until(next_at)


if __name__ == "__main__":
    trio.run(main)
