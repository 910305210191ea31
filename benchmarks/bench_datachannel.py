"""Data channels on loopback, two processes per pair: our PeerConnection vs aiortc.

    python benchmarks/bench_datachannel.py [--runs 5] [--rtt 1000] [--seconds 3]
                                           [--megabytes 256] [--quick] [--smoke]
                                           [--baseline DIR] [--profile]

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

--baseline DIR adds our stack imported from another checkout (say, the main branch)
to the same interleaved runs and prints a before/after table.
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


def run_pair(
    offerer: str, answerer: str, rtt: int, total: int, seconds: float, baseline: str = ""
) -> dict:
    """One offerer and one answerer process; the offerer's result lines, merged. A stack
    "base" is ours imported from ``baseline`` (a checkout's root) instead."""
    extra = ["--rtt", str(rtt), "--bytes", str(total), "--seconds", str(seconds)]

    def start(stack: str, role: str, *more: str) -> subprocess.Popen:
        env = dict(os.environ)
        if stack == "base":
            stack, env["PYTHONPATH"] = "ours", baseline
        return subprocess.Popen(
            [sys.executable, "-u", PEER, stack, role, *more],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip

    answer_proc = start(answerer, "answer")
    offer_proc = start(offerer, "offer", *extra)
    try:
        result = exchange_descriptions(offer_proc, answer_proc)
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


def exchange_descriptions(offer_proc: subprocess.Popen, answer_proc: subprocess.Popen) -> dict:
    """Both ``_dc_peer.py`` processes ready, the offerer told to go, the offer and the
    answer carried across; then the offerer's result lines, merged, until it exits."""
    for proc in (answer_proc, offer_proc):
        assert json.loads(proc.stdout.readline()) == {"ready": True}
    offer_proc.stdin.write('{"go": true}\n')
    offer_proc.stdin.flush()
    answer_proc.stdin.write(offer_proc.stdout.readline())
    answer_proc.stdin.flush()
    offer_proc.stdin.write(answer_proc.stdout.readline())
    offer_proc.stdin.flush()
    result: dict = {}
    for line in offer_proc.stdout:
        result.update(json.loads(line))
    return result


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
    parser.add_argument("--smoke", action="store_true", help="1 run, 20 round trips, 1 MiB")
    parser.add_argument("--profile", action="store_true", help="cProfile ours in one process")
    parser.add_argument(
        "--baseline", default="", help="also run ours from this checkout (e.g. /work/main)"
    )
    args = parser.parse_args()
    if args.profile:
        from _profile_datachannel import profile  # this directory is sys.path[0]

        profile(args.megabytes << 20, args.seconds)
        return
    if args.quick:
        args.runs, args.rtt, args.seconds = 3, 300, 1.0
    if args.smoke:
        args.runs, args.rtt, args.seconds, args.megabytes = 1, 20, 1.0, 1
    total = args.megabytes << 20
    pairs = [("ours", "ours"), ("aiortc", "aiortc"), ("ours", "aiortc"), ("aiortc", "ours")]
    if args.baseline:
        pairs += [("base", "base"), ("base", "aiortc"), ("aiortc", "base")]
    results: dict[tuple[str, str], list[dict]] = {pair: [] for pair in pairs}
    load = [os.getloadavg()[0]]
    for _ in range(args.runs):
        for pair in pairs:
            data = pair[0] == pair[1]
            results[pair].append(
                run_pair(
                    *pair,
                    args.rtt if data else 0,
                    total if data else 0,
                    args.seconds,
                    args.baseline,
                )
            )
        load.append(os.getloadavg()[0])
    print(
        f"Data channels on loopback, two processes per pair, median of {args.runs} interleaved "
        f"runs, Python {sys.version.split()[0]}, load average "
        f"{min(load):.2f}-{max(load):.2f} (1 min)"
    )
    print()
    print("| Benchmark | ours | aiortc | ours / aiortc | target | met |")
    print("|---|---|---|---|---|---|")
    for label, mine, other, target, lower in rows(results, "ours", "aiortc"):
        ratio = mine[0] / other[0]
        met = "-" if target is None else ("yes" if (ratio <= target) == lower else "no")
        shown = "-" if target is None else f"{'<=' if lower else '>='} {target}x"
        print(f"| {label} | {mine[1]} | {other[1]} | {ratio:.2f}x | {shown} | {met} |")
    if args.baseline:
        print()
        print(f"Before ({args.baseline}) and after, same runs:")
        print()
        print("| Benchmark | after | before | after / before |")
        print("|---|---|---|---|")
        for label, after, before, _, _ in rows(results, "ours", "base"):
            print(f"| {label} | {after[1]} | {before[1]} | {after[0] / before[0]:.2f}x |")


def rows(results: dict, mine: str, other: str) -> list:
    """(label, (value, shown) of ``mine``, the same of ``other``, target, lower is
    better) per row; open times against aiortc compare with aiortc-aiortc."""

    def rtt(stack: str, q: float) -> tuple[float, str]:  # median over runs of a percentile
        value = statistics.median(percentile(r["rtt"], q) for r in results[(stack, stack)])
        return value, f"{value * 1e6:.0f} µs"

    def rtt_cpu(stack: str, side: int) -> tuple[float, str]:
        pair = results[(stack, stack)]
        value = statistics.median(r["rtt_cpu"][side] / len(r["rtt"]) for r in pair)
        return value, f"{value * 1e6:.0f} µs"

    def rate(stack: str) -> tuple[float, str]:
        value = statistics.median(r["bytes"] / r["seconds"] for r in results[(stack, stack)])
        return value, f"{value / 1e6:.1f} MB/s"

    def cpu(stack: str, side: int) -> tuple[float, str]:
        pair = results[(stack, stack)]
        value = statistics.median(r["cpu"][side] / (r["bytes"] / PACKET) for r in pair)
        return value, f"{value * 1e6:.1f} µs"

    def opened(pair: tuple[str, str]) -> tuple[float, str]:
        times = [r["open"] for r in results[pair]]
        return statistics.median(times), ms(times)

    out = [
        ("100 B round trip p50", rtt(mine, 0.5), rtt(other, 0.5), RTT_TARGET, True),
        ("100 B round trip p99", rtt(mine, 0.99), rtt(other, 0.99), None, True),
        ("CPU per round trip, offerer", rtt_cpu(mine, 0), rtt_cpu(other, 0), None, True),
        ("CPU per round trip, echoing side", rtt_cpu(mine, 1), rtt_cpu(other, 1), None, True),
        ("16 KiB messages, throughput", rate(mine), rate(other), THROUGHPUT_TARGET, False),
        ("CPU per 1,200 B packet, sender", cpu(mine, 0), cpu(other, 0), None, True),
        ("CPU per 1,200 B packet, receiver", cpu(mine, 1), cpu(other, 1), None, True),
    ]
    theirs = opened(("aiortc", "aiortc"))
    if other == "aiortc":
        out.append(
            ("open time, two of ours / two aiortc", opened((mine, mine)), theirs, None, True)
        )
        for pair, label in (((mine, "aiortc"), "we offer"), (("aiortc", mine), "aiortc offers")):
            out.append(
                (f"open time, {label} / aiortc-aiortc", opened(pair), theirs, OPEN_TARGET, True)
            )
    else:
        out.append(
            ("open time, two of ours", opened((mine, mine)), opened((other, other)), None, True)
        )
        for role in ("we offer to aiortc", "aiortc offers to us"):
            first = role.startswith("we")
            pairs = [(s, "aiortc") if first else ("aiortc", s) for s in (mine, other)]
            out.append((f"open time, {role}", opened(pairs[0]), opened(pairs[1]), None, True))
    return out


if __name__ == "__main__":
    main()
