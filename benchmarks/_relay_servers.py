"""Servers under test for bench_relay.py, each run in its own process.

Run: python benchmarks/_relay_servers.py KIND [--cpu N]

KIND is one of
  ours        darkswap relay (serve_relay, auth "signature", benchmark limits raised)
  splice      raw trio TCP splice relay: two connections sending the same 16-byte token
              are paired and bytes are copied both ways (256 KiB receives)
  wsrelay     minimal relay on the ``websockets`` package (asyncio + uvloop): two
              connections to the same path are paired, binary messages are forwarded
  bare        bare trio-websocket server holding idle connections (memory baseline)
  echo        raw trio TCP echo (latency floor)

Once listening the process prints one JSON line ``{"port": ..., "pid": ..., ...}`` on
stdout and serves until it is killed (the orchestrator sends SIGTERM). Nothing here
touches anything but 127.0.0.1.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import math
import os
import resource
import signal
import sys
from functools import partial

# The project root first: the relay package is imported from this checkout, whatever the
# editable install maps (an install made before relay/__init__.py existed maps nothing).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

HOST = "127.0.0.1"
TOKEN_LENGTH = 16
_TICKS = os.sysconf("SC_CLK_TCK")
SPLICE_RECEIVE = 256 * 1024


def raise_fd_limit(target: int = 200_000) -> None:
    """Allow tens of thousands of sockets (we run as root, so the hard limit may rise)."""
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
    except (ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of every thread of ``pid`` (/proc/PID/stat, 10 ms ticks).

    Ticks, not schedstat: on a VM the scheduler's run time may include steal time. The
    tick granularity is why CPU figures are averaged over all runs of a benchmark.
    """
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"process {pid} has no VmRSS")


def announce(**info: object) -> None:
    print(json.dumps({"pid": os.getpid(), **info}), flush=True)


# -- ours ------------------------------------------------------------------------------


def benchmark_relay_config(
    window: int | None = None, receive_buffer: int | None = None
):  # -> RelayConfig
    """The relay's defaults with every abuse limit raised out of the benchmark's way.

    Flow control (adaptive windows up to 16 MiB, data frame 64 KiB) and frame size stay at their
    defaults: they are part of what is measured, not a limit on abuse.
    """
    from relay import RelayConfig

    config = RelayConfig(host=HOST, port=0, stun_port=None, metrics_port=None, log_level="WARNING")
    lim = config.limits
    lim.max_sessions = 1_000_000
    lim.max_sessions_per_ip = 1_000_000
    lim.max_pending_per_ip = 0  # the load generator registers from one address, 32 at once
    lim.max_pending_connections = 0
    lim.handshake_timeout = 120.0
    lim.idle_timeout = 0.0  # idle peers are the point of the memory benchmark
    lim.connections_per_ip_rate = 1e9
    lim.connections_per_ip_burst = 1_000_000_000
    lim.messages_per_peer_rate = 1e9
    lim.messages_per_peer_burst = 1_000_000_000
    # Per-address and relay-wide budgets off (rate 0: unlimited), no penalties.
    lim.messages_per_ip_rate = lim.handshakes_per_ip_rate = 0.0
    lim.messages_total_rate = lim.handshakes_total_rate = 0.0
    lim.abuse_penalty = 0.0
    lim.bytes_per_peer_rate = 1e15
    lim.bytes_per_peer_burst = 1 << 50
    lim.max_circuits = 1_000_000
    lim.max_circuits_per_peer = 100_000
    lim.max_circuits_per_pair = 0
    lim.circuit_idle_timeout = 0.0
    lim.circuit_duration = 0.0
    lim.circuit_bytes = 0
    lim.limiter_table_size = 1_000_000
    if window:  # an experiment with another flow-control window (default: the relay's)
        lim.circuit_window = window
    if receive_buffer is not None:  # an experiment with another SO_RCVBUF (0: autotuning)
        lim.socket_receive_buffer = receive_buffer
    return config.validate()


async def run_ours(
    window: int | None = None, lifetime: float | None = None, receive_buffer: int | None = None
) -> None:
    import trio

    from relay import serve_relay

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_relay, benchmark_relay_config(window, receive_buffer))
        announce(port=server.signaling_port, peer_id=server.peer_id, url=server.url)
        await trio.sleep(math.inf if lifetime is None else lifetime)
        nursery.cancel_scope.cancel()


# -- splice / echo (trio TCP) -----------------------------------------------------------


async def run_splice() -> None:
    import trio

    waiting: dict[bytes, tuple[trio.SocketStream, trio.Event, list]] = {}

    async def pump(source: trio.SocketStream, sink: trio.SocketStream, first: bytes) -> None:
        try:
            if first:
                await sink.send_all(first)
            while True:
                data = await source.receive_some(SPLICE_RECEIVE)
                if not data:
                    break
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await sink.aclose()

    async def handle(stream: trio.SocketStream) -> None:
        buf = b""
        while len(buf) < TOKEN_LENGTH:
            data = await stream.receive_some(SPLICE_RECEIVE)
            if not data:
                return
            buf += data
        token, rest = buf[:TOKEN_LENGTH], buf[TOKEN_LENGTH:]
        if token in waiting:  # second end: its partner is waiting for it
            partner, paired, slot = waiting.pop(token)
            slot.append(stream)
            paired.set()
            await pump(stream, partner, rest)
        else:
            paired, slot = trio.Event(), []
            waiting[token] = (stream, paired, slot)
            await paired.wait()
            await pump(stream, slot[0], rest)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host=HOST))
        announce(port=listeners[0].socket.getsockname()[1])


async def run_echo() -> None:
    import trio

    async def handle(stream: trio.SocketStream) -> None:
        try:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return
                await stream.send_all(data)
        except trio.BrokenResourceError:
            pass

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host=HOST))
        announce(port=listeners[0].socket.getsockname()[1])


# -- bare trio-websocket ---------------------------------------------------------------


async def run_bare() -> None:
    import trio
    from trio_websocket import ConnectionClosed, serve_websocket

    async def handle(request) -> None:
        ws = await request.accept()
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed:
            pass

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handle, HOST, 0, None)
        announce(port=server.port)


# -- websockets + uvloop relay ----------------------------------------------------------


async def run_wsrelay() -> None:
    import asyncio

    from websockets.asyncio.server import serve
    from websockets.exceptions import ConnectionClosed

    waiting: dict[str, tuple[object, asyncio.Future]] = {}

    async def forward(source, sink) -> None:
        try:
            async for message in source:
                await sink.send(message)
        except ConnectionClosed:
            pass
        finally:
            await sink.close()

    async def handle(ws) -> None:
        path = ws.request.path
        if path in waiting:
            partner, paired = waiting.pop(path)
            paired.set_result(ws)
            await forward(ws, partner)
        else:
            paired = asyncio.get_running_loop().create_future()
            waiting[path] = (ws, paired)
            await forward(ws, await paired)

    async with serve(
        handle, HOST, 0, compression=None, max_size=1 << 20, ping_interval=None
    ) as server:
        announce(port=server.sockets[0].getsockname()[1])
        await asyncio.get_running_loop().create_future()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("ours", "splice", "wsrelay", "bare", "echo"))
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    parser.add_argument("--window", type=int, default=None, help="ours: circuit window, bytes")
    parser.add_argument(
        "--receive-buffer", type=int, default=None, help="ours: SO_RCVBUF, bytes (0: autotuning)"
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="ours: run under cProfile for --lifetime s, write pstats to FILE",
    )
    parser.add_argument("--lifetime", type=float, default=None, help="ours: stop after N s")
    args = parser.parse_args()
    # Never outlive the orchestrator: die with the parent, and in any case after 20 min.
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    signal.alarm(1200)
    raise_fd_limit()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.kind == "wsrelay":
        import uvloop

        uvloop.run(run_wsrelay())
    elif args.kind == "ours":
        import trio

        if args.profile:
            import cProfile

            cProfile.runctx(
                "trio.run(run_ours, args.window, args.lifetime, args.receive_buffer)",
                globals(),
                {"trio": trio, "args": args},
                args.profile,
            )
        else:
            trio.run(run_ours, args.window, args.lifetime, args.receive_buffer)
    else:
        import trio

        runner = {"splice": run_splice, "bare": run_bare, "echo": run_echo}
        trio.run(runner[args.kind])


if __name__ == "__main__":
    main()
