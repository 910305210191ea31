"""Topic dissemination cost, gossip mesh vs naive flooding, on the sans-IO core.

Not the issue's full benchmark (that runs SDK peers in processes over real links): this
one runs GossipCores over a simulated network in simulated time, so its figures are
exact and repeatable and isolate the protocol. N peers, each linked to ``degree``
random others (a connected random graph), all subscribed to one topic; every peer
publishes in turn. Each link has a one-way delay of 20 ms plus up to 10 ms jitter and
carries 100 B/ms (so queues and frame bytes cost time); there is no loss. Flooding is the same
core with a mesh as large as the neighbourhood (every peer forwards every new message
to every linked subscriber), which is what naive flooding does, in the same run.

    python benchmarks/bench_topics_core.py [--peers 30 100] [--messages 200] [--degree 20]

Prints, per N: bytes on the wire per delivered message (all frames: PUBLISH, control,
IHAVE/IWANT) and propagation latency p50/p99 from publish to the last subscriber.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
import statistics
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from darkswap_trio.proto.gossip import GossipConfig, GossipCore  # noqa: E402
from darkswap_trio.proto.identity import Keypair  # noqa: E402

DELAY, JITTER, RATE = 0.020, 0.010, 100_000.0  # s, s, bytes/s per link direction


def run(n: int, degree: int, messages: int, config: GossipConfig, seed: int) -> dict:
    rng = random.Random(seed)
    keys = [Keypair.from_seed(bytes([i % 256, i // 256]) * 16) for i in range(n)]
    names = [str(k.peer_id) for k in keys]
    cores = {
        nm: GossipCore(k, config, rng=random.Random(seed + i), seqno_start=i << 32)
        for i, (nm, k) in enumerate(zip(names, keys, strict=True))
    }
    links = {frozenset((names[i], names[(i + 1) % n])) for i in range(n)}  # ring: connected
    while sum(1 for _ in links) < n * degree // 2:
        a, b = rng.sample(names, 2)
        links.add(frozenset((a, b)))
    queue: list = []
    seq = itertools.count()
    busy_until: dict[tuple[str, str], float] = {}
    now = 0.0
    wire_bytes = 0
    arrival: dict[bytes, list[float]] = {}
    published_at: dict[bytes, float] = {}

    def flush(name: str) -> None:
        nonlocal wire_bytes
        core = cores[name]
        while (out := core.poll_transmit()) is not None:
            peer, frame = out
            wire_bytes += len(frame)
            start = max(now, busy_until.get((name, peer), 0.0))
            busy_until[(name, peer)] = start + len(frame) / RATE
            when = busy_until[(name, peer)] + DELAY + rng.uniform(0, JITTER)
            heapq.heappush(queue, (when, next(seq), peer, name, frame))
        while (event := core.poll_event()) is not None:
            arrival.setdefault(event.message_id, []).append(now)

    def advance(until: float) -> None:
        nonlocal now
        while True:
            timer, who = min((c.poll_timeout(), nm) for nm, c in cores.items())
            if queue and queue[0][0] <= min(timer, until):
                now, _, dst, src, frame = heapq.heappop(queue)
                cores[dst].handle_message(src, frame, now)
                flush(dst)
            elif timer <= until:
                now = timer
                cores[who].handle_timeout(now)
                flush(who)
            else:
                now = until
                return

    for link in links:
        a, b = tuple(link)
        cores[a].peer_connected(b)
        cores[b].peer_connected(a)
    for name in names:
        cores[name].subscribe("t")
        flush(name)
    advance(5.0)
    setup_bytes = wire_bytes
    for m in range(messages):
        publisher = names[m % n]
        message_id, _ = cores[publisher].publish("t", bytes(200), now)
        published_at[message_id] = now
        flush(publisher)
        advance(now + 0.05)
    advance(now + 10.0)
    delivered = sum(len(v) for v in arrival.values())
    complete = [
        max(arrival[mid]) - t
        for mid, t in published_at.items()
        if len(arrival.get(mid, [])) == n - 1
    ]
    complete.sort()
    return {
        "delivered": delivered,
        "expected": messages * (n - 1),
        "bytes_per_delivery": (wire_bytes - setup_bytes) / max(delivered, 1),
        "p50_ms": 1000 * statistics.median(complete) if complete else float("nan"),
        "p99_ms": 1000 * complete[min(len(complete) - 1, int(0.99 * len(complete)))]
        if complete
        else float("nan"),
        "duplicates": sum(c.statistics.duplicates for c in cores.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, nargs="+", default=[30, 100])
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--degree", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    gossip = GossipConfig()
    flood = replace(GossipConfig(), d=10_000, d_lo=10_000, d_hi=10_000, d_lazy=0)
    print("| peers | protocol | delivered / expected | bytes per delivery | p50 ms | p99 ms |")
    print("| --- | --- | --- | --- | --- | --- |")
    for n in args.peers:
        degree = min(args.degree, n - 1)
        results = {}
        for label, config in (("gossip (D=6)", gossip), ("flooding", flood)):
            r = results[label] = run(n, degree, args.messages, config, args.seed)
            print(
                f"| {n} | {label} | {r['delivered']} / {r['expected']} | {r['bytes_per_delivery']:.0f} "
                f"| {r['p50_ms']:.0f} | {r['p99_ms']:.0f} |"
            )
        g, f = results["gossip (D=6)"], results["flooding"]
        print(
            f"| {n} | gossip / flooding | | {g['bytes_per_delivery'] / f['bytes_per_delivery']:.2f}x "
            f"| {g['p50_ms'] / f['p50_ms']:.2f}x | {g['p99_ms'] / f['p99_ms']:.2f}x |"
        )


if __name__ == "__main__":
    main()
