"""One data-channel peer in its own process, ours (trio) or aiortc's (asyncio), for
bench_datachannel.py, which starts two of them and relays their descriptions.

    python _dc_peer.py ours|aiortc offer|answer  [--rtt N] [--bytes B] [--seconds S]

Lines on stdin/stdout are JSON. Both print {"ready": true} once imported (the answerer
once its peer connection is made, too); the offerer then waits for {"go": true} (so
neither stack's start-up counts, nor competes for a CPU with the timed open), prints
{"sdp": offer}, reads {"sdp": answer}, opens a channel, and then measures, printing
one result line per measurement:

* {"open": s}: from just before the offer was made to the channel open and one 1-byte
  message echoed (so both ends are open);
* {"rtt": [s, ...], "rtt_cpu": [offerer s, answerer s]}: 100-byte messages echoed one
  at a time (--rtt of them), and each side's CPU time over them;
* {"bytes": n, "seconds": s, "cpu": [sender s, receiver s]}: 16 KiB messages for
  --seconds (or --bytes), then a small message whose echo proves all were received;
  each side's CPU time (user + system, this process) over the transfer.

The answerer reads {"sdp": offer}, prints {"sdp": answer} and serves the channel: a
message up to 1 KiB comes back unchanged ("cpu?" is answered with its CPU time so far),
bigger ones are only counted. It exits when its stdin closes. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time

LOOPBACK = "127.0.0.1"
SMALL = 1024
MESSAGE = 16384
HIGH_WATER = 1 << 20


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def emit(item: dict) -> None:
    sys.stdout.write(json.dumps(item) + "\n")
    sys.stdout.flush()


def read_item() -> dict:
    line = sys.stdin.readline()
    if not line:
        raise SystemExit(0)
    return json.loads(line)


def loopback_candidates_only(sdp: str) -> str:
    lines = sdp.split("\r\n")
    return "\r\n".join(
        line for line in lines if not line.startswith("a=candidate") or f" {LOOPBACK} " in line
    )


# ------------------------------------------------------------------------- ours (trio)


async def ours(role: str, args: argparse.Namespace) -> None:
    import trio

    from darkswap_trio.webrtc import PeerConnectionConfig, open_peer_connection

    config = PeerConnectionConfig(host_addresses=[LOOPBACK], high_water_mark=HIGH_WATER)
    if role == "offer":
        emit({"ready": True})

    async def read() -> dict:
        return await trio.to_thread.run_sync(read_item, abandon_on_cancel=True)

    if role == "answer":
        # Like the aiortc answerer below: the connection (socket, certificate) is made
        # before "ready", so neither answerer's set-up counts in the open time.
        async with open_peer_connection(config) as pc, trio.open_nursery() as nursery:
            emit({"ready": True})
            offer = (await read())["sdp"]
            await pc.set_remote_description(offer, "offer")
            emit({"sdp": await pc.create_answer()})
            channel = await pc.accept_data_channel()

            async def until_stdin_closes() -> None:
                await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
                nursery.cancel_scope.cancel()

            nursery.start_soon(until_stdin_closes)
            try:
                while True:
                    message = await channel.receive()
                    if message == "cpu?":
                        await channel.send(f"cpu:{cpu()}")
                    elif len(message) <= SMALL:
                        await channel.send(message)
            except (trio.BrokenResourceError, trio.EndOfChannel, trio.ClosedResourceError):
                pass  # the offerer is done and gone
        return
    await read()  # {"go": ...}: both peers are ready
    start = time.perf_counter()
    async with open_peer_connection(config) as pc:
        emit({"sdp": await pc.create_offer()})
        await pc.set_remote_description((await read())["sdp"], "answer")
        channel = await pc.create_data_channel("bench")
        await channel.send(b"x")
        await channel.receive()
        emit({"open": time.perf_counter() - start})
        ping = bytes(100)
        samples = []
        await channel.send("cpu?")
        their_before = float((await channel.receive())[4:])
        ours_before = cpu()
        for _ in range(args.rtt):
            sent = time.perf_counter()
            await channel.send(ping)
            await channel.receive()
            samples.append(time.perf_counter() - sent)
        ours_after = cpu()
        await channel.send("cpu?")
        their_after = float((await channel.receive())[4:])
        emit({"rtt": samples, "rtt_cpu": [ours_after - ours_before, their_after - their_before]})
        if args.bytes:
            await channel.send("cpu?")
            their_before = float((await channel.receive())[4:])
            ours_before = cpu()
            payload = bytes(MESSAGE)
            sent_bytes = 0
            started = time.perf_counter()
            deadline = started + args.seconds
            while sent_bytes < args.bytes and time.perf_counter() < deadline:
                await channel.send(payload)
                sent_bytes += MESSAGE
            await channel.send(b"sync")
            await channel.receive()
            elapsed = time.perf_counter() - started
            ours_after = cpu()
            await channel.send("cpu?")
            their_after = float((await channel.receive())[4:])
            emit(
                {
                    "bytes": sent_bytes,
                    "seconds": elapsed,
                    "cpu": [ours_after - ours_before, their_after - their_before],
                }
            )


# ---------------------------------------------------------------------- aiortc (asyncio)


async def theirs(role: str, args: argparse.Namespace) -> None:
    import aioice.ice
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    # aioice skips 127.0.0.1 and would check every interface: loopback only, like ours.
    aioice.ice.get_host_addresses = lambda **_: [LOOPBACK]
    loop = asyncio.get_running_loop()
    answerer_pc = None
    if role == "answer":  # made before "ready", as ours is
        answerer_pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    emit({"ready": True})

    async def read() -> dict:
        return await loop.run_in_executor(None, read_item)

    if role == "offer":
        await read()  # {"go": ...}: both peers are ready
    start = time.perf_counter()
    # iceServers=[]: never Google's STUN server.
    pc = answerer_pc or RTCPeerConnection(RTCConfiguration(iceServers=[]))
    inbox: asyncio.Queue = asyncio.Queue()
    try:
        if role == "answer":
            done = loop.create_future()

            def serve(channel) -> None:
                def on_message(message) -> None:
                    if message == "cpu?":
                        channel.send(f"cpu:{cpu()}")
                    elif len(message) <= SMALL:
                        channel.send(message)

                channel.on("message", on_message)

            pc.on("datachannel", serve)
            offer = (await read())["sdp"]
            await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            emit({"sdp": loopback_candidates_only(pc.localDescription.sdp)})
            loop.run_in_executor(
                None,
                lambda: (
                    sys.stdin.read(),
                    loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None)),
                ),
            )
            await done
            return
        channel = pc.createDataChannel("bench")
        channel.on("message", inbox.put_nowait)
        low = asyncio.Event()
        channel.bufferedAmountLowThreshold = HIGH_WATER // 2
        channel.on("bufferedamountlow", low.set)
        opened = loop.create_future()
        channel.on("open", lambda: opened.done() or opened.set_result(None))
        await pc.setLocalDescription(await pc.createOffer())
        emit({"sdp": loopback_candidates_only(pc.localDescription.sdp)})
        answer = (await read())["sdp"]
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        await opened
        channel.send(b"x")
        await inbox.get()
        emit({"open": time.perf_counter() - start})
        ping = bytes(100)
        samples = []
        channel.send("cpu?")
        their_before = float((await inbox.get())[4:])
        ours_before = cpu()
        for _ in range(args.rtt):
            sent = time.perf_counter()
            channel.send(ping)
            await inbox.get()
            samples.append(time.perf_counter() - sent)
        ours_after = cpu()
        channel.send("cpu?")
        their_after = float((await inbox.get())[4:])
        emit({"rtt": samples, "rtt_cpu": [ours_after - ours_before, their_after - their_before]})
        if args.bytes:
            channel.send("cpu?")
            their_before = float((await inbox.get())[4:])
            ours_before = cpu()
            payload = bytes(MESSAGE)
            sent_bytes = 0
            started = time.perf_counter()
            deadline = started + args.seconds
            while sent_bytes < args.bytes and time.perf_counter() < deadline:
                while channel.bufferedAmount > HIGH_WATER:
                    low.clear()
                    await low.wait()
                channel.send(payload)
                sent_bytes += MESSAGE
            channel.send(b"sync")
            await inbox.get()
            elapsed = time.perf_counter() - started
            ours_after = cpu()
            channel.send("cpu?")
            their_after = float((await inbox.get())[4:])
            emit(
                {
                    "bytes": sent_bytes,
                    "seconds": elapsed,
                    "cpu": [ours_after - ours_before, their_after - their_before],
                }
            )
    finally:
        await pc.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("stack", choices=["ours", "aiortc"])
    parser.add_argument("role", choices=["offer", "answer"])
    parser.add_argument("--rtt", type=int, default=0)
    parser.add_argument("--bytes", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    profile = os.environ.get("DC_PEER_PROFILE")  # a path prefix: cProfile this peer
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        if args.stack == "ours":
            import trio

            trio.run(ours, args.role, args)
        else:
            asyncio.run(theirs(args.role, args))
    finally:
        if profile:
            profiler.disable()
            profiler.dump_stats(f"{profile}-{args.stack}-{args.role}.prof")


if __name__ == "__main__":
    main()
