"""Issue #10 item 7 at full scale: honest traffic through the relay with and without abuse.

Run: python benchmarks/bench_abuse.py [--seconds 20] [--phases baseline,flood,churn,mixed]

Each phase starts a fresh relay (``python -m relay``, its default limits, signature
auth, pinned to CPU 0), registers the honest peers, then (except in ``baseline``) starts
the abusers in another process pinned to CPU 1 (benchmarks/_abusers.py), waits
``--warmup`` seconds and measures for ``--seconds``:

  flood   --flooders message flooders (default 100)
  churn   --churners connection churners (default 100)
  mixed   --mixed abusers, half flooders, half churners (default 1,000)

Abusers come from ``--addresses`` loopback addresses from 127.0.1.0 on; honest peers from
127.0.0.1. Honest traffic (this process, asyncio, pinned to CPU 1 with the abusers):
``--pairs`` pairs of peers, each with one circuit carrying 1 KiB DATA frames paced at
``--data-rate`` per second and Offers forwarded at ``--offer-rate`` per second; every
peer pings the relay 20 times a second; a fresh peer registers every 0.5 s. The table
gives honest deliveries per second (DATA frames + Offers received), the ratio to the
baseline, ping round trips, registration times, and the relay's CPU use. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
for path in (HERE, ROOT):
    if path not in sys.path:
        sys.path.insert(0, path)

import uvloop  # noqa: E402
from _relay_loadgen import _CREDIT, register  # noqa: E402
from _relay_servers import cpu_seconds  # noqa: E402

from darkswap_trio import Keypair, load_or_create_keypair  # noqa: E402
from darkswap_trio.proto import signaling as sig  # noqa: E402

HOST = "127.0.0.1"
RELAY_CPU, LOAD_CPU = 0, 1
PING_INTERVAL = 0.05
PROBE_INTERVAL = 0.5
DATA_SIZE = 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Relay:
    """``python -m relay`` with its default limits, pinned to RELAY_CPU when possible."""

    def __init__(self, workdir: str, root: str = ROOT) -> None:
        key_file = os.path.join(workdir, "relay.key")
        self.peer_id = load_or_create_keypair(key_file).peer_id
        self.port, self.metrics_port = free_port(), free_port()
        pin = (os.cpu_count() or 1) >= 2
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "relay",
                "--host",
                HOST,
                "--port",
                str(self.port),
                "--metrics-port",
                str(self.metrics_port),
                "--stun-port",
                "none",
                "--key-file",
                key_file,
                "--log-level",
                "WARNING",
            ],
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": root},
            preexec_fn=(lambda: os.sched_setaffinity(0, {RELAY_CPU})) if pin else None,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("the relay did not start") from None
                time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"ws://{HOST}:{self.port}/signaling"

    def limit_hits(self) -> dict[str, float]:
        text = urllib.request.urlopen(f"http://{HOST}:{self.metrics_port}/metrics", timeout=5)
        hits = {}
        for line in text.read().decode().splitlines():
            if line.startswith("darkswap_relay_limit_hits_total{"):
                label = line.split('limit="', 1)[1].split('"', 1)[0]
                hits[label] = float(line.rsplit(" ", 1)[1])
        return hits

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Honest:
    """Paced honest traffic and what it measured (counters reset by :meth:`measure`)."""

    def __init__(self, relay: Relay, pairs: int, data_rate: float, offer_rate: float) -> None:
        self.relay, self.pairs = relay, pairs
        self.data_rate, self.offer_rate = data_rate, offer_rate
        self.measuring = False
        self.delivered = 0
        self.rtts: list[float] = []
        self.handshakes: list[float] = []
        self.handshake_failures = 0
        self.errors: dict[str, int] = {}

    def measure(self) -> None:
        self.measuring, self.delivered = True, 0
        self.rtts, self.handshakes, self.handshake_failures = [], [], 0

    async def peer(self):
        key = Keypair.generate()
        ws = await register(self.relay.url, self.relay.peer_id, key, local_addr=(HOST, 0))
        return ws, str(key.peer_id)

    async def reader(self, ws, pings: list[float], state: dict) -> None:
        """Every frame of one session: DATA (count, give credit back), CREDIT, Pong, Offer."""
        owed = 0
        async for frame in ws:
            if isinstance(frame, bytes):
                if frame[0] == sig.FRAME_CREDIT:
                    state["credit"] += _CREDIT.unpack(frame)[2]
                    state["event"].set()
                    continue
                self.delivered += self.measuring
                owed += len(frame) - sig.DATA_HEADER_LENGTH
                if owed >= state["window"] >> 1:
                    await ws.send(_CREDIT.pack(sig.FRAME_CREDIT, state["key"], owed))
                    owed = 0
                continue
            msg = sig.decode_message_untrusted(frame)
            if isinstance(msg, sig.Pong) and pings:
                rtt = time.perf_counter() - pings.pop(0)
                if self.measuring:
                    self.rtts.append(rtt)
            elif isinstance(msg, sig.Offer):
                self.delivered += self.measuring
            elif isinstance(msg, sig.Error):
                self.errors[msg.code or ""] = self.errors.get(msg.code or "", 0) + 1
            elif isinstance(msg, sig.Ping):
                await ws.send(sig.encode_message(sig.Pong()))

    async def pinger(self, ws, pings: list[float]) -> None:
        frame = sig.encode_message(sig.Ping())
        while True:
            pings.append(time.perf_counter())
            await ws.send(frame)
            await asyncio.sleep(PING_INTERVAL)

    async def sender(self, ws, me: str, to: str, state: dict) -> None:
        """DATA at data_rate and Offers at offer_rate, on a schedule."""
        data = sig.encode_circuit_data(state["key"], os.urandom(DATA_SIZE))
        offer = sig.encode_message(sig.Offer(from_=me, to=to, sdp="v=0 " + "x" * 200))
        start, sent_data, sent_offers = time.perf_counter(), 0, 0
        while True:
            elapsed = time.perf_counter() - start
            # Paced: after a stall (of this process or the relay), at most one second
            # of schedule is caught up, as a trading peer would not send a backlog.
            sent_offers = max(sent_offers, int((elapsed - 1) * self.offer_rate))
            sent_data = max(sent_data, int((elapsed - 1) * self.data_rate))
            while sent_offers < elapsed * self.offer_rate:
                await ws.send(offer)
                sent_offers += 1
            while sent_data < elapsed * self.data_rate:
                while state["credit"] < DATA_SIZE:
                    state["event"].clear()
                    await state["event"].wait()
                state["credit"] -= DATA_SIZE
                await ws.send(data)
                sent_data += 1
            await asyncio.sleep(0.005)

    async def pair(self, tasks: list) -> None:
        (a, a_id), (b, b_id) = await self.peer(), await self.peer()
        await a.send(sig.encode_message(sig.RelayRequest(from_=a_id, to=b_id)))
        response = sig.decode_message_untrusted(await a.recv())
        notice = sig.decode_message_untrusted(await b.recv())
        assert isinstance(response, sig.RelayResponse) and response.accepted, response
        assert isinstance(notice, sig.DataChannel), notice
        window = response.limits.window if response.limits else 256 * 1024
        key = bytes.fromhex(response.relay_id.replace("-", ""))
        state_a = {"credit": window, "event": asyncio.Event(), "window": window, "key": key}
        state_b = {"credit": window, "event": asyncio.Event(), "window": window, "key": key}
        for ws, state in ((a, state_a), (b, state_b)):
            pings: list[float] = []
            tasks.append(asyncio.ensure_future(self.reader(ws, pings, state)))
            tasks.append(asyncio.ensure_future(self.pinger(ws, pings)))
        tasks.append(asyncio.ensure_future(self.sender(a, a_id, b_id, state_a)))

    async def prober(self) -> None:
        while True:
            start = time.perf_counter()
            try:
                ws, _ = await asyncio.wait_for(self.peer(), 30)
                if self.measuring:
                    self.handshakes.append(time.perf_counter() - start)
                ws.transport.abort()
            except Exception:
                self.handshake_failures += self.measuring
            await asyncio.sleep(max(0.0, PROBE_INTERVAL - (time.perf_counter() - start)))


async def phase(args, name: str, flooders: int, churners: int, workdir: str) -> dict:
    relay = Relay(workdir, args.relay_root)
    abusers = None
    tasks: list[asyncio.Future] = []
    try:
        honest = Honest(relay, args.pairs, args.data_rate, args.offer_rate)
        for _ in range(args.pairs):
            await honest.pair(tasks)
        tasks.append(asyncio.ensure_future(honest.prober()))
        if flooders or churners:
            command = {
                "port": relay.port,
                "flooders": flooders,
                "churners": churners,
                "addresses": args.addresses,
                "first_address": "127.0.1.0",
                "seconds": args.warmup + args.seconds + 1,
                "cpu": LOAD_CPU if (os.cpu_count() or 1) >= 2 else None,
            }
            abusers = subprocess.Popen(
                [sys.executable, os.path.join(HERE, "_abusers.py"), json.dumps(command)],
                stdout=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
            )
        await asyncio.sleep(args.warmup)
        honest.measure()
        cpu0, t0 = cpu_seconds(relay.proc.pid), time.perf_counter()
        await asyncio.sleep(args.seconds)
        elapsed = time.perf_counter() - t0
        cpu = (cpu_seconds(relay.proc.pid) - cpu0) / elapsed
        honest.measuring = False
        result = {
            "phase": name,
            "flooders": flooders,
            "churners": churners,
            "delivered_per_s": honest.delivered / elapsed,
            "ping_p50_ms": percentile(honest.rtts, 0.5) * 1e3,
            "ping_p99_ms": percentile(honest.rtts, 0.99) * 1e3,
            "handshake_p50_ms": percentile(honest.handshakes, 0.5) * 1e3,
            "handshake_p99_ms": percentile(honest.handshakes, 0.99) * 1e3,
            "handshake_max_ms": max(honest.handshakes, default=float("nan")) * 1e3,
            "handshakes": len(honest.handshakes),
            "handshake_failures": honest.handshake_failures,
            "relay_cpu": cpu,
            "honest_errors": dict(honest.errors),
            "limit_hits": relay.limit_hits(),
        }
        if abusers is not None:
            out, _ = await asyncio.get_running_loop().run_in_executor(
                None, abusers.communicate, None
            )
            result["abusers"] = json.loads(out.decode().strip().splitlines()[-1])
        return result
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if abusers is not None and abusers.poll() is None:
            abusers.kill()
            abusers.wait()
        relay.stop()


def report(results: list[dict]) -> str:
    base = next((r for r in results if r["phase"] == "baseline"), None)
    lines = [
        "| phase | abusers (flood/churn) | honest deliveries/s | ratio | ping p50 / p99 ms "
        "| registration p50 / p99 / max ms (failed) | relay CPU |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        ratio = r["delivered_per_s"] / base["delivered_per_s"] if base else float("nan")
        lines.append(
            f"| {r['phase']} | {r['flooders']}/{r['churners']} | {r['delivered_per_s']:.0f} "
            f"| {ratio:.2f} | {r['ping_p50_ms']:.1f} / {r['ping_p99_ms']:.1f} "
            f"| {r['handshake_p50_ms']:.0f} / {r['handshake_p99_ms']:.0f} / "
            f"{r['handshake_max_ms']:.0f} ({r['handshake_failures']}) | {r['relay_cpu']:.0%} |"
        )
    return "\n".join(lines)


async def main_async(args) -> None:
    phases = {
        "baseline": (0, 0),
        "flood": (args.flooders, 0),
        "churn": (0, args.churners),
        "mixed": (args.mixed // 2, args.mixed - args.mixed // 2),
    }
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.phases.split(","):
            flooders, churners = phases[name]
            result = await phase(args, name, flooders, churners, workdir)
            print(json.dumps(result), file=sys.stderr, flush=True)
            results.append(result)
    print(report(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured time per phase")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--phases", default="baseline,flood,churn,mixed")
    parser.add_argument("--flooders", type=int, default=100)
    parser.add_argument("--churners", type=int, default=100)
    parser.add_argument("--mixed", type=int, default=1000)
    parser.add_argument("--addresses", type=int, default=100, help="abuser source addresses")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument(
        "--relay-root",
        default=ROOT,
        help="checkout whose relay runs (e.g. another worktree, for a before/after)",
    )
    parser.add_argument("--data-rate", type=float, default=500.0, help="DATA frames/s per pair")
    parser.add_argument("--offer-rate", type=float, default=50.0, help="Offers/s per pair")
    args = parser.parse_args()
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {LOAD_CPU})
    uvloop.run(main_async(args))


if __name__ == "__main__":
    main()
