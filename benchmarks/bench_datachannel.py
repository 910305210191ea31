"""Data channels on loopback, two processes per pair: our PeerConnection vs aiortc.

    python benchmarks/bench_datachannel.py [--runs 5] [--rtt 1000] [--seconds 3]
                                           [--megabytes 256] [--quick] [--profile]

Every pair is two peer processes (``_dc_peer.py``: one offers, one answers and echoes),
so each stack's CPU is its own and neither waits on the other's event loop. Runs are
interleaved (ours-ours, aiortc-aiortc, ours-aiortc, aiortc-ours, then again), so
drifting background load hits all alike; the table shows the median over ``--runs``
runs (``[min-max]`` where it helps). Loopback only: ours get
``host_addresses=["127.0.0.1"]``, aiortc ``RTCConfiguration(iceServers=[])`` with
aioice's interfaces pointed at 127.0.0.1. Both use their default ICE pacing: ours
agree on Ta 5 ms between themselves (a=ice-pacing) and use the RFC's 50 ms with a
peer that does not announce it.

* open: from just before the offer to the channel open at the offerer and one 1-byte
  message echoed (both ends open); descriptions relayed through this process;
* 100 B round trip: --rtt messages echoed one at a time, p50 and p99;
* 16 KiB throughput: one reliable ordered channel, at most 1 MiB buffered by the
  sender, for --seconds (or --megabytes), until the echo of a final small message;
* CPU per packet: each side's process CPU time over the transfer divided by the
  transfer's 1,200-byte packets (payload bytes / 1200, the same count for both stacks).

--profile runs one transfer of ours in this process (both peers) under cProfile.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(HERE, "_dc_peer.py")
PACKET = 1200
RTT_TARGET = 0.5  # ours / aiortc p50, at most
THROUGHPUT_TARGET = 8.0  # ours / aiortc, at least
OPEN_TARGET = 1.0  # ours with a foreign peer / aiortc with the same peer, at most


def run_pair(offerer: str, answerer: str, rtt: int, total: int, seconds: float) -> dict:
    """One offerer and one answerer process; the offerer's result lines, merged."""
    python = [sys.executable, "-u", PEER]
    extra = ["--rtt", str(rtt), "--bytes", str(total), "--seconds", str(seconds)]
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
    answer_proc = subprocess.Popen([*python, answerer, "answer"], **pipes)
    offer_proc = subprocess.Popen([*python, offerer, "offer", *extra], **pipes)
    try:
        for proc in (answer_proc, offer_proc):
            assert json.loads(proc.stdout.readline()) == {"ready": True}
        offer_proc.stdin.write('{"go": true}\n')
        offer_proc.stdin.flush()
        offer = offer_proc.stdout.readline()
        answer_proc.stdin.write(offer)
        answer_proc.stdin.flush()
        offer_proc.stdin.write(answer_proc.stdout.readline())
        offer_proc.stdin.flush()
        result: dict = {}
        for line in offer_proc.stdout:
            result.update(json.loads(line))
        if offer_proc.wait(timeout=seconds + 60) != 0 or "open" not in result:
            raise RuntimeError(f"{offerer} -> {answerer} failed: {result}")
        return result
    finally:
        answer_proc.stdin.close()
        for proc in (offer_proc, answer_proc):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(values: list[float]) -> str:
    v = sorted(x * 1000 for x in values)
    return f"{statistics.median(v):.1f} [{v[0]:.1f}-{v[-1]:.1f}] ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rtt", type=int, default=1000, help="round trips per run")
    parser.add_argument("--seconds", type=float, default=3.0, help="per transfer")
    parser.add_argument("--megabytes", type=int, default=256, help="cap per transfer")
    parser.add_argument("--quick", action="store_true", help="3 runs, 300 round trips, 1 s")
    parser.add_argument("--profile", action="store_true", help="cProfile ours in one process")
    args = parser.parse_args()
    if args.profile:
        from _profile_datachannel import profile  # this directory is sys.path[0]

        profile(args.megabytes << 20, args.seconds)
        return
    if args.quick:
        args.runs, args.rtt, args.seconds = 3, 300, 1.0
    total = args.megabytes << 20
    pairs = [("ours", "ours"), ("aiortc", "aiortc"), ("ours", "aiortc"), ("aiortc", "ours")]
    results: dict[tuple[str, str], list[dict]] = {pair: [] for pair in pairs}
    load = [os.getloadavg()[0]]
    for _ in range(args.runs):
        for pair in pairs:
            data = pair[0] == pair[1]
            results[pair].append(
                run_pair(*pair, args.rtt if data else 0, total if data else 0, args.seconds)
            )
        load.append(os.getloadavg()[0])

    def rtts(pair, q):  # the median over runs of each run's percentile
        return statistics.median(percentile(r["rtt"], q) for r in results[pair])

    def rate(pair):
        return statistics.median(r["bytes"] / r["seconds"] for r in results[pair])

    def cpu_per_packet(pair, side):
        return statistics.median(r["cpu"][side] / (r["bytes"] / PACKET) for r in results[pair])

    def opens(pair):
        return [r["open"] for r in results[pair]]

    ours, theirs = ("ours", "ours"), ("aiortc", "aiortc")
    print(
        f"Data channels on loopback, two processes per pair, median of {args.runs} interleaved "
        f"runs, Python {sys.version.split()[0]}, load average "
        f"{min(load):.2f}-{max(load):.2f} (1 min)"
    )
    print()
    print("| Benchmark | ours | aiortc | ours / aiortc | target | met |")
    print("|---|---|---|---|---|---|")
    for q, label in ((0.5, "p50"), (0.99, "p99")):
        ratio = rtts(ours, q) / rtts(theirs, q)
        target = f"<= {RTT_TARGET}x" if q == 0.5 else "-"
        met = ("yes" if ratio <= RTT_TARGET else "no") if q == 0.5 else "-"
        print(
            f"| 100 B round trip {label} | {rtts(ours, q) * 1e6:.0f} µs "
            f"| {rtts(theirs, q) * 1e6:.0f} µs | {ratio:.2f}x | {target} | {met} |"
        )
    ratio = rate(ours) / rate(theirs)
    print(
        f"| 16 KiB messages, throughput | {rate(ours) / 1e6:.1f} MB/s "
        f"| {rate(theirs) / 1e6:.1f} MB/s | {ratio:.2f}x | >= {THROUGHPUT_TARGET}x "
        f"| {'yes' if ratio >= THROUGHPUT_TARGET else 'no'} |"
    )
    for side, label in ((0, "sender"), (1, "receiver")):
        mine, other = cpu_per_packet(ours, side), cpu_per_packet(theirs, side)
        print(
            f"| CPU per 1,200 B packet, {label} | {mine * 1e6:.1f} µs | {other * 1e6:.1f} µs "
            f"| {mine / other:.2f}x | - | - |"
        )
    base = statistics.median(opens(theirs))
    rows = (
        (ours, theirs, "between two of ours / two aiortc", None),
        (("ours", "aiortc"), theirs, "we offer, aiortc answers / aiortc with aiortc", OPEN_TARGET),
        (("aiortc", "ours"), theirs, "aiortc offers, we answer / aiortc with aiortc", OPEN_TARGET),
    )
    for pair, baseline, label, target in rows:
        ratio = statistics.median(opens(pair)) / base
        met = "-" if target is None else ("yes" if ratio <= target else "no")
        print(
            f"| open time, {label} | {ms(opens(pair))} | {ms(opens(baseline))} | {ratio:.2f}x "
            f"| {'-' if target is None else f'<= {target}x'} | {met} |"
        )


if __name__ == "__main__":
    main()
