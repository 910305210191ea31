"""TURN relaying cost: our TURN server against coturn's ``turnserver``, same machine, same run.

Run: python benchmarks/bench_turn.py [--seconds S] [--payload BYTES] [--window N] [--rounds R]
                                    [--no-datachannel]

Each server runs in its own process (ours: ``python -m relay --turn``; coturn when
``turnserver`` is on PATH, see scripts/install-coturn.sh). One client in this process
allocates over UDP with TURN REST API credentials, binds a channel to a UDP echo peer on
127.0.0.1 (both servers allow loopback peers for this) and keeps ``window`` ChannelData
datagrams in flight: client -> server -> peer -> server -> client. Printed per server:
round trips/s, relayed payload MB/s (both directions through the server), and server
CPU microseconds per relayed datagram from /proc/PID/stat (the figure that does not depend
on the client, which is Python in both cases and may be the bottleneck for coturn).

A second table (unless ``--no-datachannel``): two aiortc peers with
``iceTransportPolicy="relay"`` open a data channel through each server (see
benchmarks/_turn_datachannel.py): bulk MB/s, median 100-byte round trip, and server CPU
per end-to-end relayed packet.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import trio
from aioice import stun

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _turn_datachannel import ROUND_TRIPS, measure_datachannel  # noqa: E402  (this directory is sys.path[0])

from darkswap_trio.proto.turn import rest_api_credentials  # noqa: E402
from darkswap_trio.proto.turn.codec import (  # noqa: E402
    ALLOCATE,
    CHANNEL_BIND,
    REQUEST,
    Attr,
    encode_channel_data,
    encode_message,
    long_term_key,
    pack_xor_address,
    uint32_attr,
)

SECRET = "bench-turn-secret-0123456789"
REALM = "bench.realm"
CHANNEL = 0x4000


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port


def start_ours(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    (tmp / "secret").write_text(SECRET)
    (tmp / "relay.toml").write_text(
        f'host = "127.0.0.1"\nport = 0\nstun_port = 0\nmetrics_port = false\n'
        f'[auth]\nmode = "open"\n[turn]\nenabled = true\nrealm = "{REALM}"\n'
        f'secret_file = "{tmp / "secret"}"\nallow_loopback_peers = true\nbandwidth_per_allocation = 0\n'
        "[limits]\nstun_per_ip_rate = 100000.0\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "relay",
            "--config",
            str(tmp / "relay.toml"),
            "--log-level",
            "WARNING",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    port = int(line.split("stun=")[1].split()[0])
    return process, port


def start_coturn() -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen(
        [
            "turnserver",
            "-n",
            "--listening-ip",
            "127.0.0.1",
            "-p",
            str(port),
            "--relay-ip",
            "127.0.0.1",
            "--use-auth-secret",
            "--static-auth-secret",
            SECRET,
            "--realm",
            REALM,
            "--allow-loopback-peers",
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "--log-file",
            "stdout",
            "--simple-log",
            "--no-stdout-log",
            "--min-port",
            "40000",
            "--max-port",
            "40999",
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return process, port


async def request(sock, port: int, method: int, attrs, key: bytes | None) -> stun.Message:
    tid = os.urandom(12)
    data = encode_message(method, REQUEST, tid, attrs(tid), integrity_key=key)
    for _ in range(50):
        await sock.sendto(data, ("127.0.0.1", port))
        with trio.move_on_after(0.2):
            while True:
                reply, _ = await sock.recvfrom(65536)
                if reply[8:20] == tid:
                    return stun.parse_message(reply)
    raise TimeoutError("the TURN server does not answer")


async def measure(
    port: int, pid: int, seconds: float, payload: int, window: int
) -> dict[str, float]:
    username, password = rest_api_credentials(SECRET.encode(), "bench", 3600, time.time())
    key = long_term_key(username, REALM, password)
    client = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with client, peer:
        await client.bind(("127.0.0.1", 0))
        await peer.bind(("127.0.0.1", 0))
        transport = uint32_attr(Attr.REQUESTED_TRANSPORT, 17 << 24)
        challenge = await request(client, port, ALLOCATE, lambda t: [transport], None)
        nonce = challenge.attributes["NONCE"]

        def auth(extra):
            return lambda t: [
                *extra(t),
                (Attr.USERNAME, username.encode()),
                (Attr.REALM, REALM.encode()),
                (Attr.NONCE, nonce),
            ]

        allocated = await request(client, port, ALLOCATE, auth(lambda t: [transport]), key)
        assert allocated.message_class == stun.Class.RESPONSE, allocated
        peer_addr = peer.getsockname()
        bind = auth(
            lambda t: [
                (Attr.CHANNEL_NUMBER, struct.pack("!HH", CHANNEL, 0)),
                (Attr.XOR_PEER_ADDRESS, pack_xor_address(peer_addr, t)),
            ]
        )
        bound = await request(client, port, CHANNEL_BIND, bind, key)
        assert bound.message_class == stun.Class.RESPONSE, bound
        frame = encode_channel_data(CHANNEL, bytes(payload))
        done = 0
        timeouts = 0

        async def echo() -> None:
            while True:
                data, source = await peer.recvfrom(65536)
                await peer.sendto(data, source)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo)
            for _ in range(window):
                await client.sendto(frame, ("127.0.0.1", port))
            cpu0, t0 = cpu_seconds(pid), time.perf_counter()
            with trio.move_on_after(seconds):
                while True:
                    with trio.move_on_after(0.05) as lost:
                        await client.recvfrom(65536)
                        done += 1
                    timeouts += lost.cancelled_caught
                    await client.sendto(frame, ("127.0.0.1", port))  # refill (or replace a loss)
            elapsed, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
            nursery.cancel_scope.cancel()
    datagrams = 4 * done  # each round trip: 2 datagrams into the server, 2 out
    return {
        "round_trips_per_s": done / elapsed,
        "mb_per_s": 2 * done * payload / elapsed / 1e6,
        "cpu_us_per_datagram": 1e6 * cpu / max(datagrams, 1),
        "server_cpu_share": cpu / elapsed,
        "timeouts": timeouts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--payload", type=int, default=1000)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--no-datachannel", action="store_true", help="skip the aiortc table")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure each server this many times, alternating which goes first; "
        "print medians (a loaded machine drifts)",
    )
    args = parser.parse_args()
    servers = [("darkswap-relay (trio)", start_ours)]
    if shutil.which("turnserver"):
        servers.append(("coturn turnserver", lambda tmp: start_coturn()))
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, _ in servers}
    load = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            load.append(os.getloadavg()[0])
            for name, start in servers if round_ % 2 == 0 else servers[::-1]:
                process, port = start(Path(tmp))
                try:
                    result = trio.run(
                        measure, port, process.pid, args.seconds, args.payload, args.window
                    )
                    if not args.no_datachannel:
                        cpu = partial(cpu_seconds, process.pid)
                        result.update(measure_datachannel(port, SECRET, cpu, args.seconds))
                    runs[name].append(result)
                finally:
                    process.terminate()
                    process.wait(5)
    results = {
        name: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
        for name, rs in runs.items()
    }
    print(f"TURN over UDP, {args.payload}-byte payloads, window {args.window}, {args.seconds:.0f} s, "
          f"median of {args.rounds} round(s), load average {min(load):.2f}..{os.getloadavg()[0]:.2f}")  # fmt: skip
    print(
        f"{'server':24} {'round trips/s':>14} {'MB/s':>8} {'CPU us/datagram':>16} {'server CPU':>10} {'50 ms stalls':>12}"
    )
    for name, r in results.items():
        print(
            f"{name:24} {r['round_trips_per_s']:14.0f} {r['mb_per_s']:8.2f} "
            f"{r['cpu_us_per_datagram']:16.1f} {r['server_cpu_share']:10.0%} {r['timeouts']:12.0f}"
        )
    if len(results) == 2:
        ours, theirs = results.values()
        print(f"ours / coturn: throughput {ours['mb_per_s'] / theirs['mb_per_s']:.2f}x, "
              f"CPU per datagram {ours['cpu_us_per_datagram'] / theirs['cpu_us_per_datagram']:.1f}x")  # fmt: skip
    if args.no_datachannel:
        return
    print(f"\naiortc data channel, both peers iceTransportPolicy=relay, TURN over UDP, "
          f"{args.seconds:.0f} s bulk + {ROUND_TRIPS} round trips of 100 B")  # fmt: skip
    print(f"{'server':24} {'DC MB/s':>8} {'RTT 100 B ms':>13} {'CPU us/packet':>14} {'packets':>8}")
    for name, r in results.items():
        print(
            f"{name:24} {r['dc_mb_per_s']:8.2f} {r['dc_rtt_ms']:13.2f} "
            f"{r['dc_cpu_us_per_packet']:14.1f} {r['dc_packets']:8.0f}"
        )
    if len(results) == 2:
        ours, theirs = results.values()
        print(f"ours / coturn: DC throughput {ours['dc_mb_per_s'] / theirs['dc_mb_per_s']:.2f}x, "
              f"RTT {ours['dc_rtt_ms'] / theirs['dc_rtt_ms']:.2f}x, CPU per packet "
              f"{ours['dc_cpu_us_per_packet'] / theirs['dc_cpu_us_per_packet']:.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
