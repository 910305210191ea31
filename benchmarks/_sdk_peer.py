"""One peer process of bench_sdk_relayed.py: an SDK end (public API only) or a websockets end.

Run: python benchmarks/_sdk_peer.py KIND ROLE TARGET [PEER]

KIND     circuit   darkswap_trio.RelayManager: open_circuit / accept_circuit -> RelayCircuit
         link      darkswap_trio.P2PNetwork, enable_direct=False: connect_to_peer / accept_peer
                   -> PeerLink (over a relay circuit)
         ws        the ``websockets`` client (asyncio + uvloop), the baseline: both ends
                   connect to the same path of the websockets+uvloop relay, which pairs them
ROLE     responder answers: b"E..." is echoed, b"D..." counted, b"F" answered b"F<count>"
         driver    reads commands on stdin, one JSON line answer each:
                     "tp BYTES SIZE"  send BYTES in SIZE-byte messages, then F; -> seconds
                     "rtt N SIZE"     N echo round trips of SIZE bytes -> samples (us)
                     "quit"
TARGET   a relay multiaddr (circuit, link) or a ws:// URL (ws)
PEER     driver of circuit/link: the responder's PeerId

Every process prints ``{"ready": true, "peer_id": ...}`` once it can be used. The
messages are what an application would send: nothing is prebuilt or premasked.
"""

from __future__ import annotations

import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def emit(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def answer(msg: bytes, count: int) -> tuple[bytes | None, int]:
    """The responder's reply to ``msg`` (None: none) and the new byte count."""
    tag = msg[:1]
    if tag == b"D":
        return None, count + len(msg)
    if tag == b"E":
        return msg, count
    return b"F" + str(count).encode(), 0


def parse_command(line: bytes) -> tuple[str, int, int] | None:
    words = line.split()
    if not words or words[0] == b"quit":
        return None
    return words[0].decode(), int(words[1]), int(words[2])


async def trio_commands():
    """Commands from stdin, read without blocking the event loop (pings go on)."""
    import trio

    stream, buffer = trio.lowlevel.FdStream(os.dup(0)), b""
    while True:
        while b"\n" not in buffer:
            chunk = await stream.receive_some()
            if not chunk:
                return
            buffer += chunk
        line, buffer = buffer.split(b"\n", 1)
        command = parse_command(line)
        if command is None:
            return
        yield command


async def asyncio_commands():
    import asyncio

    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        command = parse_command(await reader.readline())
        if command is None:
            return
        yield command


# -- SDK (trio) -----------------------------------------------------------------------


async def run_sdk(kind: str, role: str, target: str, peer: str | None) -> None:
    import trio

    from darkswap_trio import (
        Config,
        Keypair,
        P2PConfig,
        P2PNetwork,
        RelayManager,
        RelayManagerConfig,
    )

    manager_config = RelayManagerConfig(ping_interval=30, connection_timeout=30)
    async with trio.open_nursery() as nursery:
        if kind == "circuit":
            keypair = Keypair.generate()
            manager = RelayManager(keypair, [target], manager_config, deliver_incoming=False)
            await nursery.start(manager.run)
            await manager.wait_connected(timeout=30)
            local = str(keypair.peer_id)
        else:
            config = Config(
                p2p=P2PConfig(relay_servers=[target], enable_direct=False),
                relay_manager=manager_config,
            )
            network = P2PNetwork(config)
            await nursery.start(network.run)
            await network.wait_relay_connected(timeout=30)
            local = network.local_peer_id
        if role == "responder":
            emit({"ready": True, "peer_id": local})
            if kind == "circuit":
                channel = await manager.accept_circuit()
            else:
                channel = await network.accept_peer()
            count = 0
            try:
                while True:
                    reply, count = answer(await channel.receive(), count)
                    if reply is not None:
                        await channel.send(reply)
            except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        else:
            if kind == "circuit":
                channel = await manager.open_circuit(peer)
            else:
                channel = await network.connect_to_peer(peer)
            await channel.send(b"E")  # both ends are connected once this comes back
            await channel.receive()
            emit({"ready": True, "peer_id": local})
            async for command, a, b in trio_commands():
                if command == "tp":
                    data, n = b"D" + os.urandom(b - 1), a // b
                    start = time.perf_counter()
                    for _ in range(n):
                        await channel.send(data)
                    await channel.send(b"F")
                    await channel.receive()
                    emit({"seconds": time.perf_counter() - start})
                else:
                    data, out = b"E" + os.urandom(b - 1), []
                    for _ in range(a):
                        start = time.perf_counter()
                        await channel.send(data)
                        await channel.receive()
                        out.append((time.perf_counter() - start) * 1e6)
                    emit({"samples": out})
            await channel.aclose()
        nursery.cancel_scope.cancel()


# -- websockets (asyncio + uvloop) ---------------------------------------------------


async def run_ws(role: str, url: str) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    ws = await connect(url, compression=None, max_size=1 << 20, ping_interval=None, proxy=None)
    if role == "responder":
        emit({"ready": True, "peer_id": None})
        count = 0
        try:
            while True:
                reply, count = answer(await ws.recv(), count)
                if reply is not None:
                    await ws.send(reply)
        except ConnectionClosed:
            return
    await ws.send(b"E")
    await ws.recv()
    emit({"ready": True, "peer_id": None})
    async for command, a, b in asyncio_commands():
        if command == "tp":
            data, n = b"D" + os.urandom(b - 1), a // b
            start = time.perf_counter()
            for _ in range(n):
                await ws.send(data)
            await ws.send(b"F")
            await ws.recv()
            emit({"seconds": time.perf_counter() - start})
        else:
            data, out = b"E" + os.urandom(b - 1), []
            for _ in range(a):
                start = time.perf_counter()
                await ws.send(data)
                await ws.recv()
                out.append((time.perf_counter() - start) * 1e6)
            emit({"samples": out})
    await ws.close()


def main() -> None:
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: die with the orchestrator
    signal.alarm(900)
    kind, role, target = sys.argv[1:4]
    peer = sys.argv[4] if len(sys.argv) > 4 else None
    if os.environ.get("SDK_PEER_CPU"):
        os.sched_setaffinity(0, {int(os.environ["SDK_PEER_CPU"])})
    if kind == "ws":
        import uvloop

        uvloop.run(run_ws(role, target))
    else:
        import trio

        profile = os.environ.get("SDK_PEER_PROFILE")
        if profile:
            import cProfile

            # CPU time, not wall time: on a busy machine a write() that wakes the relay
            # is often preempted, and wall time would blame the write for it.
            profiler = cProfile.Profile(time.process_time)
            profiler.runcall(trio.run, run_sdk, kind, role, target, peer)
            profiler.dump_stats(f"{profile}.{kind}.{role}")
        else:
            trio.run(run_sdk, kind, role, target, peer)


if __name__ == "__main__":
    main()
