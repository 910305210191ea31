"""Processes of bench_topics.py: the relay, and workers that each run many SDK peers.

    python benchmarks/_topics_peers.py relay
    python benchmarks/_topics_peers.py peers --relay MULTIADDR --count K --mode gossip|flood

The relay prints ``{"multiaddr": ...}`` once listening. A worker runs K P2PNetworks
(public API, relay circuits only: ``enable_direct=False``) in one trio run, prints
``{"ev": "ready", "peers": [ids]}`` and then obeys JSON lines on stdin:

* ``{"cmd": "connect", "edges": [[i, peer_id], ...]}``: local peer i dials peer_id;
  answers ``connected``.
* ``{"cmd": "subscribe"}``: every local peer subscribes to the topic; ``subscribed``.
* ``{"cmd": "degree"}``: ``degree`` with each local peer's ``topic_peers`` count.
* ``{"cmd": "publish", "peer": i, "count": N, "interval": S, "tag": T}``: local peer i
  publishes N messages (``tag seq monotonic-time``, padded to 200 bytes), one every S
  seconds (0: back to back); answers ``published``.
* ``{"cmd": "report", "tag": T}``: ``report`` with, per message seq of that tag, how
  many local subscribers got it, the latest arrival time and the publish time, plus the
  topic bytes the local peers sent (``bytes_sent``) and duplicate counts.

Times are ``time.monotonic()``, one clock for every process of the machine. Loopback only.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import signal
import sys
import time
from dataclasses import replace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import trio  # noqa: E402

TOPIC = "bench"
SIZE = 200


def emit(ev: str, **fields: object) -> None:
    print(json.dumps({"ev": ev, **fields}), flush=True)


async def run_relay() -> None:
    from _relay_servers import benchmark_relay_config

    from relay import serve_relay

    config = benchmark_relay_config()
    # Links come from the benchmark's graph only (the same graph for gossip and flooding):
    # the rendezvous names no peers, so nobody dials beyond it.
    config.limits.topic_sample = 0
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_relay, config)
        emit("relay", peer_id=server.peer_id, port=server.signaling_port, pid=os.getpid())
        await trio.sleep(math.inf)


class Worker:
    def __init__(self, networks: list, mode: str) -> None:
        self.networks = networks
        self.mode = mode
        # tag -> seq -> [count, latest arrival]
        self.arrivals: dict[str, dict[int, list]] = {}
        self.duplicates = 0

    async def collect(self, network) -> None:
        seen: set[bytes] = set()
        async with network.subscribe(TOPIC, queue_size=100_000) as subscription:
            async for message in subscription:
                now = time.monotonic()
                if message.message_id in seen:
                    self.duplicates += 1
                    continue
                seen.add(message.message_id)
                tag, seq, sent, _ = message.data.split(b" ", 3)
                table = self.arrivals.setdefault(tag.decode(), {})
                entry = table.setdefault(int(seq), [0, 0.0, float(sent)])
                entry[0] += 1
                entry[1] = max(entry[1], now)

    async def publish(self, index: int, count: int, interval: float, tag: str) -> None:
        network = self.networks[index]
        start = time.monotonic()
        for seq in range(count):
            head = f"{tag} {seq} {time.monotonic():.6f} ".encode()
            await network.publish(TOPIC, head.ljust(SIZE, b"."))
            if interval:
                await trio.sleep(interval)
        emit("published", count=count, seconds=time.monotonic() - start)

    def bytes_sent(self) -> int:
        return sum(n.topic_layer.statistics.bytes_sent for n in self.networks)

    async def commands(self, nursery: trio.Nursery) -> None:
        stdin = trio.lowlevel.FdStream(os.dup(0))
        buffer = b""
        while True:
            chunk = await stdin.receive_some(1 << 20)
            if not chunk:
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                command = json.loads(line)
                name = command["cmd"]
                if name == "quit":
                    return
                if name == "connect":
                    async with trio.open_nursery() as dials:
                        for index, peer_id in command["edges"]:
                            dials.start_soon(self.networks[index].connect_to_peer, peer_id)
                    emit("connected")
                elif name == "subscribe":
                    for network in self.networks:
                        nursery.start_soon(self.collect, network)
                    await trio.sleep(0)
                    emit("subscribed")
                elif name == "degree":
                    emit("degree", degrees=[len(n.topic_peers(TOPIC)) for n in self.networks])
                elif name == "publish":
                    nursery.start_soon(
                        self.publish,
                        command["peer"],
                        command["count"],
                        command.get("interval", 0.0),
                        command["tag"],
                    )
                elif name == "report":
                    got = self.arrivals.get(command["tag"], {})
                    emit(
                        "report",
                        arrivals={str(seq): entry for seq, entry in got.items()},
                        bytes_sent=self.bytes_sent(),
                        duplicates=self.duplicates,
                    )


async def accept_all(network) -> None:
    while True:
        await network.accept_peer()  # the link joins the pool (and the topic layer)


async def run_peers(relay: str, count: int, mode: str) -> None:
    from contextlib import AsyncExitStack

    from darkswap_trio import Config, P2PConfig, P2PNetwork, RelayManagerConfig

    config = Config(
        p2p=P2PConfig(relay_servers=[relay], enable_direct=False, max_connections=200),
        relay_manager=RelayManagerConfig(connection_timeout=30),
    )
    async with AsyncExitStack() as stack:
        networks = []
        for _ in range(count):
            network = P2PNetwork(config)
            if mode == "flood":
                # Naive flooding: every peer forwards every new message to every linked
                # subscriber (a mesh as large as the neighbourhood, no gossip).
                layer = network.topic_layer
                layer.config = replace(layer.config, d=10_000, d_lo=10_000, d_hi=10_000, d_lazy=0)
            networks.append(await stack.enter_async_context(network))
        with trio.fail_after(120):
            for network in networks:
                await network.wait_relay_connected()
        # Opened after the networks, so it closes (cancelled) before they do.
        nursery = await stack.enter_async_context(trio.open_nursery())
        for network in networks:
            nursery.start_soon(accept_all, network)
        emit("ready", peers=[str(n.local_peer_id) for n in networks])
        await Worker(networks, mode).commands(nursery)
        nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=("relay", "peers"))
    parser.add_argument("--relay")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--mode", choices=("gossip", "flood"), default="gossip")
    args = parser.parse_args()
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: die with the parent
    signal.alarm(1800)
    if args.kind == "relay":
        trio.run(run_relay)
    else:
        trio.run(run_peers, args.relay, args.count, args.mode)


if __name__ == "__main__":
    main()
