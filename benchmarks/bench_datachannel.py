"""Data channels on loopback: open time and throughput, our PeerConnection vs aiortc.

    python benchmarks/bench_datachannel.py [--runs 10] [--megabytes 64] [--seconds 30]
                                           [--quick] [--profile]

Prints a Markdown table. Both stacks run two peers in one process, on 127.0.0.1 only:
ours get ``host_addresses=["127.0.0.1"]``; aiortc's RTCPeerConnections get
``RTCConfiguration(iceServers=[])`` and aioice's interface enumeration is pointed at
127.0.0.1 (each stack then checks one candidate pair). Runs alternate between the
stacks so background load hits both alike.

(a) Open time: from the offer to a data channel open at both ends (signaling in
    process: offer, answer, then the channel's DCEP OPEN / ACK). aiortc creates its
    channel before the offer (it needs one to put an m=application line in the offer)
    and gathers before returning its descriptions. Ours runs with Ta 5 ms (both peers
    announce a=ice-pacing:5) and with the RFC default Ta 50 ms.
(b) Throughput: 16 KiB binary messages on one reliable ordered channel, until
    --megabytes are received or --seconds pass, whichever first. Senders keep at most
    1 MiB buffered (ours: DataChannel.send's backpressure; aiortc: bufferedAmount with
    the bufferedamountlow event). Timed from the first send to the last byte received.
    Ours four times: the defaults (one SACK per batch of datagrams read, at least every
    16 packets; Linux UDP GSO/GRO), acknowledging every second SCTP packet (RFC 9260's
    SHOULD), one SACK per batch without bound (``max_packets_per_sack=None``), and the
    defaults with one syscall per datagram (``udp_offload=False``).

--profile runs one throughput transfer of ours under cProfile and prints the top costs.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import statistics
import sys
import time

import trio
from _transfer import aiortc_transfer, our_transfer  # this directory is sys.path[0]

from darkswap_trio.proto.dtls._certificate import DtlsCertificate
from darkswap_trio.webrtc import PeerConnectionConfig, open_peer_connection

LOOPBACK = "127.0.0.1"
MESSAGE = 16384
HIGH_WATER = 1 << 20
OPEN_TARGET = 0.5  # ours / aiortc, at most
THROUGHPUT_TARGET = 5.0  # ours / aiortc, at least


# ---------------------------------------------------------------- ours (trio)


DEFAULT_SACK_EVERY = PeerConnectionConfig.max_packets_per_sack


def our_config(
    pacing: float,
    certificate: DtlsCertificate,
    sack_every: int | None = DEFAULT_SACK_EVERY,
    offload: bool = True,
) -> PeerConnectionConfig:
    return PeerConnectionConfig(
        host_addresses=[LOOPBACK],
        ice_pacing=pacing,
        certificate=certificate,
        high_water_mark=HIGH_WATER,
        max_packets_per_sack=sack_every,
        udp_offload=offload,
    )


async def ours_open(pacing: float, certificates) -> float:
    async with (
        open_peer_connection(our_config(pacing, certificates[0])) as a,
        open_peer_connection(our_config(pacing, certificates[1])) as b,
    ):
        start = time.perf_counter()
        await b.set_remote_description(await a.create_offer(), "offer")
        await a.set_remote_description(await b.create_answer(), "answer")
        channel = await a.create_data_channel("bench")
        accepted = await b.accept_data_channel()
        elapsed = time.perf_counter() - start
        assert channel.id == accepted.id
        return elapsed


async def ours_throughput(
    total: int, seconds: float, certificates, sack_every: int | None, offload: bool = True
) -> tuple[int, float]:
    async with (
        open_peer_connection(our_config(0.005, certificates[0], sack_every, offload)) as a,
        open_peer_connection(our_config(0.005, certificates[1], sack_every, offload)) as b,
    ):
        await b.set_remote_description(await a.create_offer(), "offer")
        await a.set_remote_description(await b.create_answer(), "answer")
        channel = await a.create_data_channel("bench")
        accepted = await b.accept_data_channel()
        return await our_transfer(channel, accepted, total, seconds, MESSAGE)


# ---------------------------------------------------------------- aiortc (asyncio)


async def _aiortc_pair():
    from aiortc import RTCConfiguration, RTCPeerConnection

    return (
        RTCPeerConnection(RTCConfiguration(iceServers=[])),  # never Google's STUN server
        RTCPeerConnection(RTCConfiguration(iceServers=[])),
    )


async def _aiortc_connect(a, b, label: str):
    loop = asyncio.get_running_loop()
    opened = loop.create_future()
    accepted = loop.create_future()
    channel = a.createDataChannel(label)
    channel.on("open", lambda: opened.done() or opened.set_result(None))
    b.on("datachannel", lambda ch: accepted.done() or accepted.set_result(ch))
    await a.setLocalDescription(await a.createOffer())
    await b.setRemoteDescription(a.localDescription)
    await b.setLocalDescription(await b.createAnswer())
    await a.setRemoteDescription(b.localDescription)
    await opened
    remote = await accepted
    return channel, remote


async def aiortc_open() -> float:
    a, b = await _aiortc_pair()
    try:
        start = time.perf_counter()
        await _aiortc_connect(a, b, "bench")
        return time.perf_counter() - start
    finally:
        await a.close()
        await b.close()


async def aiortc_throughput(total: int, seconds: float) -> tuple[int, float]:
    a, b = await _aiortc_pair()
    try:
        channel, remote = await _aiortc_connect(a, b, "bench")
        return await aiortc_transfer(channel, remote, total, seconds, MESSAGE, HIGH_WATER)
    finally:
        await a.close()
        await b.close()


# ---------------------------------------------------------------- report


def summary(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    return f"{statistics.median(ms):.1f} [{ms[0]:.1f}-{ms[-1]:.1f}] ms"


def rate(received: int, elapsed: float) -> str:
    return f"{received / elapsed / 1e6:.1f} MB/s ({received >> 20} MiB in {elapsed:.2f} s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="open-time runs per stack")
    parser.add_argument("--megabytes", type=int, default=64, help="MiB per throughput run")
    parser.add_argument("--seconds", type=float, default=30.0, help="cap per throughput run")
    parser.add_argument("--quick", action="store_true", help="3 runs, 8 MiB, 10 s")
    parser.add_argument("--profile", action="store_true", help="cProfile our transfer")
    parser.add_argument(
        "--sack-every",
        type=lambda v: None if v == "batch" else int(v),
        default=DEFAULT_SACK_EVERY,
        help=f"max_packets_per_sack for --profile: a number or 'batch' ({DEFAULT_SACK_EVERY})",
    )
    args = parser.parse_args()
    runs, megabytes, seconds = (
        (3, 8, 10.0) if args.quick else (args.runs, args.megabytes, args.seconds)
    )
    total = megabytes << 20

    import aioice.ice

    # aioice skips 127.0.0.1 and would check every interface: loopback only, like ours.
    aioice.ice.get_host_addresses = lambda **_: [LOOPBACK]
    import datetime

    now = datetime.datetime.now(datetime.UTC)
    certificates = (DtlsCertificate.generate(now), DtlsCertificate.generate(now))

    def bounded_trio(fn, *fn_args):
        async def run():
            with trio.fail_after(seconds + 30):
                return await fn(*fn_args)

        return trio.run(run)

    def bounded_asyncio(coroutine):
        async def run():
            async with asyncio.timeout(seconds + 30):
                return await coroutine

        return asyncio.run(run())

    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        moved = bounded_trio(ours_throughput, total, seconds, certificates, args.sack_every)
        profiler.disable()
        print(f"ours: {rate(*moved)} under cProfile")
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(60)
        print(out.getvalue())
        return

    opens: dict[str, list[float]] = {"aiortc": [], "ta5": [], "ta50": []}
    for _ in range(runs):  # interleaved, so drifting background load hits all alike
        opens["aiortc"].append(bounded_asyncio(aiortc_open()))
        opens["ta5"].append(bounded_trio(ours_open, 0.005, certificates))
        opens["ta50"].append(bounded_trio(ours_open, 0.05, certificates))
    theirs = bounded_asyncio(aiortc_throughput(total, seconds))
    ours = [
        (bounded_trio(ours_throughput, total, seconds, certificates, sack, offload), label)
        for sack, offload, label in (
            (
                DEFAULT_SACK_EVERY,
                True,
                f"defaults: SACK per batch, >= 1 per {DEFAULT_SACK_EVERY} packets, UDP GSO/GRO",
            ),
            (2, True, "SACK every 2 packets (RFC 9260)"),
            (None, True, "SACK per batch, unbounded"),
            (DEFAULT_SACK_EVERY, False, "defaults without UDP offload"),
        )
    ]

    print(
        f"Data channels on loopback, {runs} opens per stack, {MESSAGE // 1024} KiB messages, "
        f"Python {sys.version.split()[0]}"
    )
    print()
    print("| Benchmark | ours | aiortc | ours / aiortc | target | met |")
    print("|---|---|---|---|---|---|")
    aiortc_median = statistics.median(opens["aiortc"])
    for key, label in (("ta5", "Ta 5 ms, agreed"), ("ta50", "Ta 50 ms, default")):
        ratio = statistics.median(opens[key]) / aiortc_median
        met = "yes" if ratio <= OPEN_TARGET else "no"
        print(
            f"| open time, offer to channel open ({label}) | {summary(opens[key])} "
            f"| {summary(opens['aiortc'])} | {ratio:.2f}x | <= {OPEN_TARGET}x | {met} |"
        )
    for result, label in ours:
        ratio = (result[0] / result[1]) / (theirs[0] / theirs[1])
        met = "yes" if ratio >= THROUGHPUT_TARGET else "no"
        print(
            f"| throughput, 16 KiB messages, one channel ({label}) | {rate(*result)} "
            f"| {rate(*theirs)} | {ratio:.2f}x | >= {THROUGHPUT_TARGET}x | {met} |"
        )


if __name__ == "__main__":
    main()
