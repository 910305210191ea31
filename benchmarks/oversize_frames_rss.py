"""Issue #10 item 6: rounds of oversize frames against a `python -m relay` subprocess.

Each round opens ``--connections`` WebSocket sessions at once; each sends ``--frames``
text frames of 300 KiB (above the relay's 256 KiB max_frame_size: answered
frame_too_large, the session goes on) and then one 1.1 MiB frame (the WebSocket layer
closes 1009). The relay's RSS (VmRSS) is printed after every round.

    PYTHONPATH=$PWD python benchmarks/oversize_frames_rss.py --rounds 12
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import trio

from darkswap_trio.websocket import WebSocketHandshakeError, open_websocket


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def one_session(url: str, frames: int, size: int) -> None:
    try:
        async with open_websocket(url, max_message_size=4 << 20) as ws:
            for _ in range(frames):
                await ws.send("x" * size)
            await ws.send("y" * (1100 * 1024))
            with trio.move_on_after(5):
                while True:
                    await ws.receive()
    except (
        trio.BrokenResourceError, trio.EndOfChannel, trio.ClosedResourceError, OSError,
        WebSocketHandshakeError,
    ):  # fmt: skip
        pass


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--connections", type=int, default=24)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size-kib", type=int, default=300, help="size of the rounds' frames")
    args = parser.parse_args()
    # One attacking address: lift the per-IP connection rate, keep every other default.
    config = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    config.write("[limits]\nconnections_per_ip_rate = 0\nmax_sessions_per_ip = 0\n")
    config.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "--config", config.name, "--host", "127.0.0.1", "--port", "0",
         "--stun-port", "none", "--metrics-port", "none", "--auth", "open",
         "--log-level", "ERROR"],
        stdout=subprocess.PIPE, env=os.environ.copy(), text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        port = int(ready.split("signaling=")[1].split()[0])
        url = f"ws://127.0.0.1:{port}/signaling"
        print(f"start: rss {rss_mib(proc.pid):.1f} MiB")
        for round_no in range(1, args.rounds + 1):
            with trio.fail_after(120):
                async with trio.open_nursery() as nursery:
                    for _ in range(args.connections):
                        nursery.start_soon(one_session, url, args.frames, args.size_kib * 1024)
            await trio.sleep(0.5)
            print(f"round {round_no:2d}: rss {rss_mib(proc.pid):.1f} MiB", flush=True)
    finally:
        proc.terminate()
        proc.wait(10)
        os.unlink(config.name)


if __name__ == "__main__":
    trio.run(main)
