"""Registration benchmarks: relay and SDK CPU per registration, re-registration after a restart.

Run: python benchmarks/bench_registration.py [--smoke | --quick] [--baseline TREE]

Every server runs in its own process: the relay as ``python -m relay`` (auth
``signature``), the baselines as bare WebSocket servers that accept and hold idle
connections (trio-websocket, as in bench_relay.py, and one on darkswap_trio.websocket).
The load runs in other processes (benchmarks/_registration_peers.py) with the SDK's own
client code; CPU comes from /proc/PID/stat (server) and process_time (load).

  cpu       N peers register, 32 at a time, with open_relay_session (the handshake
            only); the bare servers get N plain WebSocket connections from the SDK's
            WebSocket client. Relay CPU per registration vs per bare accept, SDK CPU
            per registration. Kinds interleaved, ``runs`` rounds, medians [min-max].
  restart   N peers, each a RelayManager (the SDK's reconnect backoff and jitter), in
            two load processes; once all are connected the relay is killed (SIGKILL)
            and started again on the same port with the same key; the row is the time
            from the kill until every peer is registered again (and when half and 90%
            were: the SDK's first retry after a lost session waits 1-5 s, jittered).
  restart, protocol-level generator
            the same kill and restart with N peers of benchmarks/_register_loadgen.py
            (non-blocking sockets; each peer redials as soon as its connection ends and
            registers with the one round trip handshake, retrying a refused connect after
            50 ms). It skips what an SDK peer does besides the wire: the backoff timers,
            the first Ping, the session's tasks and objects; the relay does the same
            work (TCP accept, upgrade, Ed25519 verify, its own signature, Registered).

When this checkout has libsodium (the fast-crypto extra, darkswap_trio/proto/_ed25519.py)
the CPU rows also run it with OpenSSL's Ed25519 (``DARKSWAP_ED25519=openssl``, relay and
SDK): the figures of an install without the extra.

``--baseline TREE`` also runs relay and SDK from another checkout (e.g. /work/main
before this change) in the same rounds: the "before" columns.

The relay's per-address limits are raised (every peer comes from 127.0.0.1, standing
for 10,000 addresses); its relay-wide limits (max_pending_connections 512,
handshakes_total, messages_total) stay at their defaults. Loopback only; every child
dies with this process.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PEERS = os.path.join(HERE, "_registration_peers.py")
LOADGEN = os.path.join(HERE, "_register_loadgen.py")
SERVERS = os.path.join(HERE, "_relay_servers.py")

from _bench_util import JsonLines, loadavg  # noqa: E402
from _relay_servers import cpu_seconds  # noqa: E402  (this directory is sys.path[0])

MODES = {
    "smoke": dict(cpu_peers=50, runs=1, restart_peers=100, procs=1),
    "quick": dict(cpu_peers=1000, runs=3, restart_peers=2000, procs=2),
    "full": dict(cpu_peers=2000, runs=5, restart_peers=10_000, procs=2),
}
CONCURRENCY = 32
RELAY_CONFIG = """
[limits]
max_sessions = 100000
max_sessions_per_ip = 0
max_pending_per_ip = 0
connections_per_ip_rate = 1e9
connections_per_ip_burst = 1000000000
messages_per_ip_rate = 1e9
messages_per_ip_burst = 1000000000
handshakes_per_ip_rate = 1e9
handshakes_per_ip_burst = 1000000000
messages_per_peer_rate = 1e9
messages_per_peer_burst = 1000000000
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# A row "without fast-crypto": relay and SDK with OpenSSL's Ed25519 (darkswap_trio/proto/
# _ed25519.py), when this checkout would use libsodium.
OPENSSL = {"DARKSWAP_ED25519": "openssl"}


def child_env(tree: str, extra: dict | None = None) -> dict:
    return {**os.environ, "PYTHONPATH": tree, **(extra or {})}


def popen(args: list[str], tree: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args],
        env=child_env(tree, env),
        cwd=tree,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        preexec_fn=lambda: __import__("ctypes").CDLL(None).prctl(1, signal.SIGKILL),
        **kwargs,
    )


class Relay:
    """``python -m relay`` from ``tree`` on ``port``, identity in ``key_file``."""

    def __init__(
        self, tree: str, port: int, key_file: str, config_file: str, env: dict | None = None
    ) -> None:
        self.tree, self.port, self.key_file, self.config_file = tree, port, key_file, config_file
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.multiaddr = ""

    def start(self) -> float:
        """Start and wait for READY; returns the seconds that took."""
        started = time.perf_counter()
        args = ["-m", "relay", "--config", self.config_file, "--host", "127.0.0.1"]
        args += ["--port", str(self.port), "--stun-port", "none", "--metrics-port", "none"]
        log = os.environ.get("BENCH_RELAY_LOG")  # a file for the relay's INFO log
        args += ["--key-file", self.key_file, "--log-level", "INFO" if log else "WARNING"]
        stderr = open(log, "a") if log else subprocess.DEVNULL  # noqa: SIM115
        self.proc = popen(args, self.tree, self.env, stderr=stderr)
        line = self.proc.stdout.readline().decode()
        if not line.startswith("READY"):
            raise RuntimeError(f"relay did not start: {line!r}")
        fields = dict(part.split("=", 1) for part in line.split()[1:])
        self.multiaddr = fields["multiaddr"]
        return time.perf_counter() - started

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def load(command: dict, tree: str, env: dict | None = None) -> tuple[subprocess.Popen, JsonLines]:
    proc = popen([PEERS, json.dumps(command)], tree, env)
    return proc, JsonLines(proc)


def finish(proc: subprocess.Popen) -> None:
    try:
        proc.stdin.close()
        proc.wait(timeout=30)
    except (subprocess.TimeoutExpired, BrokenPipeError):
        proc.kill()
        proc.wait()


def cpu_round(kind: str, tree: str, peers: int, workdir: str) -> dict:
    """One server of ``kind``, ``peers`` registrations: server and load CPU (ms each)."""
    server: subprocess.Popen | None = None
    relay: Relay | None = None
    env = OPENSSL if kind == "relay-openssl" else None
    try:
        if kind.startswith("relay"):
            key_file = os.path.join(workdir, "cpu.key")
            relay = Relay(tree, free_port(), key_file, config_path(workdir), env)
            relay.start()
            pid = relay.pid
            command = dict(command="peers", multiaddr=relay.multiaddr, manager=False)
        else:
            script = (
                [SERVERS, "bare"] if kind == "bare-tws" else [PEERS, '{"command":"serve-bare"}']
            )
            server = popen(script, ROOT)
            info = JsonLines(server).read(30)
            pid = info["pid"]
            command = dict(command="bare", url=f"ws://127.0.0.1:{info['port']}/")
        command.update(count=peers, concurrency=CONCURRENCY)
        time.sleep(0.3)
        cpu0 = cpu_seconds(pid)
        proc, reader = load(command, tree if kind.startswith("relay") else ROOT, env)
        reply = reader.read(120 + peers / 20)
        server_cpu = cpu_seconds(pid) - cpu0
        finish(proc)
        return {
            "server_ms": server_cpu / peers * 1000,
            "client_ms": reply["cpu"] / peers * 1000,
            "client_gc_ms": reply.get("gc", 0.0) / peers * 1000,
            "seconds": reply["seconds"],
        }
    finally:
        if relay is not None:
            relay.kill()
        if server is not None:
            server.kill()
            server.wait()


def fast_crypto(tree: str) -> bool:
    """Whether ``tree`` signs and verifies with libsodium here (the fast-crypto extra)."""
    code = "from darkswap_trio.proto import _ed25519; print(_ed25519.BACKEND)"
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], env=child_env(tree), capture_output=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        return False
    return out.stdout.strip() == b"libsodium"


def config_path(workdir: str) -> str:
    path = os.path.join(workdir, "relay.toml")
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write(RELAY_CONFIG)
    return path


def restart_run(tree: str, peers: int, procs: int, workdir: str) -> dict:
    """N RelayManager peers; kill the relay, start it again; seconds until all are back."""
    relay = Relay(tree, free_port(), os.path.join(workdir, "restart.key"), config_path(workdir))
    relay.start()
    loads = []
    try:
        shares = [peers // procs + (1 if i < peers % procs else 0) for i in range(procs)]
        for share in shares:
            command = dict(
                command="peers", multiaddr=relay.multiaddr, count=share, concurrency=CONCURRENCY
            )
            loads.append(load(command, tree))
        first = [reader.read(300 + peers / 10) for _, reader in loads]
        time.sleep(1.0)  # let the first Pings settle
        killed = time.time()
        relay.kill()
        ready_seconds = relay.start()
        cpu0 = cpu_seconds(relay.pid)
        back = [reader.read(300 + peers / 10) for _, reader in loads]
        relay_cpu = cpu_seconds(relay.pid) - cpu0
        back_count = sum(b["back"] for b in back)
        return {
            "back": back_count,
            "failed": sum(b["failed"] for b in back),
            "first_registration_s": max(r["seconds"] for r in first),
            "first_registration_cpu_ms": sum(r["cpu"] for r in first) / peers * 1000,
            "restart_ready_s": ready_seconds,
            "first_back_s": min(b["first_back"] for b in back) - killed,
            "all_back_s": max(b["last_back"] for b in back) - killed,
            "half_back_s": max(b["half_back"] or killed for b in back) - killed,
            "p90_back_s": max(b["p90_back"] or killed for b in back) - killed,
            "client_cpu_ms": sum(b["cpu"] for b in back) / max(back_count, 1) * 1000,
            "client_gc_ms": sum(b["gc"] for b in back) / max(back_count, 1) * 1000,
            "relay_cpu_ms": relay_cpu / max(back_count, 1) * 1000,
        }
    finally:
        for proc, _ in loads:
            finish(proc)
        relay.kill()


def restart_loadgen_run(tree: str, peers: int, procs: int, workdir: str) -> dict:
    """The restart row with the protocol-level generator (module docstring)."""
    relay = Relay(tree, free_port(), os.path.join(workdir, "restart.key"), config_path(workdir))
    relay.start()
    loads: list[tuple[subprocess.Popen, JsonLines]] = []
    try:
        relay_id = relay.multiaddr.rsplit("/", 1)[1]
        shares = [peers // procs + (1 if i < peers % procs else 0) for i in range(procs)]
        for share in shares:
            command = dict(
                host="127.0.0.1", port=relay.port, path="/signaling", relay_peer_id=relay_id,
                local_ip="127.0.0.1", concurrency=CONCURRENCY, max_peers=share,
            )  # fmt: skip
            proc = popen([LOADGEN, json.dumps(command)], tree)
            loads.append((proc, JsonLines(proc)))
        for (proc, reader), share in zip(loads, shares, strict=True):
            reader.read(120)  # keys made
            proc.stdin.write(f"open {share}\n".encode())
            proc.stdin.flush()
        first = [reader.read(120 + peers / 10) for _, reader in loads]
        for proc, _ in loads:
            proc.stdin.write(b"restart 120\n")
            proc.stdin.flush()
        time.sleep(0.5)
        killed = time.time()
        relay.kill()
        ready_seconds = relay.start()
        cpu0 = cpu_seconds(relay.pid)
        back = [reader.read(180) for _, reader in loads]
        relay_cpu = cpu_seconds(relay.pid) - cpu0
        back_count = sum(b["back"] for b in back)
        return {
            "back": back_count,
            "first_registration_s": max(r["seconds"] for r in first),
            "restart_ready_s": ready_seconds,
            "first_back_s": min(b["first_back"] or killed for b in back) - killed,
            "all_back_s": max(b["last_back"] or killed for b in back) - killed,
            "retries": sum(b["retries"] for b in back),
            "client_cpu_ms": sum(b["cpu"] for b in back) / max(back_count, 1) * 1000,
            "relay_cpu_ms": relay_cpu / max(back_count, 1) * 1000,
        }
    finally:
        for proc, _ in loads:
            proc.kill()
            proc.wait()
        relay.kill()


def start_round(tree: str, workdir: str) -> dict:
    """Start a relay (no STUN, no metrics, as in every row here): seconds and CPU seconds
    from exec to its READY line (imports, key, bind)."""
    relay = Relay(tree, free_port(), os.path.join(workdir, "start.key"), config_path(workdir))
    try:
        seconds = relay.start()
        return {"seconds": seconds, "cpu": cpu_seconds(relay.pid)}
    finally:
        relay.kill()


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--smoke", action="store_true")
    group.add_argument("--quick", action="store_true")
    parser.add_argument("--baseline", metavar="TREE", help="also run this checkout (before)")
    parser.add_argument("--no-restart", action="store_true", help="skip the restart rows")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU rows")
    parser.add_argument("--restart-peers", type=int, help="peers of the restart rows")
    parser.add_argument(
        "--restart-kinds",
        default="sdk,loadgen",
        help="restart rows to run: sdk (RelayManager peers), loadgen (protocol level)",
    )
    args = parser.parse_args()
    mode_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    mode = dict(MODES[mode_name])
    if args.restart_peers:
        mode["restart_peers"] = args.restart_peers
    trees = {"after": ROOT}
    if args.baseline:
        trees["before"] = os.path.abspath(args.baseline)
    load_start = loadavg()
    cpu: dict[str, list[dict]] = {}
    restart: dict[str, dict] = {}
    restart_lg: dict[str, dict] = {}
    restart_kinds = set(args.restart_kinds.split(","))
    start: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(mode["runs"]):
            for name, tree in trees.items():
                start.setdefault(name, []).append(start_round(tree, workdir))
        kinds = [(f"relay {name}", "relay", tree) for name, tree in trees.items()]
        if fast_crypto(ROOT):
            kinds.insert(1, ("relay after, OpenSSL Ed25519", "relay-openssl", ROOT))
        kinds += [("bare darkswap_trio.websocket", "bare-own", ROOT)]
        kinds += [("bare trio-websocket", "bare-tws", ROOT)]
        for round_ in range(0 if args.no_cpu else mode["runs"]):
            order = kinds[round_ % len(kinds) :] + kinds[: round_ % len(kinds)]
            for label, kind, tree in order:
                cpu.setdefault(label, []).append(cpu_round(kind, tree, mode["cpu_peers"], workdir))
        if not args.no_restart:
            for name, tree in trees.items():
                if "loadgen" in restart_kinds:
                    restart_lg[name] = restart_loadgen_run(
                        tree, mode["restart_peers"], mode["procs"], workdir
                    )
                    restart_lg[name]["load"] = loadavg()
                if "sdk" in restart_kinds:
                    restart[name] = restart_run(tree, mode["restart_peers"], mode["procs"], workdir)
                    restart[name]["load"] = loadavg()
    print(table(cpu, restart, restart_lg, start, mode, mode_name, load_start))


def table(
    cpu: dict,
    restart: dict,
    restart_lg: dict,
    start: dict,
    mode: dict,
    mode_name: str,
    load_start: str,
) -> str:
    rows = [
        "| benchmark | value | baseline (same run) | ratio | target |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, runs in start.items():
        rows.append(
            f"| relay {name}: start to READY (python -m relay, no STUN/metrics), s / CPU s | "
            f"{spread([r['seconds'] for r in runs])} / {spread([r['cpu'] for r in runs])} "
            f"| | | |"
        )
    med = {label: statistics.median(r["server_ms"] for r in runs) for label, runs in cpu.items()}
    for label in [k for k in cpu if k.startswith("relay")]:
        for bare in ("bare trio-websocket", "bare darkswap_trio.websocket"):
            rows.append(
                f"| {label}: server CPU per registration, ms | "
                f"{spread([r['server_ms'] for r in cpu[label]])} | {bare} accept "
                f"{spread([r['server_ms'] for r in cpu[bare]])} | "
                f"{med[label] / med[bare]:.2f}x | <= 1.0x (trio-websocket) |"
            )
    for label in [k for k in cpu if k.startswith("relay")]:
        rows.append(
            f"| {label}: SDK client CPU per registration (open_relay_session), ms | "
            f"{spread([r['client_ms'] for r in cpu[label]])} (of which the load process's "
            f"cyclic GC {spread([r['client_gc_ms'] for r in cpu[label]])}) | SDK WebSocket "
            "client alone "
            f"{spread([r['client_ms'] for r in cpu['bare darkswap_trio.websocket']])} | | <= 1 ms |"
        )
    for name, r in restart.items():
        peers = mode["restart_peers"]
        everyone = (
            "all" if r["back"] == peers else f"{r['back']:,} of {peers:,} ({r['failed']} Failed)"
        )
        rows.append(
            f"| relay {name}: {peers:,} RelayManager peers, kill -9 + restart: {everyone} "
            f"registered again, s | {r['all_back_s']:.1f} (first {r['first_back_s']:.1f}, half "
            f"{r['half_back_s']:.1f}, 90% {r['p90_back_s']:.1f}; relay READY after "
            f"{r['restart_ready_s']:.1f}; first registration of all took "
            f"{r['first_registration_s']:.1f}; load {r['load']}) | | | <= 10 s |"
        )
        rows.append(
            f"| relay {name}: re-registration CPU per peer, ms, relay / SDK (RelayManager, incl. first Ping) | "
            f"{r['relay_cpu_ms']:.2f} / {r['client_cpu_ms']:.2f} (SDK's cyclic GC "
            f"{r['client_gc_ms']:.2f} with the connected peers frozen; first registration SDK "
            f"{r['first_registration_cpu_ms']:.2f}) | | | |"
        )
    for name, r in restart_lg.items():
        peers = mode["restart_peers"]
        everyone = "all" if r["back"] == peers else f"{r['back']:,} of {peers:,}"
        rows.append(
            f"| relay {name}: {peers:,} protocol-level peers (_register_loadgen.py: no backoff, "
            f"no Ping, no SDK session), kill -9 + restart: {everyone} registered again, s | "
            f"{r['all_back_s']:.1f} (first {r['first_back_s']:.1f}; relay READY after "
            f"{r['restart_ready_s']:.1f}; {r['retries']} retried attempts; load {r['load']}) "
            f"| | | <= 10 s |"
        )
        rows.append(
            f"| relay {name}: re-registration CPU per peer, ms, relay / generator | "
            f"{r['relay_cpu_ms']:.2f} / {r['client_cpu_ms']:.2f} (first registration of all "
            f"took {r['first_registration_s']:.1f} s) | | | |"
        )
    rows.append(
        f"\nMode {mode_name}: {mode['cpu_peers']} registrations x {mode['runs']} rounds per kind "
        f"(32 in flight), medians [min-max]; restart with {mode['restart_peers']:,} peers in "
        f"{mode['procs']} load processes; Ed25519 of this checkout: "
        f"{'libsodium' if fast_crypto(ROOT) else 'OpenSSL'}. Load average (1 min) at start {load_start}, at end "
        f"{loadavg()}; {os.cpu_count()} CPUs shared with whatever else runs."
    )
    return "\n".join(rows)


if __name__ == "__main__":
    main()
