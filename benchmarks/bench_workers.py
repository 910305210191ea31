"""Issue #15: ``darkswap-relay --workers 2`` against one relay process, same run.

Run: python benchmarks/bench_workers.py [--rounds 3] [--peers 2000] [--loaders 2]

Starts a private ``redis-server`` (unix socket). Each round runs, one after the other,
``python -m relay --workers 1`` and ``--workers 2`` (both cluster nodes on that Redis,
signature auth, benchmark limits raised) and registers ``--peers`` idle peers through
the signaling port with ``--loaders`` load processes (benchmarks/_register_loadgen.py:
non-blocking sockets and epoll, the one round trip registration of PROTOCOL.md 2.1.1,
32 handshakes in flight each). Figures:

  registrations/s   authenticated registrations (upgrade with the challenge header,
                    signed Register, Registered; the cluster claim in Redis) per second
  relay CPU         ms per registration, all relay processes together (/proc)
  generator CPU     ms per registration, the load processes (user + kernel: loopback TCP
                    is mostly charged to the sender)
  KiB per idle peer RSS growth of all relay processes / peers held
  ratio ceiling     what 2 cores allow: (2 cores / relay + generator + redis CPU per
                    registration with 2 workers) / the 1-worker rate
  ceiling, cores left by others
                    the same with the cores other jobs on the machine did not use
                    during the 2-worker runs (/proc/stat busy + steal minus ours)

The load processes share the machine's cores with the workers, so the 2-worker figure is
bounded by the ceiling row, not by 2x; a cheap generator (~0.2 ms per registration, most
of it the one Ed25519 signature and the kernel's TCP work) keeps that ceiling high. Other
jobs on the machine lower it further: the load average is printed next to every figure.
Per round: each worker's sessions held (its open sockets: how SO_REUSEPORT spread the
peers) and CPU seconds; other jobs' CPU and idle CPU (cores); the relay's sleeps
(voluntary context switches: event-loop passes that waited) and preemptions per
registration; Redis's reads (client round trips) and commands per registration.
``--pin-load CPU`` pins the load processes to one core (the workers stay free to use
both). Loopback only; everything is bounded and dies with this process.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LOADGEN = os.path.join(HERE, "_register_loadgen.py")
sys.path.insert(0, HERE)

from _relay_servers import cpu_seconds, rss_kib  # noqa: E402
from bench_relay import JsonLines, loadavg  # noqa: E402

LIMITS = """
[limits]
max_sessions = 19000
max_sessions_per_ip = 1000000
max_pending_per_ip = 0
max_pending_connections = 0
handshake_timeout = 120.0
idle_timeout = 0.0
connections_per_ip_rate = 1e9
connections_per_ip_burst = 1000000000
messages_per_peer_rate = 1e9
messages_per_peer_burst = 1000000000
messages_per_ip_rate = 0.0
handshakes_per_ip_rate = 0.0
messages_total_rate = 0.0
handshakes_total_rate = 0.0
abuse_penalty = 0.0
overload_lag = 0.0
limiter_table_size = 1000000
"""
CONCURRENCY = 32


def start_redis(directory: Path) -> tuple[subprocess.Popen, str]:
    sock = directory / "redis.sock"
    redis = subprocess.Popen(
        [
            shutil.which("redis-server") or "/usr/bin/redis-server",
            "--port",
            "0",
            "--unixsocket",
            str(sock),
            "--unixsocketperm",
            "700",
            "--save",
            "",
            "--appendonly",
            "no",
            "--logfile",
            "",
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not sock.exists():
        if time.monotonic() > deadline or redis.poll() is not None:
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)
    return redis, f"unix://{sock}"


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def ready_line(proc: subprocess.Popen, timeout: float) -> dict[str, str]:
    deadline, buffer = time.monotonic() + timeout, b""
    fd = proc.stdout.fileno()
    while b"\n" not in buffer:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            raise RuntimeError("the relay did not print READY")
        if select.select([fd], [], [], left)[0]:
            buffer += os.read(fd, 65536)
    line = buffer.split(b"\n", 1)[0].decode()
    return dict(item.split("=", 1) for item in line.split()[1:])


def redis_counts(url: str) -> tuple[int, int, dict[str, int]]:
    """Redis's reads processed (a read is one round trip of one client: a pipelined batch
    is one read, or a few when large), commands processed, calls per command, so far."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(url.removeprefix("unix://"))
        sock.sendall(b"INFO all\r\n")
        data = b""
        while b"\r\n" not in data:
            data += sock.recv(65536)
        head, data = data.split(b"\r\n", 1)
        size = int(head[1:])  # a bulk string: $<size>
        while len(data) < size:
            data += sock.recv(65536)
    info = data[:size].decode()
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    calls = {
        name.removeprefix("cmdstat_"): int(value.split(",")[0].removeprefix("calls="))
        for name, value in fields.items()
        if name.startswith("cmdstat_")
    }
    calls.pop("info", None)
    return int(fields["total_reads_processed"]), int(fields["total_commands_processed"]), calls


def machine_cpu() -> tuple[float, float, float]:
    """Seconds of (busy, idle, steal) summed over every CPU, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq, steal = fields[:8]
    busy = user + nice + system + irq + softirq
    return busy / ticks, (idle + iowait) / ticks, steal / ticks


def switches(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of ``pid``'s threads: a voluntary one is
    a wait for input (one event-loop pass that found nothing to do), an involuntary one
    a preemption (the core was wanted by another process)."""
    voluntary = involuntary = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches"):
                voluntary += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches"):
                involuntary += int(line.split()[1])
    return voluntary, involuntary


def socket_fds(pid: int) -> int:
    """Open sockets of ``pid``: with idle peers held, its share of the sessions."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except OSError:
            continue
    return count


def run(
    workers: int,
    config: Path,
    redis: tuple[int, str],
    peers: int,
    loaders: int,
    ip: int,
    pin_load: int | None = None,
) -> dict:
    redis_pid, redis_url = redis
    relay = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "relay",
            "--config",
            str(config),
            "--workers",
            str(workers),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--stun-port",
            "none",
            "--metrics-port",
            "none",
            "--cluster-redis",
            redis_url,
            "--log-level",
            "WARNING",
            "--node-id",
            f"bench{ip}",
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    loads: list[subprocess.Popen] = []
    try:
        ready = ready_line(relay, 60)
        pids = children(relay.pid) if workers > 1 else [relay.pid]
        assert len(pids) == workers, pids
        for i in range(loaders):
            command = dict(
                host="127.0.0.1",
                port=int(ready["signaling"]),
                path="/signaling",
                relay_peer_id=ready["peer_id"],
                local_ip=f"127.0.{ip}.{i + 1}",
                concurrency=CONCURRENCY,
                max_peers=peers // loaders + 1,
            )
            loads.append(
                subprocess.Popen(
                    [sys.executable, LOADGEN, json.dumps(command)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
            )
        if pin_load is not None:
            for proc in loads:
                os.sched_setaffinity(proc.pid, {pin_load})
        readers = [JsonLines(p) for p in loads]
        for reader in readers:
            reader.read(120)  # keys generated
        time.sleep(0.5)
        rss0 = sum(rss_kib(pid) for pid in pids)
        redis0 = cpu_seconds(redis_pid)
        fds0 = [socket_fds(pid) for pid in pids]
        each0 = [cpu_seconds(pid) for pid in pids]
        switches0 = [switches(pid) for pid in pids]
        redis_stats0 = redis_counts(redis_url)
        machine0 = machine_cpu()
        start = time.perf_counter()
        shares = [peers // loaders + (1 if i < peers % loaders else 0) for i in range(loaders)]
        for proc, share in zip(loads, shares, strict=True):
            proc.stdin.write(f"open {share}\n".encode())
            proc.stdin.flush()
        replies = [reader.read(120 + peers / 20) for reader in readers]
        seconds = time.perf_counter() - start
        machine = [b - a for a, b in zip(machine0, machine_cpu(), strict=True)]
        load = loadavg()
        each = [cpu_seconds(pid) - c for pid, c in zip(pids, each0, strict=True)]
        cpu = sum(each)
        held = [socket_fds(pid) - f for pid, f in zip(pids, fds0, strict=True)]
        switched = [
            (v - v0, i - i0)
            for (v, i), (v0, i0) in zip(map(switches, pids), switches0, strict=True)
        ]
        redis_cpu = cpu_seconds(redis_pid) - redis0
        redis_stats = redis_counts(redis_url)
        time.sleep(0.5)
        rss = [rss_kib(pid) for pid in pids]
        for proc in loads:
            proc.stdin.write(b"quit\n")
            proc.stdin.flush()
        for proc in loads:
            proc.wait(60)
        return dict(
            per_second=peers / seconds,
            cpu_ms=cpu / peers * 1e3,
            load_cpu_ms=sum(reply["cpu"] for reply in replies) / peers * 1e3,
            # CPU of everything else on the machine (other jobs), and idle, in cores.
            others_cores=(
                machine[0]
                - cpu
                - redis_cpu
                - sum(reply["cpu"] for reply in replies)
                + machine[2]  # stolen by the hypervisor: not ours either
            )
            / seconds,
            idle_cores=machine[1] / seconds,
            load_sys_ms=sum(reply["system"] for reply in replies) / peers * 1e3,
            redis_cpu_ms=redis_cpu / peers * 1e3,
            kib_per_peer=(sum(rss) - rss0) / peers,
            load=load,
            worker_cpu_s=[round(c, 2) for c in each],
            redis_reads=(redis_stats[0] - redis_stats0[0]) / peers,
            redis_commands=(redis_stats[1] - redis_stats0[1]) / peers,
            redis_calls={
                k: round((v - redis_stats0[2].get(k, 0)) / peers, 3)
                for k, v in redis_stats[2].items()
                if v != redis_stats0[2].get(k, 0)
            },
            worker_sessions=held,
            sleeps_per_reg=sum(v for v, _ in switched) / peers,
            preempted_per_reg=sum(i for _, i in switched) / peers,
        )
    finally:
        for proc in loads:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if relay.poll() is None:
            relay.send_signal(signal.SIGTERM)
            try:
                relay.wait(20)
            except subprocess.TimeoutExpired:
                relay.kill()
                relay.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peers", type=int, default=2000)
    parser.add_argument("--loaders", type=int, default=2)
    parser.add_argument(
        "--pin-load",
        type=int,
        metavar="CPU",
        help="pin the load processes to this CPU (the workers stay unpinned)",
    )
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="bw-", dir="/tmp"))
    redis, url = start_redis(directory)
    config = directory / "relay.toml"
    config.write_text(LIMITS)
    results: dict[int, list[dict]] = {1: [], 2: []}
    try:
        ip = 2
        for r in range(args.rounds):
            for workers in (1, 2):  # interleaved: the machine's load hits both alike
                result = run(
                    workers, config, (redis.pid, url), args.peers, args.loaders, ip, args.pin_load
                )
                ip += 1
                results[workers].append(result)
                print(
                    f"round {r + 1} workers={workers}: {result['per_second']:.0f} reg/s, "
                    f"relay {result['cpu_ms']:.2f} + generator {result['load_cpu_ms']:.2f} "
                    f"({result['load_sys_ms']:.2f} kernel) + redis {result['redis_cpu_ms']:.2f} "
                    f"ms CPU/reg, {result['kib_per_peer']:.1f} KiB/peer, "
                    f"load {result['load']}; per worker: sessions {result['worker_sessions']}, "
                    f"CPU s {result['worker_cpu_s']}; other jobs {result['others_cores']:.2f} "
                    f"cores, idle {result['idle_cores']:.2f}; relay sleeps "
                    f"{result['sleeps_per_reg']:.2f} and preemptions "
                    f"{result['preempted_per_reg']:.3f} per registration; Redis per registration: "
                    f"{result['redis_reads']:.3f} reads, {result['redis_commands']:.3f} commands {result['redis_calls']}",
                    flush=True,
                )
    finally:
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(directory, ignore_errors=True)
    print()
    print(f"{args.peers} idle peers, {args.loaders} load processes, {os.cpu_count()} cores")
    print(f"{'':34}{'1 worker':>12}{'2 workers':>12}{'ratio':>8}")
    for key, label, fmt in (
        ("per_second", "registrations/s (median)", "{:.0f}"),
        ("cpu_ms", "relay CPU ms per registration", "{:.2f}"),
        ("load_cpu_ms", "load generator CPU ms per reg.", "{:.2f}"),
        ("redis_cpu_ms", "redis-server CPU ms per reg.", "{:.2f}"),
        ("kib_per_peer", "relay KiB per idle peer", "{:.1f}"),
    ):
        one = statistics.median(r[key] for r in results[1])
        two = statistics.median(r[key] for r in results[2])
        ratio = f"{two / one:.2f}" if one else "-"  # CPU in 10 ms ticks: 0 on tiny runs
        print(f"{label:34}{fmt.format(one):>12}{fmt.format(two):>12}{ratio:>8}")
    one = statistics.median(r["per_second"] for r in results[1])
    spent = statistics.median(
        r["cpu_ms"] + r["load_cpu_ms"] + r["redis_cpu_ms"] for r in results[2]
    )
    ceiling = f"{2 * 1e3 / spent / one:.2f}" if spent else "-"
    print(f"{'ratio ceiling (2 cores)':34}{'':>24}{ceiling:>8}")
    # What the cores left by other jobs during the 2-worker runs allow (same formula).
    left = 2 - statistics.median(r["others_cores"] for r in results[2])
    print(
        f"{'ceiling, cores left by others':34}{'':>24}"
        f"{left * 1e3 / spent / one if spent else 0:>8.2f}  ({left:.2f} cores left)"
    )
    paired = [
        f"{two['per_second'] / one['per_second']:.2f} (load {one['load']}/{two['load']})"
        for one, two in zip(results[1], results[2], strict=True)
    ]
    print(f"registrations/s ratio per round (1-min load average): {', '.join(paired)}")


if __name__ == "__main__":
    main()
