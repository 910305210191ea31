"""WebSocket benchmarks: relay-style forwarding throughput and memory per idle connection.

Run: python benchmarks/bench_websocket.py [--messages N] [--idle N]

(a) forward: a *forwarder* server process pairs a source connection with a sink
    connection and forwards every 64 KiB binary message (receive() -> send()), the
    shape of a relay circuit. Source and sink run in a second process (they write
    pre-masked frames and count raw bytes so that they stay cheap). Reported: payload
    MB/s through the forwarder and the forwarder's CPU per message. Compared in the same
    run with trio-websocket as forwarder and with a raw trio TCP splice (no framing).
(b) idle: a server process accepts N idle WebSocket connections (the clients run in a
    second process); reported: Python heap (tracemalloc) and RSS growth per connection,
    ours against trio-websocket.

Every process has a hard timeout; the script stops by itself and prints a table.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc

import trio

PAYLOAD = 64 * 1024
HERE = os.path.abspath(__file__)
TIMEOUT = 90


# --- forwarder (server process) ------------------------------------------------------------


async def forward_server(impl: str, messages: int) -> dict:
    sink_ready = trio.Event()
    done = trio.Event()
    slot: dict = {}
    result: dict = {}

    def finish(start_wall: float, start_cpu: float) -> None:
        wall = time.perf_counter() - start_wall
        cpu = time.process_time() - start_cpu
        result.update(
            mb_per_s=messages * PAYLOAD / wall / 1e6,
            cpu_us_per_msg=cpu / messages * 1e6,
            seconds=wall,
        )
        done.set()

    if impl == "raw":

        async def handle(stream: trio.SocketStream) -> None:
            first = await stream.receive_some(1)
            if first == b"K":  # the sink announces itself with one byte
                slot["sink"] = stream
                sink_ready.set()
                await trio.sleep_forever()
            await sink_ready.wait()
            sink, total, target = slot["sink"], 0, messages * PAYLOAD
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            while total < target:
                data = await stream.receive_some(256 * 1024)
                if not data:
                    break
                await sink.send_all(data)
                total += len(data)
            finish(start_wall, start_cpu)

        async def serve(task_status=trio.TASK_STATUS_IGNORED):
            await trio.serve_tcp(handle, 0, host="127.0.0.1", task_status=task_status)

    elif impl in ("ours", "ours-pure"):
        from darkswap_trio.proto.websocket import _frames as core
        from darkswap_trio.websocket import serve_websocket

        if impl == "ours-pure":
            core._c_apply_mask = None  # measure the stdlib-only unmasking path

        async def handler(request) -> None:
            ws = await request.accept()
            if request.path == "/sink":
                slot["sink"] = ws
                sink_ready.set()
                await trio.sleep_forever()
            await sink_ready.wait()
            sink = slot["sink"]
            await ws.receive()  # first message: start the clock
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(messages):
                await sink.send(await ws.receive())
            finish(start_wall, start_cpu)
            await trio.sleep_forever()

        async def serve(task_status=trio.TASK_STATUS_IGNORED):
            await serve_websocket(handler, "127.0.0.1", 0, task_status=task_status)

    else:
        import trio_websocket

        async def handler(request) -> None:
            ws = await request.accept()
            if request.path == "/sink":
                slot["sink"] = ws
                sink_ready.set()
                await trio.sleep_forever()
            await sink_ready.wait()
            sink = slot["sink"]
            await ws.get_message()
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(messages):
                await sink.send_message(await ws.get_message())
            finish(start_wall, start_cpu)
            await trio.sleep_forever()

        async def serve(task_status=trio.TASK_STATUS_IGNORED):
            await trio_websocket.serve_websocket(
                handler, "127.0.0.1", 0, None, task_status=task_status
            )

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            started = await nursery.start(serve)
            port = started.port if impl == "trio-websocket" else started[0].socket.getsockname()[1]
            print(json.dumps({"port": port}), flush=True)
            await done.wait()
            nursery.cancel_scope.cancel()
    return result


# --- source and sink (peer process) -----------------------------------------------------


async def forward_peers(impl: str, port: int, messages: int) -> None:
    from darkswap_trio.proto.websocket._connection import Opcode, encode_frame
    from darkswap_trio.websocket import open_websocket

    payload = os.urandom(PAYLOAD)
    if impl == "raw":
        sink = await trio.open_tcp_stream("127.0.0.1", port)
        await sink.send_all(b"K")
        source = await trio.open_tcp_stream("127.0.0.1", port)
        await source.send_all(b"S")
        chunk, expected = payload, messages * PAYLOAD
    else:
        sink_cm = open_websocket(f"ws://127.0.0.1:{port}/sink", max_message_size=1 << 20)
        source_cm = open_websocket(f"ws://127.0.0.1:{port}/source")
        sink = (await sink_cm.__aenter__())._stream  # raw bytes from here on: stay cheap
        source = (await source_cm.__aenter__())._stream
        chunk = encode_frame(Opcode.BINARY, payload, mask_key=os.urandom(4))
        expected = messages * (PAYLOAD + 10)  # server frames: 10-byte header, no mask
        messages += 1  # the forwarder ignores the first message (clock start)

    async def send_all() -> None:
        for _ in range(messages):
            await source.send_all(chunk)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_all)
        got = 0
        while got < expected:
            data = await sink.receive_some(1 << 20)
            if not data:
                break
            got += len(data)
        nursery.cancel_scope.cancel()


# --- idle connections ---------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


async def idle_server(impl: str, count: int, trace: bool) -> dict:
    accepted = 0
    all_in = trio.Event()

    def arrived() -> None:
        nonlocal accepted
        accepted += 1
        if accepted == count:
            all_in.set()

    if impl == "ours":
        from darkswap_trio.websocket import serve_websocket

        async def handler(request) -> None:
            ws = await request.accept()
            arrived()
            await ws.receive()

        async def serve(task_status=trio.TASK_STATUS_IGNORED):
            await serve_websocket(handler, "127.0.0.1", 0, task_status=task_status)

    else:
        import trio_websocket

        async def handler(request) -> None:
            ws = await request.accept()
            arrived()
            await ws.get_message()

        async def serve(task_status=trio.TASK_STATUS_IGNORED):
            await trio_websocket.serve_websocket(
                handler, "127.0.0.1", 0, None, task_status=task_status
            )

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            started = await nursery.start(serve)
            port = started.port if impl == "trio-websocket" else started[0].socket.getsockname()[1]
            gc.collect()
            if trace:
                tracemalloc.start()
            heap0, rss0 = (tracemalloc.get_traced_memory()[0] if trace else 0), rss_bytes()
            print(json.dumps({"port": port}), flush=True)
            await all_in.wait()
            for _ in range(20):  # let every handler reach its idle receive
                await trio.sleep(0)
            gc.collect()
            heap1, rss1 = (tracemalloc.get_traced_memory()[0] if trace else 0), rss_bytes()
            nursery.cancel_scope.cancel()
    if trace:
        return {"heap_per_conn": (heap1 - heap0) / count}
    return {"rss_per_conn": (rss1 - rss0) / count}


async def idle_peers(port: int, count: int) -> None:
    from darkswap_trio.websocket import open_websocket

    async with trio.open_nursery() as nursery:
        ready = trio.Semaphore(0)

        async def one() -> None:
            async with open_websocket(f"ws://127.0.0.1:{port}/idle"):
                ready.release()
                await trio.sleep_forever()

        for _ in range(count):
            nursery.start_soon(one)
        for _ in range(count):
            await ready.acquire()
        print("ready", flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)  # until the orchestrator closes stdin
        nursery.cancel_scope.cancel()


# --- orchestration ------------------------------------------------------------------------


def run_pair(server_args: list[str], peer_args: list[str]) -> dict:
    cmd = [sys.executable, HERE]
    server = subprocess.Popen(cmd + server_args, stdout=subprocess.PIPE, text=True)
    peers = None
    try:
        port = json.loads(server.stdout.readline())["port"]
        peers = subprocess.Popen(
            cmd + peer_args + ["--port", str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        out, _ = server.communicate(timeout=TIMEOUT)
        return json.loads(out.strip().splitlines()[-1])
    finally:
        for proc in (peers, server):
            if proc is not None:
                if proc.stdin:
                    proc.stdin.close()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--role", choices=["forward-server", "forward-peers", "idle-server",
                                           "idle-peers"])  # fmt: skip
    parser.add_argument("--impl", default="ours")
    parser.add_argument("--port", type=int)
    parser.add_argument("--trace", action="store_true")
    args = parser.parse_args()

    if args.role == "forward-server":
        print(json.dumps(trio.run(forward_server, args.impl, args.messages)), flush=True)
        return
    if args.role == "forward-peers":
        trio.run(forward_peers, args.impl, args.port, args.messages)
        return
    if args.role == "idle-server":
        print(json.dumps(trio.run(idle_server, args.impl, args.idle, args.trace)), flush=True)
        return
    if args.role == "idle-peers":
        trio.run(idle_peers, args.port, args.idle)
        return

    from darkswap_trio.proto.websocket import _frames as core

    print(f"{os.cpu_count()} CPUs; python {sys.version.split()[0]}; trio {trio.__version__}")
    print(f"\n(a) forwarding {args.messages} x 64 KiB binary messages, source -> forwarder -> sink")
    print(f"{'forwarder':<20}{'MB/s':>10}{'CPU us/msg':>12}")
    names = {
        "raw": "raw TCP splice",
        "ours": "ours (C unmask)" if core._c_apply_mask else "ours",
        "ours-pure": "ours (pure unmask)",
        "trio-websocket": "trio-websocket",
    }
    impls = ["raw", "ours", "ours-pure", "trio-websocket"]
    if not core._c_apply_mask:
        impls.remove("ours-pure")
    for impl in impls:
        n = str(args.messages)
        result = run_pair(
            ["--role", "forward-server", "--impl", impl, "--messages", n],
            ["--role", "forward-peers", "--impl", impl, "--messages", n],
        )
        print(f"{names[impl]:<20}{result['mb_per_s']:>10.0f}{result['cpu_us_per_msg']:>12.1f}")

    print(f"\n(b) {args.idle} idle connections, server-side growth per connection")
    print(f"{'server':<18}{'heap B/conn':>12}{'RSS B/conn':>12}")
    for impl in ("ours", "trio-websocket"):
        n = str(args.idle)
        peer = ["--role", "idle-peers", "--idle", n]
        heap = run_pair(["--role", "idle-server", "--impl", impl, "--idle", n, "--trace"], peer)
        rss = run_pair(["--role", "idle-server", "--impl", impl, "--idle", n], peer)
        print(f"{impl:<18}{heap['heap_per_conn']:>12.0f}{rss['rss_per_conn']:>12.0f}")


if __name__ == "__main__":
    main()
