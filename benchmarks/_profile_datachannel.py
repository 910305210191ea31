"""bench_datachannel.py --profile: one transfer between two of our peers in this process
(both ends, so the profile shows the sender's and the receiver's costs) under cProfile."""

from __future__ import annotations

import cProfile
import datetime
import io
import pstats

import trio
from _transfer import our_transfer  # this directory is sys.path[0]

from darkswap_trio.proto.dtls._certificate import DtlsCertificate
from darkswap_trio.webrtc import PeerConnectionConfig, open_peer_connection

LOOPBACK = "127.0.0.1"
MESSAGE = 16384


async def ours_throughput(total: int, seconds: float) -> tuple[int, float]:
    now = datetime.datetime.now(datetime.UTC)
    configs = [
        PeerConnectionConfig(
            host_addresses=[LOOPBACK],
            certificate=DtlsCertificate.generate(now),
            high_water_mark=1 << 20,
        )
        for _ in range(2)
    ]
    async with open_peer_connection(configs[0]) as a, open_peer_connection(configs[1]) as b:
        await b.set_remote_description(await a.create_offer(), "offer")
        await a.set_remote_description(await b.create_answer(), "answer")
        channel = await a.create_data_channel("bench")
        accepted = await b.accept_data_channel()
        return await our_transfer(channel, accepted, total, seconds, MESSAGE)


def profile(total: int, seconds: float) -> None:
    async def run() -> tuple[int, float]:
        with trio.fail_after(seconds + 30):
            return await ours_throughput(total, seconds)

    profiler = cProfile.Profile()
    profiler.enable()
    received, elapsed = trio.run(run)
    profiler.disable()
    print(f"ours: {received / elapsed / 1e6:.1f} MB/s under cProfile ({received >> 20} MiB)")
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(40)
    print(out.getvalue())
