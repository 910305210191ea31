"""Relay cluster benchmark: a circuit across two relay nodes vs one through a single node.

Run: python benchmarks/bench_cluster.py [--smoke | --quick] [--mesh-tls] [--json FILE]

Two ``python -m relay`` processes (node0, node1) meshed through a static directory
(docs/PROTOCOL.md section 15). The load is one asyncio + uvloop process with the fast
client of bench_relay (benchmarks/_relay_loadgen.py). In the same run, interleaved:

  throughput  64 KiB DATA frames through one circuit, same-node (both peers on node0)
              vs cross-node (peer on node0 -> peer on node1), median MB/s [min-max];
              target: cross-node >= 0.5x same-node.
  latency     100-byte round trip A -> B -> A, p50/p99 of each run's samples, median
              over runs; target: cross-node <= same-node + one mesh hop. Across two
              nodes each direction traverses one relay node more than on one node
              (A -> node0 -> node1 -> B). One hop is measured in the same run as what
              one node traversed each way costs: the same-node round trip minus the
              round trip of the same two client ends (same code, same framing)
              connected to each other without a relay ("direct"). A raw TCP echo to
              another process (100 bytes, p50) is printed as the floor of any hop: a
              relay node in Python cannot cost that little, so it is not the budget.
  cpu         relay CPU per GB relayed (both nodes for cross-node), from /proc.

Limits: the shipped defaults, except the per-peer byte pacing (bytes_per_peer_rate,
16 MiB/s by default), which would hold every throughput run at ~22 MB/s on both paths
and so measure the pacing, not the mesh: it is lifted to 1 GB/s unless --relay-config
is given. The report's last line names the limits in force.

No process is pinned (two cores shared with other work; the load average is printed);
ratios from one run matter, absolute figures do not. Everything is bounded in time.
Where a cross-node round trip's time goes (per process: CPU, run-queue wait, wakeups,
migrations; syscalls and Python calls per traversal; both client ends in one process or
in two): benchmarks/_profile_mesh_rtt.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MiB = 1024 * 1024
# Lifted unless --relay-config is given (see the module docstring).
BENCH_LIMITS = {"bytes_per_peer_rate": 1e9, "bytes_per_peer_burst": 1_000_000_000}
MODES = {
    "smoke": dict(tp_bytes=4 * MiB, runs=2, rtt_samples=50),
    "quick": dict(tp_bytes=64 * MiB, runs=5, rtt_samples=1000),
    "full": dict(tp_bytes=256 * MiB, runs=7, rtt_samples=1000),
}

LOAD = r"""
import asyncio, json, os, sys, time, uuid
sys.path[:0] = [sys.argv[2], sys.argv[3]]
import uvloop
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from _relay_loadgen import (CircuitEnd, CountingReceiver, WS_OPTIONS, open_circuit, register,
                            throughput_ours)
from _tcp_baseline import rtt_tcp
from _relay_servers import cpu_seconds
from darkswap_trio import Keypair, PeerId
from darkswap_trio.proto import signaling as sig

class Pair:
    counter = None

async def make_pair(a_node, b_node, ka, kb):
    p = Pair()
    p.a = await register(a_node["url"], PeerId.from_string(a_node["peer_id"]), ka)
    p.b = await register(b_node["url"], PeerId.from_string(b_node["peer_id"]), kb)
    p.ends = await open_circuit(p.a, p.b, str(kb.peer_id), str(ka.peer_id))
    return p

async def direct_pair():
    # Two websocket ends in this process, no relay between them: the same client code
    # and framing as a circuit's ends, so same-node minus this is one relay traversal
    # each way.
    accepted = asyncio.get_running_loop().create_future()

    async def handler(ws):
        accepted.set_result(ws)
        await asyncio.Future()  # held open until the process exits

    server = await serve(handler, "127.0.0.1", 0, compression=None, max_size=1 << 20,
                         ping_interval=None)
    port = server.sockets[0].getsockname()[1]
    client = await connect(f"ws://127.0.0.1:{port}/", **WS_OPTIONS)
    relay_id = str(uuid.uuid4())
    p = Pair()
    p.server = server
    p.ends = (CircuitEnd(client, relay_id, None), CircuitEnd(await accepted, relay_id, None))
    return p

async def rtt(p, samples, size=100):
    a, b = p.ends
    frame = sig.encode_circuit_data(a.key, os.urandom(size))
    out = []
    for _ in range(samples):
        start = time.perf_counter()
        await a.send(frame)
        await b.send(await b.receive())
        await a.receive()
        out.append((time.perf_counter() - start) * 1e6)
    return out

async def main(cmd):
    nodes = cmd["nodes"]
    keys = [Keypair.from_protobuf(bytes.fromhex(k)) for k in cmd["keys"]]
    pids = [n["pid"] for n in nodes]
    out = {k: {"mb_per_s": [], "cpu_s_per_gb": [], "rtt_p50": [], "rtt_p99": [], "rtt_cpu_us": []}
           for k in ("same", "cross")}
    out["echo"] = {"rtt_p50": []}
    out["direct"] = {"rtt_p50": []}
    direct = await direct_pair()
    # RTT pairs first (their sessions read frames), then throughput pairs (their
    # receivers are taken over by a byte counter).
    rtt_pairs = {"same": await make_pair(nodes[0], nodes[0], keys[0], keys[1]),
                 "cross": await make_pair(nodes[0], nodes[1], keys[2], keys[3])}
    tp_pairs = {"same": await make_pair(nodes[0], nodes[0], keys[4], keys[5]),
                "cross": await make_pair(nodes[0], nodes[1], keys[6], keys[7])}
    total, size = cmd["bytes"], 64 * 1024
    for run in range(-1, cmd["runs"]):  # run -1 warms both paths up
        for name in ("same", "cross"):
            if run < 0:
                await throughput_ours(tp_pairs[name], total // 8, size)
                await rtt(rtt_pairs[name], max(50, cmd["rtt_samples"] // 2))
                continue
            cpu0 = sum(cpu_seconds(p) for p in pids)
            seconds = await throughput_ours(tp_pairs[name], total, size)
            cpu = sum(cpu_seconds(p) for p in pids) - cpu0
            out[name]["mb_per_s"].append(total / seconds / 1e6)
            out[name]["cpu_s_per_gb"].append(cpu / (total / 1e9))
            cpu0 = sum(cpu_seconds(p) for p in pids)
            samples = sorted(await rtt(rtt_pairs[name], cmd["rtt_samples"]))
            cpu = sum(cpu_seconds(p) for p in pids) - cpu0
            out[name]["rtt_cpu_us"].append(cpu / len(samples) * 1e6)
            out[name]["rtt_p50"].append(samples[len(samples) // 2])
            out[name]["rtt_p99"].append(samples[min(len(samples) - 1, len(samples) * 99 // 100)])
        if run < 0:
            await rtt(direct, max(50, cmd["rtt_samples"] // 2))
        else:  # the same client pair without a relay: same-node minus this is one hop
            samples = sorted(await rtt(direct, cmd["rtt_samples"]))
            out["direct"]["rtt_p50"].append(samples[len(samples) // 2])
        if run >= 0:  # one process-to-process round trip: the floor of any hop
            echo = sorted(await rtt_tcp(cmd["echo"], cmd["rtt_samples"], 100, echo=True))
            out["echo"]["rtt_p50"].append(echo[len(echo) // 2])
    print(json.dumps(out), flush=True)
    os._exit(0)  # the byte counters own their transports: no orderly close needed

uvloop.run(main(json.loads(sys.argv[1])))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_node(
    argv: list[str], env: dict[str, str], entry: tuple[str, ...] = ("-m", "relay")
) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    process = subprocess.Popen(
        [sys.executable, *entry, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=ROOT,
    )
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    if not line.startswith("READY "):
        process.kill()
        raise RuntimeError(f"relay did not start: {line!r}")
    return process, dict(item.split("=", 1) for item in line.split()[1:])


def med(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float], fmt: str = "{:.1f}") -> str:
    return f"{fmt.format(med(values))} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


@contextlib.contextmanager
def running_nodes(
    peers: list[Any],
    homes: list[str],
    mesh_tls: bool = False,
    relay_config: str | None = None,
    entries: tuple[tuple[str, ...], ...] = (("-m", "relay"),) * 2,
) -> Iterator[tuple[list[dict[str, Any]], dict[str, str]]]:
    """Two meshed relay nodes (node0, node1; ``homes[i]`` is peer i's) and a TCP echo
    server: yields (the nodes' url/peer_id/pid, the echo target); everything is killed
    on exit. ``entries``: how each node is started (python's arguments before the
    relay's: a profiler's wrapper)."""
    from darkswap_trio import load_or_create_keypair

    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        secret = os.path.join(tmp, "mesh.secret")
        with open(secret, "wb") as f:
            f.write(os.urandom(32))
        nodes = []
        for i in range(2):
            key_file = os.path.join(tmp, f"node{i}.key")
            node_key = load_or_create_keypair(key_file)
            # With --mesh-tls, mesh links go to a TLS listener of their own (README).
            mesh_port = free_port() if mesh_tls else None
            nodes.append((f"node{i}", free_port(), key_file, str(node_key.peer_id), mesh_port))
        if relay_config is None:
            relay_config = os.path.join(tmp, "limits.toml")
            with open(relay_config, "w") as f:
                f.write("[limits]\n" + "".join(f"{k} = {v!r}\n" for k, v in BENCH_LIMITS.items()))
        directory = os.path.join(tmp, "directory.json")
        with open(directory, "w") as f:
            json.dump(
                {
                    "nodes": [
                        {"node_id": n, "advertise": f"127.0.0.1:{m or p}", "node_peer_id": pid}
                        for n, p, _, pid, m in nodes
                    ],
                    "peers": {str(k.peer_id): h for k, h in zip(peers, homes, strict=True)},
                },
                f,
            )
        try:
            targets = []
            for (_, port, key_file, peer_id, mesh_port), entry in zip(nodes, entries, strict=True):
                extra = ["--mesh-tls", f"--advertise=127.0.0.1:{mesh_port}"] if mesh_port else []
                extra.append(f"--config={relay_config}")
                process, ready = start_node(
                    [
                        "--host", "127.0.0.1", "--port", str(port), "--stun-port", "none",
                        "--metrics-port", "none", "--key-file", key_file, "--log-level",
                        "WARNING", "--mesh-secret-file", secret,
                        "--mesh-static-directory", directory, *extra,
                    ],
                    env,
                    entry,
                )  # fmt: skip
                processes.append(process)
                targets.append(
                    {
                        "url": f"ws://127.0.0.1:{ready['signaling']}/signaling",
                        "peer_id": peer_id,
                        "pid": process.pid,
                    }
                )
            echo = subprocess.Popen(
                [sys.executable, os.path.join(HERE, "_relay_servers.py"), "echo"],
                stdout=subprocess.PIPE,
                env=env,
            )
            processes.append(echo)
            assert echo.stdout is not None
            yield targets, json.loads(echo.stdout.readline())
        finally:
            for process in processes:
                process.kill()
                process.wait()


def run(mode: str, mesh_tls: bool = False, relay_config: str | None = None) -> dict:
    from darkswap_trio import Keypair

    settings = MODES[mode]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    peers = [Keypair.generate() for _ in range(8)]
    # Peers 0,1 and 4,5: same-node pairs on node0; 2,6 on node0 and 3,7 on node1.
    homes = ["node0", "node0", "node0", "node1", "node0", "node0", "node0", "node1"]
    with running_nodes(peers, homes, mesh_tls, relay_config) as (targets, echo_target):
        cmd = dict(
            echo=echo_target,
            nodes=targets,
            keys=[k.to_protobuf().hex() for k in peers],
            bytes=settings["tp_bytes"],
            runs=settings["runs"],
            rtt_samples=settings["rtt_samples"],
        )
        load = subprocess.run(
            [sys.executable, "-c", LOAD, json.dumps(cmd), HERE, ROOT],
            capture_output=True,
            env=env,
            timeout=600,
            check=False,
        )
        if load.returncode != 0:
            raise RuntimeError(f"load failed: {load.stderr.decode()[-2000:]}")
        return json.loads(load.stdout.decode().splitlines()[-1])


def report(out: dict, mode: str) -> None:
    same, cross = out["same"], out["cross"]
    tp_ratio = med(cross["mb_per_s"]) / med(same["mb_per_s"])
    rtt_same, rtt_cross = med(same["rtt_p50"]), med(cross["rtt_p50"])
    direct = med(out["direct"]["rtt_p50"])
    hop = rtt_same - direct  # one relay node traversed each way, its sockets included
    print(f"bench_cluster ({mode}); load average {os.getloadavg()[0]:.2f} (2 cores)")
    print(f"{'':28} {'same-node':>22} {'cross-node':>22}   ratio / target")
    print(
        f"{'throughput MB/s, 64 KiB':28} {spread(same['mb_per_s']):>22} "
        f"{spread(cross['mb_per_s']):>22}   {tp_ratio:.2f}x (>= 0.5x)"
    )
    print(
        f"{'relay CPU s per GB':28} {spread(same['cpu_s_per_gb'], '{:.2f}'):>22} "
        f"{spread(cross['cpu_s_per_gb'], '{:.2f}'):>22}"
    )
    print(
        f"{'100 B round trip p50, us':28} {spread(same['rtt_p50'], '{:.0f}'):>22} "
        f"{spread(cross['rtt_p50'], '{:.0f}'):>22}   +{rtt_cross - rtt_same:.0f} us "
        f"(<= +{hop:.0f}: one hop)"
    )
    print(
        f"{'direct, no relay: p50, us':28} {spread(out['direct']['rtt_p50'], '{:.0f}'):>22}"
        f"{'':>23}   (one hop = same-node - this)"
    )
    print(
        f"{'floor: TCP echo p50, us':28} {spread(out['echo']['rtt_p50'], '{:.0f}'):>22}"
        f"{'':>23}   (the floor of any hop)"
    )
    print(
        f"{'relay CPU us per round trip':28} {spread(same['rtt_cpu_us'], '{:.0f}'):>22} "
        f"{spread(cross['rtt_cpu_us'], '{:.0f}'):>22}   (all nodes; 10 ms ticks)"
    )
    print(
        f"{'100 B round trip p99, us':28} {spread(same['rtt_p99'], '{:.0f}'):>22} "
        f"{spread(cross['rtt_p99'], '{:.0f}'):>22}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--smoke", action="store_true")
    group.add_argument("--quick", action="store_true")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--mesh-tls", action="store_true", help="mesh links over TLS")
    parser.add_argument("--relay-config", metavar="TOML", help="--config for both nodes")
    args = parser.parse_args()
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    start = time.monotonic()
    out = {
        **run(mode, args.mesh_tls, args.relay_config),
        "mesh": "tls" if args.mesh_tls else "plain",
    }
    report(out, mode)
    limits = (
        f"those of {args.relay_config}"
        if args.relay_config
        else "shipped defaults except " + ", ".join(f"{k}={v:g}" for k, v in BENCH_LIMITS.items())
    )
    print(f"Relay limits in force: {limits}.")
    print(f"({time.monotonic() - start:.0f} s; mesh links {out['mesh']})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"mode": mode, **out}, f, indent=1)


if __name__ == "__main__":
    main()
