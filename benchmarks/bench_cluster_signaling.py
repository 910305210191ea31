"""Issue #15, Redis half: what a relay cluster costs signaling, in one process.

Run: python benchmarks/bench_cluster_signaling.py [--rounds 5] [--exchanges 200] [--registrations 100]

Starts a private ``redis-server`` (unix socket) and, in this process, a single relay and
two cluster nodes (signature auth, SDK peers). Interleaved in ``--rounds`` rounds:

  round trip   an Offer from A and the Answer B sends back on receipt, A and B on the
               single relay / on one cluster node / on two cluster nodes (through Redis)
  burst        an Offer and 8 IceCandidates sent back to back by A: time until B has
               the last one (in order), same three placements. Across nodes this is
               where a session waiting for Redis before its next frame would show
               (one Redis round trip per message).
  floor        a PUBLISH from this process to its own subscription (this process's Redis
               client): what each direction across nodes must add at least, so the
               two-node round trip's floor is one node + 2 x this
  register     ``--registrations`` sequential SDK registrations (connect, prove the
               PeerId, Registered) on the single relay / on a cluster node (+ the claim)

Everything shares this process's one core (relays, peers, and Redis beside it), so the
ratios matter, not the absolute figures. Loopback only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from darkswap_trio import Keypair, open_relay_session  # noqa: E402
from darkswap_trio.proto.signaling import Answer, IceCandidate, Offer  # noqa: E402
from relay import RelayConfig, serve_relay  # noqa: E402
from relay.cluster._redis import open_redis_link  # noqa: E402


def relay_config(redis_url: str | None, node_id: str | None) -> RelayConfig:
    config = RelayConfig(host="127.0.0.1", port=0, stun_port=None, metrics_port=None)
    config.cluster.redis_url = redis_url
    config.cluster.node_id = node_id
    lim = config.limits  # one address registers and signals fast here: not an abuser
    lim.connections_per_ip_rate = lim.handshakes_per_ip_rate = 1e6
    lim.connections_per_ip_burst = lim.handshakes_per_ip_burst = 1_000_000
    lim.messages_per_peer_rate = lim.messages_per_ip_rate = 1e6
    lim.messages_per_peer_burst = lim.messages_per_ip_burst = 1_000_000
    return config


async def round_trips(a_relay, b_relay, exchanges: int) -> list[float]:
    alice, bob = Keypair.generate(), Keypair.generate()
    a_id, b_id = str(alice.peer_id), str(bob.peer_id)
    times: list[float] = []
    async with (
        open_relay_session(a_relay.multiaddr, alice) as a,
        open_relay_session(b_relay.multiaddr, bob) as b,
        trio.open_nursery() as nursery,
    ):

        async def answer() -> None:
            async for offer in b.signals:
                await b.send_signal(Answer(from_=b_id, to=a_id, sdp=offer.sdp))

        nursery.start_soon(answer)
        for i in range(exchanges):
            start = time.perf_counter()
            await a.send_signal(Offer(from_=a_id, to=b_id, sdp=f"v=0 {i}"))
            reply = await a.signals.receive()
            times.append(time.perf_counter() - start)
            assert reply.sdp == f"v=0 {i}"
        nursery.cancel_scope.cancel()
    return times


async def bursts(a_relay, b_relay, count: int, candidates: int = 8) -> list[float]:
    alice, bob = Keypair.generate(), Keypair.generate()
    a_id, b_id = str(alice.peer_id), str(bob.peer_id)
    times: list[float] = []
    async with (
        open_relay_session(a_relay.multiaddr, alice) as a,
        open_relay_session(b_relay.multiaddr, bob) as b,
    ):
        for i in range(count):
            burst = [Offer(from_=a_id, to=b_id, sdp=f"v=0 {i}")] + [
                IceCandidate(a_id, b_id, f"candidate:{i} {k}", "0", 0) for k in range(candidates)
            ]
            start = time.perf_counter()
            for msg in burst:
                await a.send_signal(msg)
            with trio.fail_after(10):  # a lost message fails the run, never hangs it
                for msg in burst:
                    assert await b.signals.receive() == msg  # whole and in order
            times.append(time.perf_counter() - start)
    return times


async def publish_to_subscriber(url: str, count: int) -> list[float]:
    times: list[float] = []
    async with open_redis_link(url, 5.0) as link, link.subscription("bench-floor") as payloads:
        received = payloads.__aiter__()
        for i in range(count):
            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(link.publish, "bench-floor", f"{i:0300d}")
                assert await received.__anext__() == f"{i:0300d}"
                times.append(time.perf_counter() - start)
    return times


async def registrations(relay, count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        async with open_relay_session(relay.multiaddr, Keypair.generate()):
            pass
    return count / (time.perf_counter() - start)


async def main(args: argparse.Namespace) -> None:
    directory = Path(tempfile.mkdtemp(prefix="bench-redis-", dir="/tmp"))
    socket_path = directory / "redis.sock"
    redis = subprocess.Popen(
        [shutil.which("redis-server") or "/usr/bin/redis-server", "--port", "0",
         "--unixsocket", str(socket_path), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        with trio.fail_after(10):
            while not socket_path.exists():
                await trio.sleep(0.01)
        url = f"unix://{socket_path}"
        async with trio.open_nursery() as nursery:
            single = await nursery.start(serve_relay, relay_config(None, None))
            n1 = await nursery.start(serve_relay, relay_config(url, "n1"))
            n2 = await nursery.start(serve_relay, relay_config(url, "n2"))
            rtt: dict[str, list[float]] = {"single relay": [], "one node": [], "two nodes": []}
            regs: dict[str, list[float]] = {"single relay": [], "cluster node": []}
            burst: dict[str, list[float]] = {"single relay": [], "one node": [], "two nodes": []}
            floor: list[float] = []
            for _ in range(args.rounds):
                rtt["single relay"] += await round_trips(single, single, args.exchanges)
                rtt["one node"] += await round_trips(n1, n1, args.exchanges)
                rtt["two nodes"] += await round_trips(n1, n2, args.exchanges)
                floor += await publish_to_subscriber(url, args.exchanges)
                burst["single relay"] += await bursts(single, single, args.exchanges // 4)
                burst["one node"] += await bursts(n1, n1, args.exchanges // 4)
                burst["two nodes"] += await bursts(n1, n2, args.exchanges // 4)
                regs["single relay"].append(await registrations(single, args.registrations))
                regs["cluster node"].append(await registrations(n1, args.registrations))
            nursery.cancel_scope.cancel()
    finally:
        redis.kill()
        redis.wait()
        shutil.rmtree(directory, ignore_errors=True)
    base = statistics.median(rtt["single relay"])
    print(f"{'Offer->Answer round trip':28} {'median ms':>10} {'p99 ms':>8} {'ratio':>6}")
    for name, values in rtt.items():
        values.sort()
        p99 = values[int(len(values) * 0.99) - 1]
        median = statistics.median(values)
        print(f"{name:28} {median * 1000:10.3f} {p99 * 1000:8.3f} {median / base:6.2f}")
    hop = statistics.median(floor)
    print(f"{'floor: PUBLISH -> subscriber':28} {hop * 1000:10.3f}")
    two_floor = statistics.median(rtt["one node"]) + 2 * hop
    print(f"{'floor two nodes: one + 2x':28} {two_floor * 1000:10.3f}")
    base = statistics.median(burst["single relay"])
    print(f"\n{'Offer + 8 candidates, burst':28} {'median ms':>10} {'p99 ms':>8} {'ratio':>6}")
    for name, values in burst.items():
        values.sort()
        p99 = values[min(len(values) - 1, len(values) * 99 // 100)]
        median = statistics.median(values)
        print(f"{name:28} {median * 1000:10.3f} {p99 * 1000:8.3f} {median / base:6.2f}")
    base = statistics.median(regs["single relay"])
    print(f"\n{'registrations':28} {'per s':>10} {'ratio':>6}")
    for name, values in regs.items():
        print(
            f"{name:28} {statistics.median(values):10.0f} {statistics.median(values) / base:6.2f}"
        )
    print(f"\nload average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--exchanges", type=int, default=200)
    parser.add_argument("--registrations", type=int, default=100)
    trio.run(main, parser.parse_args())
