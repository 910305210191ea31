"""A data channel between two of our PeerConnections, relay-only through our TURN
server and through coturn's ``turnserver``: same machine, same run, alternated rounds.

Run: python benchmarks/bench_turn_datachannel.py [--megabytes MB] [--rounds N]

The servers are started as in bench_turn.py (ours: ``python -m relay --turn``; coturn
when ``turnserver`` is on PATH). Two PeerConnections in this process use
``ice_transport_policy="relay"`` through the server, reached over UDP and then TCP.
Printed per server and transport (medians of the rounds): bulk MB/s one way with
backpressure, the median round trip of small messages, and the server's CPU
microseconds per datagram the peers sent or received through it (/proc/PID/stat).
Both peers are Python in one process, so they, not coturn, may be the bottleneck.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_turn import SECRET, cpu_seconds, start_coturn, start_ours  # noqa: E402  (sys.path[0])

from darkswap_trio.proto.turn import rest_api_credentials  # noqa: E402
from darkswap_trio.webrtc import (  # noqa: E402
    PeerConnectionConfig,
    TurnServerConfig,
    open_peer_connection,
)

CHUNK = 16 * 1024
PINGS = 200


def _config(port: int, secret: str, name: str, transport: str) -> PeerConnectionConfig:
    username, password = rest_api_credentials(secret.encode(), name, 3600, time.time())
    url = f"turn:127.0.0.1:{port}?transport={transport}"
    return PeerConnectionConfig(
        host_addresses=["127.0.0.1"],
        turn_servers=[TurnServerConfig(url, username, password)],
        ice_transport_policy="relay",
    )


async def _connect(a, b) -> None:
    await b.set_remote_description(await a.create_offer(), "offer")
    await a.set_remote_description(await b.create_answer(), "answer")

    async def trickle(source, sink) -> None:
        async for candidate in source.local_candidates():
            sink.add_ice_candidate(candidate)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle, a, b)
        nursery.start_soon(trickle, b, a)
        await a.wait_connected()
        await b.wait_connected()


async def measure_datachannel(
    port: int, pid: int, secret: str, megabytes: float, transport: str
) -> dict[str, float]:
    """MB/s of ``megabytes`` a->b, median round trip of 200 small messages (ms), and
    server CPU microseconds per datagram it relayed during the bulk transfer."""
    total = int(megabytes * 1e6)
    with trio.fail_after(120):
        async with (
            open_peer_connection(_config(port, secret, "bench-a", transport)) as a,
            open_peer_connection(_config(port, secret, "bench-b", transport)) as b,
        ):
            await _connect(a, b)
            ours = await a.create_data_channel("bulk")
            theirs = await b.accept_data_channel()
            chunk = bytes(CHUNK)

            async def sink() -> None:
                got = 0
                while got < total:
                    got += len(await theirs.receive())

            cpu0, sent0 = cpu_seconds(pid), a.statistics().datagrams_sent
            received0 = b.statistics().datagrams_received
            t0 = time.perf_counter()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sink)
                for _ in range(0, total, CHUNK):
                    await ours.send(chunk)
            elapsed = time.perf_counter() - t0
            cpu = cpu_seconds(pid) - cpu0
            datagrams = (a.statistics().datagrams_sent - sent0) + (
                b.statistics().datagrams_received - received0
            )
            rtts = []
            for _ in range(PINGS):
                start = time.perf_counter()
                await ours.send(b"ping")
                await theirs.receive()
                await theirs.send(b"pong")
                await ours.receive()
                rtts.append(time.perf_counter() - start)
            rtts.sort()
            assert a.statistics().ice.selected_local_type == "relay"
    return {
        "mb_per_s": (total // CHUNK) * CHUNK / elapsed / 1e6,
        "rtt_ms": 1000 * rtts[len(rtts) // 2],
        "cpu_us_per_datagram": 1e6 * cpu / max(datagrams, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megabytes", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    servers = [("darkswap-relay (trio)", start_ours)]
    if shutil.which("turnserver"):
        servers.append(("coturn turnserver", lambda tmp: start_coturn()))
    runs: dict[tuple[str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):  # alternated, so both servers see the same load
            for name, start in servers:
                process, port = start(Path(tmp))
                try:
                    for transport in ("udp", "tcp"):
                        result = trio.run(
                            measure_datachannel, port, process.pid, SECRET, args.megabytes,
                            transport,
                        )  # fmt: skip
                        runs.setdefault((name, transport), []).append(result)
                finally:
                    process.terminate()
                    process.wait(5)
    print(f"Data channel, our peers at both ends, relay-only through the server, "
          f"{args.megabytes:g} MB one way, medians of {args.rounds}, "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"{'server':24} {'to server':>9} {'MB/s':>8} {'RTT ms':>8} {'CPU us/datagram':>16}")
    medians = {}
    for (name, transport), results in runs.items():
        row = {k: sorted(r[k] for r in results)[len(results) // 2] for k in results[0]}
        medians[(name, transport)] = row
        print(f"{name:24} {transport:>9} {row['mb_per_s']:8.2f} {row['rtt_ms']:8.2f} "
              f"{row['cpu_us_per_datagram']:16.1f}")  # fmt: skip
    if len(servers) == 2:
        names = [name for name, _ in servers]
        for transport in ("udp", "tcp"):
            ours, theirs = medians[(names[0], transport)], medians[(names[1], transport)]
            print(f"ours / coturn over {transport}: throughput "
                  f"{ratio(ours['mb_per_s'], theirs['mb_per_s'], '.2f')}, RTT "
                  f"{ratio(ours['rtt_ms'], theirs['rtt_ms'], '.2f')}, CPU per datagram "
                  f"{ratio(ours['cpu_us_per_datagram'], theirs['cpu_us_per_datagram'], '.1f')}")  # fmt: skip


def ratio(ours: float, theirs: float, spec: str) -> str:
    """``ours / theirs`` as "1.23x"; CPU is read in 10 ms ticks, so a short run can
    measure 0 for the baseline: then there is no ratio to print."""
    return f"{ours / theirs:{spec}}x" if theirs > 0 else "n/a (baseline measured 0)"


if __name__ == "__main__":
    main()
