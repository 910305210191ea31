"""Issue #10 item 4: idle TCP connections against a `python -m relay` at a 1,024 fd limit.

Opens ``--per-ip`` idle connections (nothing sent) from each of ``--addresses`` loopback
addresses (127.0.0.10, .11, ...), then checks whether an honest peer from 127.0.0.1 can
register and whether /metrics answers, each within 5 s. The relay runs with
RLIMIT_NOFILE = (``--soft``, ``--hard``).

    PYTHONPATH=$PWD python benchmarks/idle_connections_fds.py --soft 1024 --hard 1024
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys

import trio

from darkswap_trio import Keypair
from darkswap_trio.proto.signaling import Register, encode_message
from darkswap_trio.websocket import open_websocket


async def honest_registers(port: int) -> str:
    try:
        with trio.fail_after(5):
            async with open_websocket(f"ws://127.0.0.1:{port}/signaling") as ws:
                await ws.send(encode_message(Register(peer_id=str(Keypair.generate().peer_id))))
                reply = await ws.receive()
                return "registered" if "Registered" in str(reply) else f"answer {reply!r:.60}"
    except Exception as exc:  # what failed is the result
        return f"failed: {type(exc).__name__} {exc}"[:100]


async def metrics_answers(port: int) -> str:
    try:
        with trio.fail_after(5):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                head = await stream.receive_some(64)
                return head.split(b"\r\n")[0].decode()
    except Exception as exc:
        return f"failed: {type(exc).__name__} {exc}"[:100]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--addresses", type=int, default=41)
    parser.add_argument("--per-ip", type=int, default=28)
    parser.add_argument("--soft", type=int, default=1024)
    parser.add_argument("--hard", type=int, default=1024)
    args = parser.parse_args()
    soft, hard = args.soft, args.hard
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "--host", "127.0.0.1", "--port", "0",
         "--stun-port", "none", "--metrics-port", "0", "--auth", "open", "--log-level", "ERROR"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=os.environ.copy(), text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
    )  # fmt: skip
    idle: list[trio.SocketStream] = []
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        port = int(ready.split("signaling=")[1].split()[0])
        metrics_port = int(ready.split("metrics=")[1].split()[0])
        opened = failed = 0
        for a in range(args.addresses):
            for _ in range(args.per_ip):
                try:
                    with trio.fail_after(2):
                        idle.append(
                            await trio.open_tcp_stream(
                                "127.0.0.1", port, local_address=f"127.0.0.{10 + a}"
                            )
                        )
                    opened += 1
                except (OSError, trio.TooSlowError):
                    failed += 1
        await trio.sleep(0.5)  # let the relay accept what the kernel queued
        fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
        print(f"idle connections opened {opened}, failed {failed}; relay fds in use {fds}")
        print(f"honest peer: {await honest_registers(port)}")
        print(f"/metrics: {await metrics_answers(metrics_port)}")
    finally:
        for stream in idle:
            stream.socket.close()
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    trio.run(main)
