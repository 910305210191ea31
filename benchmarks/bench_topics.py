"""Topics with real SDK peers in processes: gossip mesh vs naive flooding, same run.

    python benchmarks/bench_topics.py [--peers 30 100] [--workers 4] [--runs 3]

For each N and run, the two protocols are measured one after the other (interleaved),
each with a fresh ``python -m relay``-equivalent relay process (``_topics_peers.py
relay``: the relay's defaults with the abuse limits raised and the topic rendezvous
naming no peers) and ``--workers`` processes running N P2PNetworks between them (public
API only; links are relay circuits, ``enable_direct=False``). Every run uses the same
random graph (a ring plus random edges up to ``--degree`` links per peer on average),
dialed with ``connect_to_peer``; every peer subscribes to one topic.

* Latency: peer 0 publishes ``--messages`` messages of 200 bytes, one every
  ``--interval`` s; per message, the time from publish to its arrival at the last
  subscriber (p50, p99).
* Rate: peer 0 publishes ``--burst`` messages back to back; messages/s = burst / time
  from the first publish to the last arrival at every subscriber.
* Bytes: topic bytes sent by all peers during the latency phase (PUBLISH, control,
  IHAVE/IWANT; gossip statistics ``bytes_sent``) per delivered message.

Flooding is the same SDK with the mesh as large as the neighbourhood (every peer forwards
every new message to every linked subscriber). Times come from ``time.monotonic()``,
shared by the processes. Loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS = HERE / "_topics_peers.py"


class Proc:
    def __init__(self, *args: str) -> None:
        self.p = subprocess.Popen(
            [sys.executable, str(PEERS), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=HERE.parent,
        )

    def send(self, cmd: str, **fields: object) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(json.dumps({"cmd": cmd, **fields}) + "\n")
        self.p.stdin.flush()

    def expect(self, ev: str, timeout: float = 120.0) -> dict:
        assert self.p.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.p.stdout.readline()
            if not line:
                raise RuntimeError(f"process ended while waiting for {ev!r}")
            data = json.loads(line)
            if data["ev"] == ev:
                return data
        raise TimeoutError(ev)

    def stop(self) -> None:
        if self.p.poll() is None:
            try:
                self.send("quit")
                self.p.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.p.kill()
                self.p.wait()


def graph(n: int, degree: int, rng: random.Random) -> list[tuple[int, int]]:
    edges = {(i, (i + 1) % n) for i in range(n)}
    while len(edges) < n * degree // 2:
        a, b = rng.sample(range(n), 2)
        if (b, a) not in edges:
            edges.add((a, b))
    return sorted(edges)


def run(n: int, workers: int, mode: str, args: argparse.Namespace, seed: int) -> dict:
    relay = Proc("relay")
    info = relay.expect("relay")
    multiaddr = f"/ip4/127.0.0.1/tcp/{info['port']}/ws/p2p/{info['peer_id']}"
    sizes = [n // workers + (1 if w < n % workers else 0) for w in range(workers)]
    procs = [Proc("peers", "--relay", multiaddr, "--count", str(k), "--mode", mode) for k in sizes]
    try:
        owner: list[tuple[int, int]] = []  # global index -> (worker, local index)
        ids: list[str] = []
        for w, proc in enumerate(procs):
            peers = proc.expect("ready", 180)["peers"]
            owner += [(w, i) for i in range(len(peers))]
            ids += peers
        edges = graph(n, min(args.degree, n - 1), random.Random(seed))
        per_worker: list[list] = [[] for _ in procs]
        for a, b in edges:
            w, i = owner[a]
            per_worker[w].append([i, ids[b]])
        for proc, mine in zip(procs, per_worker, strict=True):
            proc.send("connect", edges=mine)
        for proc in procs:
            proc.expect("connected", 180)
        for proc in procs:
            proc.send("subscribe")
            proc.expect("subscribed")
        # Wait until every peer knows each linked peer subscribes (the mesh can form).
        want = [0] * n
        for a, b in edges:
            want[a] += 1
            want[b] += 1
        deadline = time.monotonic() + 60
        while True:
            have: list[int] = []
            for proc in procs:
                proc.send("degree")
                have += proc.expect("degree")["degrees"]
            if have == want or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        time.sleep(2.5)  # two heartbeats: GRAFTs settle the mesh before measuring

        def totals(tag: str) -> tuple[dict[int, list], int, int]:
            merged: dict[int, list] = {}
            sent = dups = 0
            for proc in procs:
                proc.send("report", tag=tag)
                rep = proc.expect("report")
                sent += rep["bytes_sent"]
                dups += rep["duplicates"]
                for seq, (count, last, published) in rep["arrivals"].items():
                    entry = merged.setdefault(int(seq), [0, 0.0, published])
                    entry[0] += count
                    entry[1] = max(entry[1], last)
            return merged, sent, dups

        def wait_all(tag: str, count: int, timeout: float) -> tuple[dict[int, list], int, int]:
            deadline = time.monotonic() + timeout
            while True:
                merged, sent, dups = totals(tag)
                done = sum(entry[0] for entry in merged.values())
                if done >= count * (n - 1) or time.monotonic() > deadline:
                    return merged, sent, dups
                time.sleep(0.1)

        _, before, _ = totals("none")
        procs[0].send("publish", peer=0, count=args.messages, interval=args.interval, tag="lat")
        procs[0].expect("published", 300)
        merged, after, dups = wait_all("lat", args.messages, 30)
        delivered = sum(entry[0] for entry in merged.values())
        complete = sorted(
            last - published for count, last, published in merged.values() if count == n - 1
        )
        procs[0].send("publish", peer=0, count=args.burst, interval=0.0, tag="rate")
        start = time.monotonic()
        procs[0].expect("published", 300)
        rate_merged, _, _ = wait_all("rate", args.burst, 60)
        rate_delivered = sum(entry[0] for entry in rate_merged.values())
        last = max((entry[1] for entry in rate_merged.values()), default=start)
        return {
            "delivered": delivered,
            "expected": args.messages * (n - 1),
            "bytes": (after - before) / max(delivered, 1),
            "p50": 1000 * statistics.median(complete) if complete else float("nan"),
            "p99": 1000 * complete[min(len(complete) - 1, int(0.99 * len(complete)))]
            if complete
            else float("nan"),
            "rate": args.burst / max(last - start, 1e-9)
            if rate_delivered == args.burst * (n - 1)
            else float("nan"),
            "rate_delivered": f"{rate_delivered}/{args.burst * (n - 1)}",
            "duplicates": dups,
        }
    finally:
        for proc in procs:
            proc.stop()
        relay.p.terminate()
        relay.p.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, nargs="+", default=[30, 100])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--degree", type=int, default=20, help="links per peer on average")
    parser.add_argument("--messages", type=int, default=50)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(
        f"# {args.workers} worker processes + 1 relay process on {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}; {args.messages} messages of 200 B every "
        f"{args.interval * 1000:.0f} ms; burst {args.burst}; degree {args.degree}; relay "
        "abuse limits raised (benchmark_relay_config), circuit window default"
    )
    print(
        "| peers | protocol | delivered / expected | bytes per delivery | p50 ms | p99 ms "
        "| burst msgs/s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for n in args.peers:
        results: dict[str, list[dict]] = {"gossip": [], "flood": []}
        for r in range(args.runs):
            for mode in ("gossip", "flood") if r % 2 == 0 else ("flood", "gossip"):
                results[mode].append(run(n, min(args.workers, n), mode, args, args.seed))
        med = {
            mode: {
                key: statistics.median(row[key] for row in rows)
                for key in ("bytes", "p50", "p99", "rate", "delivered")
            }
            for mode, rows in results.items()
        }
        for mode, label in (("gossip", "gossip (D=6)"), ("flood", "flooding")):
            m, rows = med[mode], results[mode]
            print(
                f"| {n} | {label} | {m['delivered']:.0f} / {rows[0]['expected']} "
                f"| {m['bytes']:.0f} | {m['p50']:.1f} | {m['p99']:.1f} | {m['rate']:.0f} |"
            )
        g, f = med["gossip"], med["flood"]
        print(
            f"| {n} | gossip / flooding | | {g['bytes'] / f['bytes']:.2f}x "
            f"| {g['p50'] / f['p50']:.2f}x | {g['p99'] / f['p99']:.2f}x "
            f"| {g['rate'] / f['rate']:.2f}x |"
        )
        dups = sum(row["duplicates"] for rows in results.values() for row in rows)
        print(f"| {n} | duplicate deliveries (all runs) | {dups} | | | | |")


if __name__ == "__main__":
    main()
