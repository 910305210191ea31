"""The server's own accept loop (websocket/_transport.py) when the process runs out of file
descriptors: accept(2) fails with EMFILE, the loop says so and retries, and once the held
connections are gone it serves new ones. A real server process with a low RLIMIT_NOFILE."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import trio

from darkswap_trio.websocket import open_websocket

SERVER = textwrap.dedent(
    """
    import logging, resource, sys, trio
    from darkswap_trio.websocket import serve_websocket

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (48, hard))
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)

    async def echo(request):
        ws = await request.accept()
        while True:
            await ws.send(await ws.receive())

    async def main():
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(serve_websocket, echo, "127.0.0.1", 0)
            print(listeners[0].socket.getsockname()[1], flush=True)
            await trio.sleep(60)  # the test kills it long before
            raise SystemExit("not stopped by the test")

    trio.run(main)
    """
)


async def _wait_for(stream: trio.lowlevel.FdStream, text: bytes) -> None:
    seen = b""
    while text not in seen:
        chunk = await stream.receive_some()
        assert chunk, f"the server ended without saying {text!r}: {seen.decode()}"
        seen += chunk


async def _held_then_served(proc: subprocess.Popen[bytes], port: int) -> None:
    assert proc.stderr is not None
    with trio.fail_after(20):
        # More TCP connections than the server has descriptors: the kernel completes them
        # (listen backlog), the server's accept(2) meets EMFILE.
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(80)]
        async with trio.lowlevel.FdStream(os.dup(proc.stderr.fileno())) as log:
            await _wait_for(log, b"accept returned EMFILE")
        for sock in held:
            sock.close()
        # The loop kept going: a new client is upgraded and served.
        async with open_websocket(f"ws://127.0.0.1:{port}/") as ws:
            await ws.send(b"still serving")
            assert await ws.receive() == b"still serving"
        assert proc.poll() is None


def test_out_of_file_descriptors_the_accept_loop_retries_and_serves_again():
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        trio.run(_held_then_served, proc, port)
    finally:
        proc.kill()
        proc.communicate(timeout=15)
