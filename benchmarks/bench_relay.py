"""Relay benchmarks: our relay against baselines run in the same process tree, on loopback.

Run: python benchmarks/bench_relay.py [--smoke | --quick] [--hog] [--json FILE]
         [--only throughput,latency,registration,circuits] [--circuits N]
         [--circuit-seconds S]

Every server under test runs in its own process (benchmarks/_relay_servers.py), the
load runs in other processes (benchmarks/_relay_loadgen.py: asyncio + uvloop +
``websockets``, the fast client), so server RSS and CPU are measured from /proc and
the server never shares a core with its load while throughput is measured.

  throughput   64 KiB messages through one circuit: ours vs a raw trio TCP splice relay
               and vs a relay on ``websockets`` + uvloop. Server pinned to CPU 0, load to
               CPU 1; runs interleaved across servers; median [min-max].
  latency      100-byte round trip A -> relay -> B -> relay -> A (unpinned), p50/p99 per
               run; ours vs the websockets relay, the splice relay and a raw trio TCP echo.
               open: RelayRequest -> RelayResponse on registered sessions (p50/p99).
  registration authenticated registrations/s (Register, Challenge, Authenticate,
               Registered) vs WebSocket connections/s to a bare trio-websocket server,
               then server RSS per idle peer at two peer counts, same comparison.
  circuits     many concurrent circuits on one relay: aggregate MB/s and fairness
               (slowest circuit's bytes / median circuit's bytes), measured only once
               every circuit is open and past its first window
               (benchmarks/_relay_circuits_load.py).

Besides wall-clock figures (noisy on a shared machine: the load average is printed),
the table gives server CPU per GB, per message and per registration, from
/proc/PID/stat: those do not depend on what else runs. The peer count of the memory
benchmark is capped by the hard RLIMIT_NOFILE (one descriptor per peer; raising it needs
CAP_SYS_RESOURCE): on a 20,000 limit the "20,000 peers" point is 19,900.

Every row names the load generator's CPU too (it must stay faster than what it measures).
``--hog`` runs a busy loop on the load generator's core for the whole run (a loaded
machine: the load's round trips, and so credit, come back later). The limits in force are
printed: every abuse limit is lifted (benchmarks/_relay_servers.py), flow control is the
shipped default.

Everything is bounded in size and time; servers die with this process. Modes: --smoke
(seconds, for CI), --quick (well under a minute), default full (about 2 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SERVERS = os.path.join(HERE, "_relay_servers.py")
LOADGEN = os.path.join(HERE, "_relay_loadgen.py")
MiB = 1024 * 1024

from _bench_util import JsonLines, loadavg, start_hog  # noqa: E402  (sys.path[0] is here)
from _relay_report import WINDOW_EXPERIMENT, report  # noqa: E402
from _relay_servers import cpu_seconds, rss_kib  # noqa: E402

__all__ = ["JsonLines", "loadavg", "report"]  # bench_workers.py imports the first two

MODES = {
    "smoke": dict(
        tp_bytes=4 * MiB,
        runs=2,
        rtt_samples=50,
        open_samples=20,
        peers=(20, 50),
        reg_procs=1,
        circuits=10,
        circuit_seconds=1.0,
    ),
    "quick": dict(
        tp_bytes=64 * MiB,
        runs=5,
        rtt_samples=300,
        open_samples=100,
        peers=(500, 2000),
        reg_procs=1,
        circuits=200,
        circuit_seconds=5.0,
    ),
    "full": dict(
        tp_bytes=256 * MiB,
        runs=7,
        rtt_samples=1000,
        open_samples=500,
        peers=(5000, 20000),
        reg_procs=2,
        circuits=2000,
        circuit_seconds=20.0,  # ~80 frames per circuit: fewer and the granularity shows
    ),
}
MESSAGE = 64 * 1024  # throughput write size
CIRCUIT_MESSAGE = 16 * 1024  # many-circuits write size: enough frames per circuit to rank them
RTT_SIZE = 100
REGISTER_CONCURRENCY = 32  # handshakes in flight per load process
FD_MARGIN = 100  # descriptors a server needs besides its peers' sockets
SERVER_CPU, LOAD_CPU = 0, 1
PARTS = ("throughput", "latency", "registration", "circuits")


# -- processes ---------------------------------------------------------------------------


class Server:
    """A server under test in its own process; ``info`` has port, pid (and peer_id, url)."""

    def __init__(self, kind: str, cpu: int | None, *extra: str) -> None:
        args = [sys.executable, SERVERS, kind, *extra]
        args += [] if cpu is None else ["--cpu", str(cpu)]
        self.kind = kind
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        self.info = JsonLines(self.proc).read(30)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def unpin(self) -> None:
        os.sched_setaffinity(self.pid, set(range(os.cpu_count() or 1)))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def loadgen(command: dict, timeout: float) -> dict:
    # The result comes back in a file: a line of 100+ KB through the stdout pipe was seen
    # cut at 64 KiB on a loaded machine.
    with tempfile.TemporaryDirectory() as tmp:
        result_file = os.path.join(tmp, "result.json")
        command = {**command, "result_file": result_file}
        proc = subprocess.run(
            [sys.executable, LOADGEN, json.dumps(command)], capture_output=True, timeout=timeout
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"load generator {command['command']} failed:\n{proc.stderr.decode()[-3000:]}"
            )
        with open(result_file) as f:
            return json.load(f)


def pinning() -> tuple[int | None, int | None]:
    return (SERVER_CPU, LOAD_CPU) if (os.cpu_count() or 1) >= 2 else (None, None)


# -- benchmarks --------------------------------------------------------------------------


def bench_throughput(mode: dict) -> dict:
    server_cpu, load_cpu = pinning()
    servers = {kind: Server(kind, server_cpu) for kind in ("ours", "wsrelay", "splice")}
    # Experiment: the same relay with the fixed window shipped before adaptive ones.
    servers["ours_window"] = Server("ours", server_cpu, "--window", str(WINDOW_EXPERIMENT))
    try:
        throughput = loadgen(
            dict(
                command="throughput",
                targets={k: s.info for k, s in servers.items()},
                bytes=mode["tp_bytes"],
                size=MESSAGE,
                runs=mode["runs"],
                cpu=load_cpu,
            ),
            60 + mode["runs"] * 4 * mode["tp_bytes"] / (20 * MiB),
        )
    finally:
        for server in servers.values():
            server.stop()
    return {"throughput": throughput}


def bench_latency(mode: dict) -> dict:
    """Round trips (unpinned) and circuit open times."""
    servers = {kind: Server(kind, None) for kind in ("ours", "wsrelay", "splice", "echo")}
    try:
        rtt = loadgen(
            dict(
                command="rtt",
                targets={k: s.info for k, s in servers.items()},
                samples=mode["rtt_samples"],
                size=RTT_SIZE,
                runs=mode["runs"],
            ),
            60 + mode["runs"] * mode["rtt_samples"] * 4 * 0.005,
        )
        opened = loadgen(
            dict(command="open", target=servers["ours"].info, samples=mode["open_samples"]),
            60 + mode["open_samples"] * 0.02,
        )
    finally:
        for server in servers.values():
            server.stop()
    return {"rtt": rtt, "open": opened["open_us"], "open_client_cpu_us": opened["client_cpu_us"]}


def bench_idle_peers(kind: str, mode: dict, first_ip: int) -> dict:
    """Open idle sessions up to each count in ``mode["peers"]``: rate, RSS, server CPU."""
    server = Server(kind, None)
    procs = []
    try:
        time.sleep(0.5)
        rss0 = server.rss_kib()
        count = max(mode["peers"])
        nprocs = mode["reg_procs"]
        for i in range(nprocs):
            # One loopback source address per load process: 10k+ connections each
            # without running out of ephemeral ports.
            command = dict(
                command="register",
                kind=kind,
                target=server.info,
                local_ip=f"127.0.0.{first_ip + i}",
                concurrency=REGISTER_CONCURRENCY,
                max_peers=count // nprocs + 1,
            )
            procs.append(
                subprocess.Popen(
                    [sys.executable, LOADGEN, json.dumps(command)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
            )
        readers = [JsonLines(p) for p in procs]
        for reader in readers:
            reader.read(120)  # keys generated, ready
        stages, held = [], 0
        for target in mode["peers"]:
            step = target - held
            shares = [step // nprocs + (1 if i < step % nprocs else 0) for i in range(nprocs)]
            cpu0, start = cpu_seconds(server.pid), time.perf_counter()
            for proc, share in zip(procs, shares, strict=True):
                proc.stdin.write(f"open {share}\n".encode())
                proc.stdin.flush()
            replies = [reader.read(60 + step / 50) for reader in readers]
            seconds = time.perf_counter() - start
            load_cpu = sum(reply["cpu"] for reply in replies)
            server_cpu = cpu_seconds(server.pid) - cpu0
            held = target
            time.sleep(0.5)  # let the last handshakes' garbage settle
            rss = server.rss_kib()
            stages.append(
                dict(
                    peers=target,
                    per_second=step / seconds,
                    server_cpu_ms_per_peer=server_cpu / step * 1e3,
                    load_cpu_ms_per_peer=load_cpu / step * 1e3,
                    rss_kib=rss,
                    kib_per_peer=(rss - rss0) / target,
                )
            )
        for proc in procs:
            proc.stdin.write(b"quit\n")
            proc.stdin.flush()
        for proc in procs:
            proc.wait(60)
        return {"rss0_kib": rss0, "stages": stages}
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        server.stop()


def bench_circuits(mode: dict) -> dict:
    server_cpu, load_cpu = pinning()
    server = Server("ours", server_cpu)
    try:
        count = mode["circuits"]
        return loadgen(
            dict(
                command="circuits",
                target=server.info,
                count=count,
                size=CIRCUIT_MESSAGE,
                seconds=mode["circuit_seconds"],
                cpu=load_cpu,
            ),
            150 + count * 0.05 + mode["circuit_seconds"],  # setup, warm-up (<= 30 s), run
        )
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="darkswap relay benchmarks (loopback only)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--smoke", action="store_true", help="tiny run, a few seconds (CI)")
    group.add_argument("--quick", action="store_true", help="short run, well under a minute")
    parser.add_argument("--json", help="also write the raw results to this file")
    parser.add_argument(
        "--hog", action="store_true", help="a busy loop on the load generator's core"
    )
    parser.add_argument("--circuits", type=int, help="concurrent circuits (default: the mode's)")
    parser.add_argument(
        "--circuit-seconds", type=float, help="many circuits: measured seconds (default: mode's)"
    )
    parser.add_argument(
        "--only",
        help=f"comma-separated parts to run (default: all): {', '.join(PARTS)}",
        type=lambda text: [part for part in text.split(",") if part],
        default=list(PARTS),
    )
    args = parser.parse_args()
    if unknown := set(args.only) - set(PARTS):
        parser.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    mode_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    mode = dict(MODES[mode_name])
    if args.circuits:
        mode["circuits"] = args.circuits
    if args.circuit_seconds:
        mode["circuit_seconds"] = args.circuit_seconds
    # A server holds one descriptor per peer; its hard RLIMIT_NOFILE (which only
    # CAP_SYS_RESOURCE may raise) caps the peer count. Keep a margin for the rest.
    fd_cap = resource.getrlimit(resource.RLIMIT_NOFILE)[1] - FD_MARGIN
    if fd_cap > 0 and max(mode["peers"]) > fd_cap:
        mode["peers"] = tuple(min(count, fd_cap) for count in mode["peers"])
    started = time.perf_counter()
    results: dict = {"loadavg": loadavg(), "hog": args.hog}
    hog = start_hog(pinning()[1] or 0) if args.hog else None
    try:
        if "throughput" in args.only:
            results.update(bench_throughput(mode))
        if "latency" in args.only:
            results.update(bench_latency(mode))
        if "registration" in args.only:
            results["idle"] = {
                "ours": bench_idle_peers("ours", mode, first_ip=2),
                "bare": bench_idle_peers("bare", mode, first_ip=2 + mode["reg_procs"]),
            }
        if "circuits" in args.only:
            results["circuits"] = bench_circuits(mode)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f)
    print(report(results, mode_name, mode))
    print(f"\n(total {time.perf_counter() - started:.0f}s)")


if __name__ == "__main__":
    main()
