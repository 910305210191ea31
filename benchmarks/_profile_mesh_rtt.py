"""Where bench_cluster.py's cross-node round trip goes: per process, per round trip.

Run: python benchmarks/_profile_mesh_rtt.py [--samples N] [--rounds R] [--split] [--pin]
         [--strace] [--sched] [--trace] [--cprofile] [--perf] [--spy]

The nodes of bench_cluster.py (node0, node1, static directory) and its asyncio load
(both circuit ends in one process). Interleaved phases of N 100-byte round trips:
``direct`` (the two client ends connected without a relay), ``same`` (both ends on
node0), ``cross`` (node0 -> node1). For every phase and process (load, node0, node1),
per round trip, from /proc (nanosecond schedstat, not 10 ms ticks):

  cpu      run time on a CPU, us (sys: of which in the kernel, from 10 ms ticks)
  wait     time runnable but waiting for a CPU (run-queue delay), us
  slices   times scheduled onto a CPU (wakeups)
  migr     migrations between CPUs

Options:
  --split     the B ends in a second load process (``echo``) that echoes every frame,
              so ``direct`` is two processes, ``same`` three, ``cross`` four: each step
              adds one process to the ring, as a deployment's separate clients would
  --pin       node0 and node1 on CPU 1, the load on CPU 0
  --strace    one more same and cross phase under ``strace -c -f`` on both nodes:
              syscalls per round trip (strace's slowdown makes its times meaningless)
  --sched     ``perf sched`` of a same and a cross phase: run time per wakeup,
              scheduling delay, other tasks' CPU
  --trace     ``perf trace`` of the nodes: per traversal, the head (wakeup ->
              forwarding write) and the tail (write -> asleep again), traced so slower
  --cprofile  node0's Python calls and their time per round trip, same vs cross
              (cProfile: the times are inflated, the counts exact)
  --perf      ``perf record`` of node1 during a cross phase
  --spy       py-spy (2 kHz) on node1 during a cross phase: top self-time functions
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from bench_cluster import HERE, ROOT, running_nodes  # this directory is sys.path[0]

LOAD = r"""
import asyncio, json, os, sys, time
sys.path[:0] = [sys.argv[2], sys.argv[3]]
import uvloop
from darkswap_trio import Keypair, PeerId
from darkswap_trio.proto import signaling as sig
from _relay_loadgen import open_circuit, register

async def pair(a_node, b_node, ka, kb):
    a = await register(a_node["url"], PeerId.from_string(a_node["peer_id"]), ka)
    b = await register(b_node["url"], PeerId.from_string(b_node["peer_id"]), kb)
    return await open_circuit(a, b, str(kb.peer_id), str(ka.peer_id))

async def echo_side(cmd):
    # --split: the B ends, in a process of their own, echo every DATA frame.
    from _relay_loadgen import CircuitEnd, receive_message
    from websockets.asyncio.server import serve
    nodes = cmd["nodes"]
    keys = [Keypair.from_protobuf(bytes.fromhex(k)) for k in cmd["keys"]]

    async def echo(end):
        while True:
            await end.send(await end.receive())

    async def on_node(node, key):
        ws = await register(node["url"], PeerId.from_string(node["peer_id"]), key)
        async def serve_one():
            notice = await receive_message(ws)
            assert isinstance(notice, sig.DataChannel), notice
            await echo(CircuitEnd(ws, notice.relay_id, notice.limits))
        return asyncio.ensure_future(serve_one())

    async def handler(ws):
        first = await ws.recv()
        end = CircuitEnd(ws, str(uuid.UUID(bytes=first[1:17])), None)
        await ws.send(first)
        await echo(end)

    server = await serve(handler, "127.0.0.1", 0, compression=None, max_size=1 << 20,
                         ping_interval=None)
    tasks = [await on_node(nodes[0], keys[1]), await on_node(nodes[1], keys[3])]
    print(json.dumps({"ready": os.getpid(), "port": server.sockets[0].getsockname()[1]}),
          flush=True)
    await asyncio.gather(*tasks)

class Remote:
    # --split: the A end of a pair whose B end echoes in the other process.

    def __init__(self, end):
        self.end = end

async def main(cmd):
    exec(cmd["direct_src"], globals())
    if cmd.get("role") == "echo":
        await echo_side(cmd)
        return
    nodes = cmd["nodes"]
    keys = [Keypair.from_protobuf(bytes.fromhex(k)) for k in cmd["keys"]]
    if cmd.get("echo_port"):
        from _relay_loadgen import CircuitEnd, WS_OPTIONS, receive_message
        from websockets.asyncio.client import connect
        async def remote_pair(node, key, to):
            ws = await register(node["url"], PeerId.from_string(node["peer_id"]), key)
            await ws.send(sig.encode_message(sig.RelayRequest(from_=str(key.peer_id), to=to)))
            response = await receive_message(ws)
            assert isinstance(response, sig.RelayResponse) and response.accepted, response
            return Remote(CircuitEnd(ws, response.relay_id, response.limits))
        client = await connect(f"ws://127.0.0.1:{cmd['echo_port']}/", **WS_OPTIONS)
        pairs = {"same": await remote_pair(nodes[0], keys[0], str(keys[1].peer_id)),
                 "cross": await remote_pair(nodes[0], keys[2], str(keys[3].peer_id)),
                 "direct": Remote(CircuitEnd(client, str(uuid.uuid4()), None))}
    else:
        pairs = {"same": await pair(nodes[0], nodes[0], keys[0], keys[1]),
                 "cross": await pair(nodes[0], nodes[1], keys[2], keys[3]),
                 "direct": (await direct_pair()).ends}
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"ready": os.getpid()}), flush=True)
    while line := await reader.readline():
        name, samples = line.decode().split()
        ends = pairs[name]
        out = []
        if isinstance(ends, Remote):
            a = ends.end
            frame = sig.encode_circuit_data(a.key, os.urandom(100))
            for _ in range(int(samples)):
                start = time.perf_counter()
                await a.send(frame)
                await a.receive()
                out.append((time.perf_counter() - start) * 1e6)
        else:
            a, b = ends
            frame = sig.encode_circuit_data(a.key, os.urandom(100))
            for _ in range(int(samples)):
                start = time.perf_counter()
                await a.send(frame)
                await b.send(await b.receive())
                await a.receive()
                out.append((time.perf_counter() - start) * 1e6)
        out.sort()
        print(json.dumps({"p50": out[len(out) // 2], "mean": sum(out) / len(out)}), flush=True)

uvloop.run(main(json.loads(sys.argv[1])))
"""


def direct_source() -> str:
    """bench_cluster's direct_pair (one source of truth for the no-relay pair)."""
    import bench_cluster

    src = bench_cluster.LOAD
    start = src.index("class Pair:")
    end = src.index("async def rtt(")
    return (
        "import uuid\nfrom websockets.asyncio.client import connect\n"
        "from websockets.asyncio.server import serve\n"
        "from _relay_loadgen import CircuitEnd, WS_OPTIONS\n" + src[start:end]
    )


def proc_stats(pid: int) -> dict[str, float]:
    """Run time, run-queue wait (ns), slices, migrations, summed over the threads."""
    cpu = wait = slices = migrations = 0
    for task in glob.glob(f"/proc/{pid}/task/*"):
        with open(f"{task}/schedstat") as f:
            a, b, c = f.read().split()
        cpu, wait, slices = cpu + int(a), wait + int(b), slices + int(c)
        with open(f"{task}/sched") as f:
            for line in f:
                if line.startswith("se.nr_migrations"):
                    migrations += int(line.split(":")[1])
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    sys_us = int(fields[12]) / os.sysconf("SC_CLK_TCK") * 1e6
    return {
        "cpu": cpu / 1e3,
        "sys": sys_us,
        "wait": wait / 1e3,
        "slices": slices,
        "migr": migrations,
    }


def phase(load: subprocess.Popen, pids: dict[str, int], name: str, samples: int) -> dict:
    before = {who: proc_stats(pid) for who, pid in pids.items()}
    assert load.stdin is not None and load.stdout is not None
    load.stdin.write(f"{name} {samples}\n".encode())
    load.stdin.flush()
    result = json.loads(load.stdout.readline())
    after = {who: proc_stats(pid) for who, pid in pids.items()}
    per = {who: {k: (after[who][k] - before[who][k]) / samples for k in after[who]} for who in pids}
    return {"p50": result["p50"], "mean": result["mean"], "per": per}


def strace_phase(load, pids, name: str, samples: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tracers = {}
        for who in ("node0", "node1"):
            path = os.path.join(tmp, who)
            tracers[who] = (
                subprocess.Popen(
                    ["strace", "-c", "-f", "-o", path, "-p", str(pids[who])],
                    stderr=subprocess.DEVNULL,
                ),
                path,
            )
        time.sleep(0.5)  # attached
        phase(load, pids, name, samples)
        for who, (tracer, path) in tracers.items():
            tracer.send_signal(signal.SIGINT)
            tracer.wait(10)
            counts: dict[str, float] = {}
            with open(path) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 5 and parts[0].replace(".", "").isdigit():
                        counts[parts[-1]] = int(parts[3]) / samples
            out[who] = counts
    return out


def sched_phase(load, pids, name: str, samples: int) -> str:
    """``perf sched`` over one phase, every CPU: per process of ours, the run time per
    slice (a wakeup's work, head and tail) and the scheduling delay after a wakeup; and
    the CPU time of every other task (other jobs on the machine) per round trip."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "sched.data")
        perf = subprocess.Popen(
            ["perf", "sched", "record", "-a", "-o", path],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)
        start = time.monotonic()
        phase(load, pids, name, samples)
        elapsed = time.monotonic() - start
        perf.send_signal(signal.SIGINT)
        perf.wait(30)
        out = subprocess.run(
            ["perf", "sched", "timehist", "-i", path],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
    by_pid = {pid: who for who, pid in pids.items()}
    runs: dict[str, list[float]] = collections.defaultdict(list)
    delays: dict[str, list[float]] = collections.defaultdict(list)
    others = 0.0
    first = last = None
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 6 or not parts[0][0].isdigit() or "[" not in parts[2]:
            continue
        at = float(parts[0])
        first = at if first is None else first
        last = at
        task = parts[2]
        pid = int(task.rsplit("[", 1)[1].split("/")[-1].rstrip("]"))
        delay, run = float(parts[-2]) * 1e3, float(parts[-1]) * 1e3
        who = by_pid.get(pid)
        if who is not None:
            runs[who].append(run)
            delays[who].append(delay)
        elif not task.startswith(("<idle>", "perf[", "swapper")):
            others += run
    window = (last - first) if first is not None and last is not None else elapsed
    # The recording also covers the second before and after the phase: others' CPU is
    # counted per round trip over the whole window, scaled to the phase.
    rows = [
        f"perf sched, {name}: other tasks {others / window / 1e6 * elapsed * 1e6 / samples:.1f} "
        f"us CPU per round trip ({others / window / 1e4:.0f}% of one CPU)"
    ]
    for who in pids:
        if runs[who]:
            rows.append(
                f"  {who:6} slices {len(runs[who]) / samples:4.2f}/rt, run per slice "
                f"{statistics.median(runs[who]):5.1f} us (median), sched delay "
                f"{statistics.mean(delays[who]):5.1f} us (mean) "
                f"{statistics.median(delays[who]):5.1f} (median)"
            )
    return "\n".join(rows)


def trace_phase(load, pids, name: str, samples: int) -> str:
    """``perf trace`` of the nodes' syscalls over one phase: per traversal, the head (the
    wakeup's epoll_wait returned -> the forwarding write entered) and the tail (the write
    returned -> the next epoll_wait entered: what runs before the node sleeps again)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tracers = {}
        for who in ("node0", "node1"):
            path = os.path.join(tmp, who)
            tracers[who] = (
                subprocess.Popen(
                    ["perf", "trace", "-o", path, "-p", str(pids[who]), "-e",
                     "read,write,epoll_wait,epoll_ctl"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                ),
                path,
            )  # fmt: skip
        time.sleep(1.0)
        phase(load, pids, name, samples)
        for who, (tracer, path) in tracers.items():
            tracer.send_signal(signal.SIGINT)
            tracer.wait(30)
            calls = []
            with open(path) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) < 5 or "(" not in line or "ms):" not in line:
                        continue
                    try:
                        at = float(parts[0])
                        duration = float(line.split("(", 1)[1].split("ms)", 1)[0])
                    except ValueError:
                        continue
                    tokens = line.split("ms):", 1)[1].split()
                    # "comm/pid call(...)" when several threads are traced, else "call(...)"
                    token = tokens[1] if "/" in tokens[0] and "(" not in tokens[0] else tokens[0]
                    call = token.split("(", 1)[0]
                    calls.append((call, at * 1e3, (at + duration) * 1e3))
            heads, tails = [], []
            for i, (call, at, end) in enumerate(calls):
                if call != "write":
                    continue
                before = next((c for c in reversed(calls[:i]) if c[0] == "epoll_wait"), None)
                after = next((c for c in calls[i + 1 :] if c[0] == "epoll_wait"), None)
                if before is not None:
                    heads.append(at - before[2])
                if after is not None:
                    tails.append(after[1] - end)
            if heads and tails:
                rows.append(
                    f"perf trace, {name}, {who}: {len(heads) / samples:.2f} writes/rt, head "
                    f"{statistics.median(heads):.1f} us, write "
                    f"{statistics.median(c[2] - c[1] for c in calls if c[0] == 'write'):.1f} us, "
                    f"tail {statistics.median(tails):.1f} us (medians; traced, so slower)"
                )
    return "\n".join(rows)


def record_cross_phase(argv: list[str], load, pids, samples: int) -> None:
    """A sampling profiler (``argv``, attached to one node) through one cross phase;
    stopped with SIGINT, as py-spy and perf expect, so it writes what it recorded."""
    recorder = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attaching takes a moment; the phase should be recorded whole
    phase(load, pids, "cross", samples)
    recorder.send_signal(signal.SIGINT)
    recorder.wait(30)


def spy_phase(load, pids, samples: int, who: str = "node1") -> list[tuple[str, float]]:
    py_spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "raw")
        record_cross_phase(
            [py_spy, "record", "-p", str(pids[who]), "-r", "2000", "-f", "raw", "-o", path],
            load,
            pids,
            samples,
        )
        self_time: collections.Counter[str] = collections.Counter()
        total = 0
        with open(path) as f:
            for line in f:
                stack, _, count = line.rstrip().rpartition(" ")
                frames = stack.split(";")
                self_time[frames[-1]] += int(count)
                total += int(count)
    return [(name, n / total) for name, n in self_time.most_common(25)]


def perf_phase(load, pids, samples: int, who: str = "node1") -> str:
    """``perf record`` (cpu-clock: a VM has no hardware counters) of one node during a
    cross phase; the report by DSO and symbol, self time."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "perf.data")
        record_cross_phase(
            ["perf", "record", "-e", "cpu-clock", "-F", "20000", "-o", path, "-p", str(pids[who])],
            load,
            pids,
            samples,
        )
        report = subprocess.run(
            [
                "perf",
                "report",
                "-i",
                path,
                "--stdio",
                "--sort",
                "dso,sym",
                "--percent-limit",
                "0.7",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        return "\n".join(line for line in report.stdout.splitlines() if line.strip()[:1] != "#")


# cProfile in node1, enabled once it runs, dumped on SIGUSR1 (--cprofile).
PROFILED_NODE = """
import cProfile, signal, sys
import relay.__main__ as entry
profile = None
def dump(*_):
    profile.disable()
    profile.dump_stats(sys.argv[1])
signal.signal(signal.SIGUSR1, dump)
def start(*_):
    global profile
    profile = cProfile.Profile()
    profile.enable()
signal.signal(signal.SIGUSR2, start)
entry.main(sys.argv[2:])
"""


def cprofile_phase(load, pids, name: str, samples: int, out: str) -> dict[str, tuple[float, float]]:
    """node0's Python calls and their time per round trip over one phase: name -> (calls,
    us); cProfile inflates the times, not the counts."""
    import pstats

    os.kill(pids["node0"], signal.SIGUSR2)
    time.sleep(0.2)
    phase(load, pids, name, samples)
    os.kill(pids["node0"], signal.SIGUSR1)
    time.sleep(1.0)
    stats = pstats.Stats(out)
    rows = {}
    for (file, line, fn), (_cc, nc, tt, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        rows[f"{os.path.basename(file)}:{line} {fn}"] = (nc / samples, tt / samples * 1e6)
    return rows


def cprofile_compare(load, pids, samples: int, out: str) -> None:
    same = cprofile_phase(load, pids, "same", samples, out)
    cross = cprofile_phase(load, pids, "cross", samples, out)
    for name, rows in (("same", same), ("cross", cross)):
        print(
            f"node0 {name}: {sum(c for c, _ in rows.values()):.0f} Python calls, "
            f"{sum(t for _, t in rows.values()):.0f} us (cProfile) per round trip"
        )
    print("  calls/rt same -> cross, us same -> cross: the functions that differ")
    for key in sorted(
        set(same) | set(cross), key=lambda k: -abs(cross.get(k, (0, 0))[1] - same.get(k, (0, 0))[1])
    )[:25]:
        (c0, t0), (c1, t1) = same.get(key, (0, 0)), cross.get(key, (0, 0))
        print(f"  {c0:5.2f} -> {c1:5.2f}   {t0:6.1f} -> {t1:6.1f}  {key}")


def main() -> None:
    from darkswap_trio import Keypair

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--strace", action="store_true")
    parser.add_argument("--spy", action="store_true")
    parser.add_argument("--pin", action="store_true")
    parser.add_argument("--perf", action="store_true")
    parser.add_argument("--cprofile", action="store_true")
    parser.add_argument("--split", action="store_true")
    parser.add_argument("--sched", action="store_true")
    parser.add_argument("--trace", action="store_true")
    args = parser.parse_args()
    peers = [Keypair.generate() for _ in range(4)]
    homes = ["node0", "node0", "node0", "node1"]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    prof_out = os.path.join(tempfile.gettempdir(), f"mesh-rtt-node0-{os.getpid()}.prof")
    node0 = ("-c", PROFILED_NODE, prof_out) if args.cprofile else ("-m", "relay")
    with running_nodes(peers, homes, entries=(node0, ("-m", "relay"))) as (targets, _echo):
        cmd = {
            "nodes": targets,
            "keys": [k.to_protobuf().hex() for k in peers],
            "direct_src": direct_source(),
        }
        echo: subprocess.Popen | None = None
        extra: dict[str, int] = {}
        if args.split:
            echo = subprocess.Popen(
                [sys.executable, "-c", LOAD, json.dumps({**cmd, "role": "echo"}), HERE, ROOT],
                stdout=subprocess.PIPE,
                env=env,
            )
            assert echo.stdout is not None
            echo_ready = json.loads(echo.stdout.readline())
            cmd["echo_port"] = echo_ready["port"]
            extra["echo"] = echo_ready["ready"]
        load = subprocess.Popen(
            [sys.executable, "-c", LOAD, json.dumps(cmd), HERE, ROOT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        try:
            assert load.stdout is not None
            ready = json.loads(load.stdout.readline())
            pids = {
                "load": ready["ready"],
                **extra,
                "node0": targets[0]["pid"],
                "node1": targets[1]["pid"],
            }
            if args.pin:
                os.sched_setaffinity(pids["load"], {0})
                os.sched_setaffinity(pids["node0"], {1})
                os.sched_setaffinity(pids["node1"], {1})
            for name in ("direct", "same", "cross"):  # warm-up
                phase(load, pids, name, 300)
            results: dict[str, list[dict]] = {"direct": [], "same": [], "cross": []}
            for _ in range(args.rounds):
                for name in results:
                    results[name].append(phase(load, pids, name, args.samples))
            print(f"load average {os.getloadavg()[0]:.2f}; {args.rounds} x {args.samples} each")
            print(f"{'':8} {'p50 us':>7} {'mean':>6}   per round trip, per process (medians)")
            for name, runs in results.items():
                p50 = statistics.median(r["p50"] for r in runs)
                mean = statistics.median(r["mean"] for r in runs)
                cells = []
                for who in pids:
                    m = {
                        k: statistics.median(r["per"][who][k] for r in runs)
                        for k in ("cpu", "sys", "wait", "slices", "migr")
                    }
                    cells.append(
                        f"{who} cpu {m['cpu']:5.1f} (sys {m['sys']:3.0f}) wait {m['wait']:5.1f} "
                        f"sl {m['slices']:4.2f} mg {m['migr']:4.2f}"
                    )
                print(f"{name:8} {p50:7.0f} {mean:6.0f}   " + " | ".join(cells))
            if args.strace:
                for name in ("same", "cross"):
                    counts = strace_phase(load, pids, name, 1000)
                    for who, c in counts.items():
                        top = ", ".join(f"{k} {v:.2f}" for k, v in sorted(c.items()) if v >= 0.01)
                        print(f"strace {name:6} {who}: {top}")
            if args.sched:
                for name in ("same", "cross"):
                    print(sched_phase(load, pids, name, 2000))
            if args.trace:
                for name in ("same", "cross"):
                    print(trace_phase(load, pids, name, 1000))
            if args.cprofile:
                cprofile_compare(load, pids, 2000, prof_out)
            if args.perf:
                print(perf_phase(load, pids, args.samples * 2))
            if args.spy:
                for fn, share in spy_phase(load, pids, args.samples * 2):
                    print(f"  {share * 100:5.1f}%  {fn}")
        finally:
            for proc in (load, echo):
                if proc is not None:
                    proc.kill()
                    proc.wait()


if __name__ == "__main__":
    main()
