"""Relay benchmarks: our relay against baselines run in the same process tree, on loopback.

Run: python benchmarks/bench_relay.py [--smoke | --quick] [--hog] [--json FILE]

Every server under test runs in its own process (benchmarks/_relay_servers.py), the
load runs in other processes (benchmarks/_relay_loadgen.py: asyncio + uvloop +
``websockets``, the fast client), so server RSS and CPU are measured from /proc and
the server never shares a core with its load while throughput is measured.

  throughput   64 KiB messages through one circuit: ours vs a raw trio TCP splice relay
               and vs a relay on ``websockets`` + uvloop. Server pinned to CPU 0, load to
               CPU 1; runs interleaved across servers; median [min-max].
  latency      100-byte round trip A -> relay -> B -> relay -> A (unpinned), p50/p99 per
               run; ours vs the websockets relay, the splice relay and a raw trio TCP echo.
  open         RelayRequest -> RelayResponse on registered sessions (p50/p99).
  registration authenticated registrations/s (Register, Challenge, Authenticate,
               Registered) vs WebSocket connections/s to a bare trio-websocket server,
               then server RSS per idle peer at two peer counts, same comparison.
  circuits     many concurrent circuits on one relay: aggregate MB/s and fairness
               (slowest circuit's bytes / median circuit's bytes).

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
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SERVERS = os.path.join(HERE, "_relay_servers.py")
LOADGEN = os.path.join(HERE, "_relay_loadgen.py")
MiB = 1024 * 1024

from _bench_util import (  # noqa: E402  (this directory is sys.path[0])
    JsonLines,
    loadavg,
    mean_spread,
    percentile,
    ratio,
    spread,
    start_hog,
)
from _relay_servers import cpu_seconds, rss_kib  # noqa: E402

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
        circuit_seconds=2.0,
    ),
    "full": dict(
        tp_bytes=256 * MiB,
        runs=7,
        rtt_samples=1000,
        open_samples=500,
        peers=(5000, 20000),
        reg_procs=2,
        circuits=2000,
        circuit_seconds=8.0,
    ),
}
MESSAGE = 64 * 1024  # throughput write size
CIRCUIT_MESSAGE = 16 * 1024  # many-circuits write size: enough frames per circuit to rank them
RTT_SIZE = 100
REGISTER_CONCURRENCY = 32  # handshakes in flight per load process
WINDOW_EXPERIMENT = 256 * 1024  # "ours_window": the fixed window shipped before adaptive ones
FD_MARGIN = 100  # descriptors a server needs besides its peers' sockets
SERVER_CPU, LOAD_CPU = 0, 1
LABELS = {
    "splice": "raw trio TCP splice",
    "wsrelay": "websockets+uvloop relay",
    "echo": "raw trio TCP echo, no relay hop",
}


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


def bench_throughput_and_latency(mode: dict) -> dict:
    server_cpu, load_cpu = pinning()
    servers = {kind: Server(kind, server_cpu) for kind in ("ours", "wsrelay", "splice")}
    # Experiment: the same relay with a 4x larger flow-control window than the default.
    servers["ours_window"] = Server("ours", server_cpu, "--window", str(WINDOW_EXPERIMENT))
    servers["echo"] = Server("echo", None)
    try:
        targets = {k: s.info for k, s in servers.items() if k != "echo"}
        budget = 60 + mode["runs"] * 4 * mode["tp_bytes"] / (20 * MiB)
        throughput = loadgen(
            dict(
                command="throughput",
                targets=targets,
                bytes=mode["tp_bytes"],
                size=MESSAGE,
                runs=mode["runs"],
                cpu=load_cpu,
            ),
            budget,
        )
        for server in servers.values():
            server.unpin()
        rtt_targets = {k: s.info for k, s in servers.items() if k != "ours_window"}
        rtt = loadgen(
            dict(
                command="rtt",
                targets=rtt_targets,
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
    return {
        "throughput": throughput,
        "rtt": rtt,
        "open": opened["open_us"],
        "open_client_cpu_us": opened["client_cpu_us"],
    }


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
            120 + count * 0.05 + mode["circuit_seconds"],
        )
    finally:
        server.stop()


# -- report ------------------------------------------------------------------------------


def report(results: dict, mode_name: str, mode: dict) -> str:
    rows: list[tuple[str, ...]] = []

    def row(name, ours, base, ratio, target="", met=None, load="-"):
        met_text = "" if met is None else ("yes" if met else "**NO**")
        rows.append((name, ours, base, ratio, target, met_text, load))

    def med(values: list[float], fmt: str) -> str:
        return fmt.format(statistics.median(values))

    tp = results["throughput"]
    tp_load = {k: med(v["client_cpu"], "{:.2f}") for k, v in tp.items()}
    ours_mb = statistics.median(tp["ours"]["mb_per_s"])
    for base in ("splice", "wsrelay"):
        label = LABELS[base]
        base_mb = statistics.median(tp[base]["mb_per_s"])
        row(
            f"circuit throughput, 64 KiB writes, MB/s (vs {label})",
            spread(tp["ours"]["mb_per_s"]),
            spread(tp[base]["mb_per_s"]),
            ratio(ours_mb, base_mb),
            ">= 1.0 vs websockets relay" if base == "wsrelay" else "",
            ours_mb >= base_mb if base == "wsrelay" else None,
            f"{tp_load['ours']} / {tp_load[base]} cores",
        )

    if "ours_window" in tp:
        fixed = tp["ours_window"]["mb_per_s"]
        row(
            f"before: ours with a fixed {WINDOW_EXPERIMENT // 1024} KiB circuit window, MB/s "
            "(vs websockets+uvloop relay)",
            spread(fixed),
            spread(tp["wsrelay"]["mb_per_s"]),
            ratio(statistics.median(fixed), statistics.median(tp["wsrelay"]["mb_per_s"])),
            load=f"{tp_load['ours_window']} / {tp_load['wsrelay']} cores",
        )
    cpu_per_gb = {
        k: [c / m * 1e3 for c, m in zip(v["server_cpu"], v["mb_per_s"], strict=True)]
        for k, v in tp.items()
    }  # CPU-s/s over MB/s: CPU seconds per GB relayed
    ours_cpu = statistics.fmean(cpu_per_gb["ours"])
    for base in ("wsrelay", "splice"):
        base_cpu = statistics.fmean(cpu_per_gb[base])
        row(
            f"server CPU per GB relayed (64 KiB writes), s, mean (vs {LABELS[base]})",
            mean_spread(cpu_per_gb["ours"], "{:.2f}"),
            mean_spread(cpu_per_gb[base], "{:.2f}"),
            ratio(ours_cpu, base_cpu),
            load=f"{tp_load['ours']} / {tp_load[base]} cores",
        )

    rtt = results["rtt"]["samples"]
    rtt_cpu = results["rtt"]["server_cpu_us_per_message"]
    rtt_load = {k: med(v, "{:.0f}") for k, v in results["rtt"]["client_cpu_us_per_message"].items()}
    p50 = {k: [percentile(run, 0.5) for run in runs] for k, runs in rtt.items()}
    p99 = {k: [percentile(run, 0.99) for run in runs] for k, runs in rtt.items()}
    ours50 = statistics.median(p50["ours"])
    for base in ("wsrelay", "splice", "echo"):
        label = LABELS[base]
        base50 = statistics.median(p50[base])
        target = "<= 1.0 vs websockets relay" if base == "wsrelay" else ""
        row(
            f"RTT 100 B p50, us (vs {label})",
            spread(p50["ours"]),
            spread(p50[base]),
            ratio(ours50, base50),
            target,
            ours50 <= base50 if base == "wsrelay" else None,
            f"{rtt_load['ours']} / {rtt_load[base]} us/msg",
        )
    ours99, ws99 = statistics.median(p99["ours"]), statistics.median(p99["wsrelay"])
    row(
        "RTT 100 B p99, us (vs websockets+uvloop relay)",
        spread(p99["ours"]),
        spread(p99["wsrelay"]),
        ratio(ours99, ws99),
        load=f"{rtt_load['ours']} / {rtt_load['wsrelay']} us/msg",
    )
    ours_msg = statistics.fmean(rtt_cpu["ours"])
    for base in ("wsrelay", "splice"):
        base_msg = statistics.fmean(rtt_cpu[base])
        row(
            f"server CPU per relayed 100 B message, us, mean (vs {LABELS[base]})",
            mean_spread(rtt_cpu["ours"], "{:.0f}"),
            mean_spread(rtt_cpu[base], "{:.0f}"),
            ratio(ours_msg, base_msg),
            load=f"{rtt_load['ours']} / {rtt_load[base]} us/msg",
        )

    opened = results["open"]
    row(
        "circuit open (RelayRequest -> RelayResponse), us p50 / p99",
        f"{percentile(opened, 0.5):.0f} / {percentile(opened, 0.99):.0f}",
        "-",
        "-",
        load=f"{results.get('open_client_cpu_us', 0):.0f} us/open",
    )

    ours_idle, bare_idle = results["idle"]["ours"], results["idle"]["bare"]
    first = ours_idle["stages"][0]["peers"]
    o_rate, b_rate = ours_idle["stages"][0]["per_second"], bare_idle["stages"][0]["per_second"]
    reg_load = (
        f"{ours_idle['stages'][0]['load_cpu_ms_per_peer']:.2f} / "
        f"{bare_idle['stages'][0]['load_cpu_ms_per_peer']:.2f} ms/peer"
    )
    row(
        f"registrations/s, first {first} (vs bare trio-websocket connections/s)",
        f"{o_rate:.0f}",
        f"{b_rate:.0f}",
        ratio(o_rate, b_rate),
        ">= 1.0",
        o_rate >= b_rate,
        reg_load,
    )
    o_ms = ours_idle["stages"][0]["server_cpu_ms_per_peer"]
    b_ms = bare_idle["stages"][0]["server_cpu_ms_per_peer"]
    row(
        "server CPU per registration, ms (vs bare trio-websocket connection)",
        f"{o_ms:.2f}",
        f"{b_ms:.2f}",
        ratio(o_ms, b_ms),
        "<= 1.0 (capacity)",
        o_ms <= b_ms,
        reg_load,
    )
    for o_stage, b_stage in zip(ours_idle["stages"], bare_idle["stages"], strict=True):
        o, b = o_stage["kib_per_peer"], b_stage["kib_per_peer"]
        row(
            f"server RSS per idle peer at {o_stage['peers']}, KiB (vs bare trio-websocket)",
            f"{o:.1f}",
            f"{b:.1f}",
            ratio(o, b),
            "<= 1.0",
            o <= b,
            f"{o_stage['load_cpu_ms_per_peer']:.2f} / {b_stage['load_cpu_ms_per_peer']:.2f} "
            "ms/peer",
        )

    circuits = results["circuits"]
    per_circuit = circuits["bytes"]
    median_bytes = statistics.median(per_circuit)
    circuits_load = (
        f"{circuits.get('client_cpu', 0):.2f} cores (server {circuits['server_cpu']:.2f})"
    )
    row(
        f"{len(per_circuit)} concurrent circuits, 16 KiB writes: aggregate MB/s",
        f"{sum(per_circuit) / circuits['seconds'] / 1e6:.0f}",
        "-",
        "-",
        load=circuits_load,
    )
    fairness = min(per_circuit) / median_bytes if median_bytes else 0.0
    row(
        f"{len(per_circuit)} circuits fairness: slowest / median circuit (fastest / median)",
        f"{fairness:.2f} ({max(per_circuit) / median_bytes:.2f})"
        if median_bytes
        else "0 (no data)",
        "-",
        "-",
        ">= 0.7",
        fairness >= 0.7,
        circuits_load,
    )

    header = (
        "| Benchmark | ours | baseline | ours / baseline | target | met | load generator CPU "
        "(ours / baseline) |\n| --- | --- | --- | --- | --- | --- | --- |\n"
    )
    lines = [header + "\n".join("| " + " | ".join(r) + " |" for r in rows)]
    cpu = {
        k: (statistics.median(v["server_cpu"]), statistics.median(v["client_cpu"]))
        for k, v in tp.items()
    }
    lines.append(
        "\nThroughput CPU use (median, fraction of one core), server / load generator: "
        + ", ".join(f"{k} {s:.2f} / {c:.2f}" for k, (s, c) in cpu.items())
        + f". Many circuits: server {circuits['server_cpu']:.2f}, setup "
        f"{circuits['setup_seconds']:.1f}s."
        + "\nRegistration CPU per peer, ms, server / load generator: "
        + ", ".join(
            f"{k} {v['stages'][0]['server_cpu_ms_per_peer']:.2f} / "
            f"{v['stages'][0]['load_cpu_ms_per_peer']:.2f}"
            for k, v in results["idle"].items()
        )
        + f".\nMode {mode_name}: throughput {mode['tp_bytes'] // MiB} MiB x {mode['runs']} runs, "
        f"RTT {mode['rtt_samples']} samples x {mode['runs']} runs, medians [min-max]; "
        f"load average (1 min) at start {results['loadavg']}, at end {loadavg()}; "
        f"{os.cpu_count()} CPUs shared with whatever else runs; CPU hog on the load "
        f"generator's core: {'yes' if results.get('hog') else 'no'}."
        + f"\nLimits in force: {limits_in_force()}."
    )
    return "\n".join(lines)


def limits_in_force() -> str:
    """The flow-control limits of the relay under test (every abuse limit is lifted)."""
    from _relay_servers import benchmark_relay_config

    lim = benchmark_relay_config().limits
    names = ("circuit_window", "circuit_window_min", "circuit_window_budget",
             "circuit_max_data_frame", "socket_receive_buffer", "bytes_per_peer_rate",
             "circuit_bytes", "circuit_bandwidth")  # fmt: skip
    shown = ", ".join(f"{name}={getattr(lim, name):g}" for name in names)
    return f"{shown} (0 = unlimited; all other abuse limits lifted)"


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
    args = parser.parse_args()
    mode_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    mode = dict(MODES[mode_name])
    if args.circuits:
        mode["circuits"] = args.circuits
    # A server holds one descriptor per peer; its hard RLIMIT_NOFILE (which only
    # CAP_SYS_RESOURCE may raise) caps the peer count. Keep a margin for the rest.
    fd_cap = resource.getrlimit(resource.RLIMIT_NOFILE)[1] - FD_MARGIN
    if fd_cap > 0 and max(mode["peers"]) > fd_cap:
        mode["peers"] = tuple(min(count, fd_cap) for count in mode["peers"])
    started = time.perf_counter()
    results: dict = {"loadavg": loadavg(), "hog": args.hog}
    hog = start_hog(pinning()[1] or 0) if args.hog else None
    try:
        results.update(bench_throughput_and_latency(mode))
        results["idle"] = {
            "ours": bench_idle_peers("ours", mode, first_ip=2),
            "bare": bench_idle_peers("bare", mode, first_ip=2 + mode["reg_procs"]),
        }
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
