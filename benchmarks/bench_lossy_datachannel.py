"""A data channel through loss, duplication and reordering: ours vs aiortc, same run.

    python benchmarks/bench_lossy_datachannel.py [--runs 3] [--megabytes 4]
        [--loss 0.10] [--duplicate 0.05] [--reorder 0.30] [--seconds 120] [--seed 1]

Both stacks' peers talk through the same impairing UDP proxy on 127.0.0.1
(benchmarks/_impaired_proxy.py: each side is told its peer's candidate is a proxy
port). The handshakes run clean; the impairment starts once the channel is open, with
the same seed for both stacks in each run. One reliable ordered channel carries
--megabytes in 16 KiB messages (senders keep at most 1 MiB buffered); timed from the
first send to the last byte received, capped at --seconds. Medians of --runs, runs
alternating between the stacks. aiortc peers get RTCConfiguration(iceServers=[]) and
aioice's interface enumeration is pointed at 127.0.0.1. Our sender's SCTP statistics
(median over the impaired runs) follow the table.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import statistics
import sys

import trio
from _impaired_proxy import (  # this directory is sys.path[0]
    LOOPBACK,
    ImpairedProxy,
    Impairment,
    candidate_port,
)
from _impaired_proxy import rewrite_candidates as rewrite
from _transfer import aiortc_transfer, our_transfer  # this directory is sys.path[0]

from darkswap_trio.proto.dtls._certificate import DtlsCertificate
from darkswap_trio.webrtc import PeerConnectionConfig, open_peer_connection

MESSAGE = 16384
HIGH_WATER = 1 << 20


async def ours(total: int, seconds: float, proxy: ImpairedProxy, ports, certificates):
    configs = [
        PeerConnectionConfig(
            host_addresses=[LOOPBACK],
            ice_pacing=0.005,
            certificate=c,
            high_water_mark=HIGH_WATER,
        )
        for c in certificates
    ]
    async with open_peer_connection(configs[0]) as a, open_peer_connection(configs[1]) as b:
        offer = await a.create_offer()
        proxy.peer_a = (LOOPBACK, candidate_port(offer))
        await b.set_remote_description(rewrite(offer, ports[0]), "offer")
        answer = await b.create_answer()
        proxy.peer_b = (LOOPBACK, candidate_port(answer))
        await a.set_remote_description(rewrite(answer, ports[1]), "answer")
        channel = await a.create_data_channel("bench")
        accepted = await b.accept_data_channel()
        proxy.impairment.enabled = True
        received, elapsed = await our_transfer(channel, accepted, total, seconds, MESSAGE)
        return received, elapsed, a.statistics().sctp


async def theirs(total: int, seconds: float, proxy: ImpairedProxy, ports):
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    a = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # never Google's STUN server
    b = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        loop = asyncio.get_running_loop()
        opened, accepted = loop.create_future(), loop.create_future()
        channel = a.createDataChannel("bench")
        channel.on("open", lambda: opened.done() or opened.set_result(None))
        b.on("datachannel", lambda ch: accepted.done() or accepted.set_result(ch))
        await a.setLocalDescription(await a.createOffer())
        offer = a.localDescription.sdp
        proxy.peer_a = (LOOPBACK, candidate_port(offer))
        await b.setRemoteDescription(RTCSessionDescription(rewrite(offer, ports[0]), "offer"))
        await b.setLocalDescription(await b.createAnswer())
        answer = b.localDescription.sdp
        proxy.peer_b = (LOOPBACK, candidate_port(answer))
        await a.setRemoteDescription(RTCSessionDescription(rewrite(answer, ports[1]), "answer"))
        await opened
        remote = await accepted
        proxy.impairment.enabled = True
        received, elapsed = await aiortc_transfer(
            channel, remote, total, seconds, MESSAGE, HIGH_WATER
        )
        return received, elapsed, None
    finally:
        await a.close()
        await b.close()


def run_one(stack: str, impairment: Impairment, total: int, seconds: float, certificates):
    proxy = ImpairedProxy(impairment)
    ports = proxy.start()
    try:
        if stack == "ours":

            async def bounded_trio():
                with trio.fail_after(seconds + 30):
                    return await ours(total, seconds, proxy, ports, certificates)

            return trio.run(bounded_trio)

        async def bounded_asyncio():
            async with asyncio.timeout(seconds + 30):
                return await theirs(total, seconds, proxy, ports)

        return asyncio.run(bounded_asyncio())
    finally:
        proxy.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--megabytes", type=float, default=4.0)
    parser.add_argument("--seconds", type=float, default=120.0, help="cap per transfer")
    parser.add_argument("--loss", type=float, default=0.10)
    parser.add_argument("--duplicate", type=float, default=0.05)
    parser.add_argument("--reorder", type=float, default=0.30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-clean", action="store_true", help="skip the clean runs")
    args = parser.parse_args()
    total = int(args.megabytes * (1 << 20)) // MESSAGE * MESSAGE

    import aioice.ice

    # aioice skips 127.0.0.1 and would check every interface: loopback only, like ours.
    aioice.ice.get_host_addresses = lambda **_: [LOOPBACK]
    now = datetime.datetime.now(datetime.UTC)
    certificates = (DtlsCertificate.generate(now), DtlsCertificate.generate(now))
    conditions = [] if args.no_clean else [("clean", 0.0, 0.0, 0.0)]
    conditions.append(
        (
            f"{args.loss:.0%} loss, {args.duplicate:.0%} dup, {args.reorder:.0%} reorder",
            args.loss,
            args.duplicate,
            args.reorder,
        )
    )
    results = {}
    for label, loss, dup, reorder in conditions:
        for stack in ("ours", "aiortc"):
            results[label, stack] = []
        for run in range(args.runs):
            for stack in ("ours", "aiortc"):  # alternating: drifting load hits both alike
                impairment = Impairment(loss, dup, reorder, seed=args.seed + run)
                outcome = run_one(stack, impairment, total, args.seconds, certificates)
                results[label, stack].append((*outcome, impairment.counts))

    print(
        f"Data channel through an impairing UDP proxy on 127.0.0.1, {total / (1 << 20):.1f} MiB"
        f" in {MESSAGE // 1024} KiB messages, median of {args.runs} runs, cap "
        f"{args.seconds:.0f} s, seeds {args.seed}..{args.seed + args.runs - 1}, "
        f"Python {sys.version.split()[0]}"
    )
    print()
    print("| Link | ours | aiortc | ours / aiortc (throughput) | complete (ours, aiortc) |")
    print("|---|---|---|---|---|")
    for label, *_ in conditions:
        cells, rates = [], []
        for stack in ("ours", "aiortc"):
            runs = results[label, stack]
            rate = statistics.median(r[0] / r[1] for r in runs)
            elapsed = statistics.median(r[1] for r in runs)
            spread = sorted(r[1] for r in runs)
            cells.append(
                f"{rate / 1e6:.2f} MB/s, {elapsed:.2f} s [{spread[0]:.2f}-{spread[-1]:.2f}]"
            )
            rates.append(rate)
        complete = [
            f"{sum(r[0] >= total for r in results[label, s])}/{args.runs}"
            for s in ("ours", "aiortc")
        ]
        print(
            f"| {label} | {cells[0]} | {cells[1]} | {rates[0] / rates[1]:.2f}x "
            f"| {', '.join(complete)} |"
        )
    print()
    print("Our sender's SCTP statistics (median per run):")
    print()
    print(
        "| Link | retransmissions | fast retransmits | T3 timeouts | final cwnd | final rto "
        "| srtt | proxy: lost / duplicated / held |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for label, *_ in conditions:
        runs = results[label, "ours"]
        stats = [r[2] for r in runs if r[2] is not None]

        def med(name: str, stats=stats) -> float:
            return statistics.median(getattr(s, name) for s in stats)

        counts = [r[3] for r in runs]
        proxy = " / ".join(
            str(int(statistics.median(c[k] for c in counts)))
            for k in ("lost", "duplicated", "held")
        )
        srtt = statistics.median((s.srtt or 0) * 1000 for s in stats)
        print(
            f"| {label} | {med('retransmissions'):.0f} | {med('fast_retransmits'):.0f} "
            f"| {med('t3_timeouts'):.0f} | {med('cwnd'):.0f} | {med('rto'):.2f} s "
            f"| {srtt:.2f} ms | {proxy} |"
        )


if __name__ == "__main__":
    main()
