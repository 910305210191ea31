"""SDK-to-SDK through the standalone relay, against websockets clients through a websockets relay.

Run: python benchmarks/bench_sdk_relayed.py [--quick | --full] [--hog] [--json FILE]

Five processes per run, all on loopback: the relay (``python -m relay``, this checkout),
the websockets+uvloop relay of bench_relay.py, and for each kind of end a driver and a
responder process (benchmarks/_sdk_peer.py), which use only public API:

  circuit   RelayManager.open_circuit / accept_circuit: a RelayCircuit (trio channel)
  link      P2PNetwork with enable_direct=False, connect_to_peer / accept_peer: a PeerLink
  ws        the baseline: ``websockets`` clients (asyncio + uvloop, send/recv) through the
            websockets+uvloop relay, which pairs two connections on the same path

Measured: throughput of 64 KiB messages (driver -> responder, timed until the responder
has counted every byte and answered) and 100 B round trips (driver -> responder ->
driver) with p50/p99. Runs are interleaved (circuit, link, ws, circuit, ...) and the
figures are medians of the runs [min-max]; ratios are against ws in the same run. CPU of
every process (driver, responder, relay) is read from /proc around each run.

``--hog`` runs a busy loop pinned to the last CPU for the whole run (a loaded machine).
Processes are not pinned. Nothing leaves 127.0.0.1; children die with this process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PEER = os.path.join(HERE, "_sdk_peer.py")
SERVERS = os.path.join(HERE, "_relay_servers.py")
MiB = 1024 * 1024
MESSAGE = 64 * 1024
RTT_SIZE = 100
KINDS = ("circuit", "link", "ws")
LABELS = {
    "circuit": "RelayCircuit (RelayManager)",
    "link": "PeerLink (P2PNetwork, direct disabled)",
    "ws": "websockets clients, websockets+uvloop relay",
}
MODES = {
    "quick": dict(tp_bytes=4 * MiB, runs=2, rtt_samples=50),
    "default": dict(tp_bytes=64 * MiB, runs=5, rtt_samples=1000),
    "full": dict(tp_bytes=128 * MiB, runs=7, rtt_samples=2000),
}
# Relay limits lifted for the benchmark (everything else is the shipped default): the
# per-session pacing and the per-circuit byte cap would otherwise measure themselves.
LIFTED_LIMITS = {"bytes_per_peer_rate": 0.0, "circuit_bytes": 0}

sys.path.insert(0, HERE)
from _bench_util import JsonLines, loadavg, percentile, ratio, spread, start_hog  # noqa: E402
from _relay_servers import cpu_seconds  # noqa: E402

if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


class Process:
    def __init__(self, args: list[str], *, stdin: bool = False) -> None:
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            env=child_env(),
            cwd=ROOT,
        )
        self.lines = JsonLines(self.proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def command(self, line: str, timeout: float) -> dict:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        return self.lines.read(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def relay_limits() -> dict:
    """The limits the relay runs with: shipped defaults, LIFTED_LIMITS applied."""
    from relay import RelayConfig

    limits = RelayConfig().limits
    shown = (
        "bytes_per_peer_rate",
        "bytes_per_peer_burst",
        "circuit_bytes",
        "circuit_duration",
        "circuit_window",
        "circuit_max_data_frame",
        "socket_receive_buffer",
        "messages_per_peer_rate",
    )
    out = {name: getattr(limits, name) for name in shown}
    out.update(LIFTED_LIMITS)
    return out


def start_our_relay(config_dir: str) -> tuple[Process, str]:
    path = os.path.join(config_dir, "relay.toml")
    with open(path, "w") as f:
        f.write("[limits]\n" + "".join(f"{k} = {v!r}\n" for k, v in LIFTED_LIMITS.items()))
    args = [sys.executable, "-m", "relay", "--config", path, "--host", "127.0.0.1"]
    args += ["--port", "0", "--stun-port", "none", "--metrics-port", "none"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=child_env(), cwd=ROOT)  # fmt: skip
    relay = Process.__new__(Process)
    relay.proc, relay.lines = proc, JsonLines(proc)
    line = proc.stdout.readline().decode()
    if not line.startswith("READY"):
        raise RuntimeError(f"relay did not start: {line!r}")
    fields = dict(word.split("=", 1) for word in line.split()[1:])
    return relay, fields["multiaddr"]


def start_ws_relay() -> tuple[Process, str]:
    relay = Process([sys.executable, SERVERS, "wsrelay"])
    info = relay.lines.read(30)
    return relay, f"ws://127.0.0.1:{info['port']}"


def start_pair(kind: str, target: str) -> tuple[Process, Process]:
    if kind == "ws":
        target = f"{target}/{uuid.uuid4().hex}"
    responder = Process([sys.executable, PEER, kind, "responder", target])
    peer_id = responder.lines.read(60)["peer_id"]
    args = [sys.executable, PEER, kind, "driver", target] + ([peer_id] if peer_id else [])
    driver = Process(args, stdin=True)
    driver.lines.read(60)
    return driver, responder


def measure(
    procs: dict[str, int], driver: Process, line: str, timeout: float
) -> tuple[dict, float, dict[str, float]]:
    """Run ``line`` on ``driver``: its answer, wall seconds, CPU seconds of each process."""
    before = {name: cpu_seconds(pid) for name, pid in procs.items()}
    start = time.perf_counter()
    answer = driver.command(line, timeout)
    wall = time.perf_counter() - start
    return answer, wall, {name: cpu_seconds(pid) - before[name] for name, pid in procs.items()}


def run(mode: dict, hog: bool) -> dict:
    results: dict = {"loadavg_start": loadavg(), "limits": relay_limits(), "hog": hog}
    hog_proc = start_hog((os.cpu_count() or 1) - 1) if hog else None
    started: list[Process] = []
    try:
        with tempfile.TemporaryDirectory() as config_dir:
            ours, multiaddr = start_our_relay(config_dir)
            started.append(ours)
            wsrelay, ws_url = start_ws_relay()
            started.append(wsrelay)
            relays = {"circuit": ours, "link": ours, "ws": wsrelay}
            pairs = {}
            for kind in KINDS:
                pairs[kind] = start_pair(kind, ws_url if kind == "ws" else multiaddr)
                started.extend(pairs[kind])
            tp = {k: {"mb_per_s": [], "cpu": [], "cpu_s_per_gb": []} for k in KINDS}
            rtt = {k: {"samples": [], "cpu_us": []} for k in KINDS}
            total = mode["tp_bytes"]
            for i in range(-1, mode["runs"]):  # run -1 warms every path up, not counted
                for kind in KINDS:
                    driver, responder = pairs[kind]
                    procs = {"driver": driver.pid, "responder": responder.pid,
                             "relay": relays[kind].pid}  # fmt: skip
                    nbytes = total // 8 if i < 0 else total
                    answer, wall, cpu = measure(
                        procs, driver, f"tp {nbytes} {MESSAGE}", 60 + nbytes / MiB
                    )
                    if i >= 0:
                        tp[kind]["mb_per_s"].append(nbytes / answer["seconds"] / 1e6)
                        tp[kind]["cpu"].append({k: v / wall for k, v in cpu.items()})
                        tp[kind]["cpu_s_per_gb"].append(
                            {k: v / nbytes * 1e9 for k, v in cpu.items()}
                        )
                for kind in KINDS:
                    driver, responder = pairs[kind]
                    procs = {"driver": driver.pid, "responder": responder.pid,
                             "relay": relays[kind].pid}  # fmt: skip
                    n = mode["rtt_samples"] // (5 if i < 0 else 1)
                    answer, wall, cpu = measure(procs, driver, f"rtt {n} {RTT_SIZE}", 60 + n * 0.01)
                    if i >= 0:
                        rtt[kind]["samples"].append(answer["samples"])
                        rtt[kind]["cpu_us"].append({k: v / n * 1e6 for k, v in cpu.items()})
            results.update(throughput=tp, rtt=rtt)
            for driver, _ in pairs.values():  # a clean end (profiles are written)
                driver.proc.stdin.close()
            for driver, responder in pairs.values():
                for proc in (driver, responder):
                    try:
                        proc.proc.wait(10)
                    except subprocess.TimeoutExpired:
                        pass
    finally:
        for proc in reversed(started):
            proc.stop()
        if hog_proc is not None:
            hog_proc.kill()
            hog_proc.wait()
    results["loadavg_end"] = loadavg()
    return results


def cpu_cell(runs: list[dict], fmt: str) -> str:
    """Median of each process's figure: driver / responder / relay."""
    return " / ".join(
        fmt.format(statistics.median(r[name] for r in runs))
        for name in ("driver", "responder", "relay")
    )


def report(results: dict, mode_name: str, mode: dict) -> str:
    tp, rtt = results["throughput"], results["rtt"]
    rows = []
    ws_mb = statistics.median(tp["ws"]["mb_per_s"])
    p50 = {k: [percentile(s, 0.5) for s in v["samples"]] for k, v in rtt.items()}
    p99 = {k: [percentile(s, 0.99) for s in v["samples"]] for k, v in rtt.items()}
    ws50, ws99 = statistics.median(p50["ws"]), statistics.median(p99["ws"])
    for kind in ("circuit", "link"):
        mb = statistics.median(tp[kind]["mb_per_s"])
        rows.append((f"{LABELS[kind]}: 64 KiB throughput, MB/s", spread(tp[kind]["mb_per_s"]),
                     spread(tp["ws"]["mb_per_s"]), ratio(mb, ws_mb), ">= 1.0",
                     "yes" if mb >= ws_mb else "**NO**"))  # fmt: skip
        ours50 = statistics.median(p50[kind])
        rows.append((f"{LABELS[kind]}: 100 B round trip p50, us", spread(p50[kind]),
                     spread(p50["ws"]), ratio(ours50, ws50), "<= 1.0",
                     "yes" if ours50 <= ws50 else "**NO**"))  # fmt: skip
        rows.append((f"{LABELS[kind]}: 100 B round trip p99, us", spread(p99[kind]),
                     spread(p99["ws"]), ratio(statistics.median(p99[kind]), ws99), "", ""))  # fmt: skip
    for kind in ("circuit", "link"):
        rows.append((f"{LABELS[kind]}: CPU during throughput, cores, driver / responder / relay",
                     cpu_cell(tp[kind]["cpu"], "{:.2f}"), cpu_cell(tp["ws"]["cpu"], "{:.2f}"),
                     "", "", ""))  # fmt: skip
        rows.append((f"{LABELS[kind]}: CPU per GB moved, s, driver / responder / relay",
                     cpu_cell(tp[kind]["cpu_s_per_gb"], "{:.2f}"),
                     cpu_cell(tp["ws"]["cpu_s_per_gb"], "{:.2f}"), "", "", ""))  # fmt: skip
        rows.append((f"{LABELS[kind]}: CPU per round trip, us, driver / responder / relay",
                     cpu_cell(rtt[kind]["cpu_us"], "{:.0f}"), cpu_cell(rtt["ws"]["cpu_us"], "{:.0f}"),
                     "", "", ""))  # fmt: skip
    header = (
        "| Benchmark | ours | baseline: websockets | ours / baseline | target | met |\n"
        "| --- | --- | --- | --- | --- | --- |\n"
    )
    table = header + "\n".join("| " + " | ".join(r) + " |" for r in rows)
    limits = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in results["limits"].items())  # fmt: skip
    return (
        f"{table}\n\nRelay limits in force (shipped defaults except "
        f"{', '.join(LIFTED_LIMITS)}, lifted; 0 = unlimited): {limits}. The websockets relay "
        f"has no limits. Mode {mode_name}: throughput {mode['tp_bytes'] // MiB} MiB x "
        f"{mode['runs']} runs, RTT {mode['rtt_samples']} samples x {mode['runs']} runs, "
        f"interleaved, medians [min-max]; CPU: medians over runs, fraction of one core "
        f"(throughput) or us per round trip. CPU hog on the last core: "
        f"{'yes' if results['hog'] else 'no'}. Load average (1 min) at start "
        f"{results['loadavg_start']}, at end {results['loadavg_end']}; "
        f"{os.cpu_count()} CPUs, processes unpinned."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="smoke test: a few seconds")
    group.add_argument("--full", action="store_true", help="longer runs, 7 of them")
    parser.add_argument("--hog", action="store_true", help="a busy loop on the last CPU")
    parser.add_argument("--json", help="also write the raw results to this file")
    args = parser.parse_args()
    mode_name = "quick" if args.quick else "full" if args.full else "default"
    mode = MODES[mode_name]
    started = time.perf_counter()
    results = run(mode, args.hog)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f)
    print(report(results, mode_name, mode))
    print(f"\n(total {time.perf_counter() - started:.0f}s)")


if __name__ == "__main__":
    main()
