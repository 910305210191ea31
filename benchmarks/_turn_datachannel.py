"""The data-channel row of bench_turn.py: two aiortc peers, both with
``iceTransportPolicy="relay"``, through one TURN server (UDP to it), in this process.

Measured per server: bulk throughput (offerer -> answerer, bufferedAmount-paced, for
``seconds``), the median round trip of a 100-byte message echoed by the answerer, and
the server's CPU per relayed datagram: server CPU time (/proc/PID/stat) over the DTLS
datagrams both peers sent (aiortc's transport counters). Every such datagram crosses the
server twice (client -> allocation A -> allocation B -> client), so it is the cost of
one end-to-end relayed packet. aiortc (Python, one process for both peers) is the
bottleneck for throughput; the CPU figure is what tells the servers apart.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

from darkswap_trio.proto.turn import rest_api_credentials

CHUNK = 16 * 1024
HIGH_WATER = 1024 * 1024
ROUND_TRIPS = 50


def _packets(pc: Any) -> int:
    report = pc.sctp.transport._get_stats()
    return sum(s.packetsSent for s in report.values() if s.type == "transport")


async def _measure(
    port: int, secret: str, cpu: Callable[[], float], seconds: float
) -> dict[str, float]:
    from aiortc import (
        RTCConfiguration,
        RTCIceServer,
        RTCIceTransportPolicy,
        RTCPeerConnection,
    )

    username, password = rest_api_credentials(secret.encode(), "bench", 3600, time.time())
    server = RTCIceServer(f"turn:127.0.0.1:{port}?transport=udp", username, password)
    config = RTCConfiguration(iceServers=[server], iceTransportPolicy=RTCIceTransportPolicy.RELAY)
    offerer, answerer = RTCPeerConnection(config), RTCPeerConnection(config)
    bulk = offerer.createDataChannel("bulk")
    ping = offerer.createDataChannel("ping")
    received = {"bulk": 0}
    pong: asyncio.Queue[bytes] = asyncio.Queue()
    opened = asyncio.Event()
    open_count = 0

    @answerer.on("datachannel")
    def on_channel(channel: Any) -> None:
        @channel.on("message")
        def on_message(message: Any) -> None:
            if channel.label == "bulk":
                received["bulk"] += len(message)
            else:
                channel.send(message)

    def on_open() -> None:
        nonlocal open_count
        open_count += 1
        if open_count == 2:
            opened.set()

    bulk.on("open", on_open)
    ping.on("open", on_open)
    ping.on("message", pong.put_nowait)
    low = asyncio.Event()
    bulk.bufferedAmountLowThreshold = HIGH_WATER // 4
    bulk.on("bufferedamountlow", low.set)
    try:
        await offerer.setLocalDescription(await offerer.createOffer())
        await answerer.setRemoteDescription(offerer.localDescription)
        await answerer.setLocalDescription(await answerer.createAnswer())
        await offerer.setRemoteDescription(answerer.localDescription)
        await asyncio.wait_for(opened.wait(), 30)
        rtts = []
        for _ in range(ROUND_TRIPS):
            t0 = time.perf_counter()
            ping.send(bytes(100))
            await asyncio.wait_for(pong.get(), 5)
            rtts.append(time.perf_counter() - t0)
        packets0 = _packets(offerer) + _packets(answerer)
        cpu0, t0 = cpu(), time.perf_counter()
        chunk = bytes(CHUNK)
        while time.perf_counter() - t0 < seconds:
            if bulk.bufferedAmount > HIGH_WATER:
                low.clear()
                await low.wait()
            bulk.send(chunk)
            await asyncio.sleep(0)
        elapsed = time.perf_counter() - t0
        delivered = received["bulk"]
        cpu_used = cpu() - cpu0
        packets = _packets(offerer) + _packets(answerer) - packets0
    finally:
        await offerer.close()
        await answerer.close()
    return {
        "dc_mb_per_s": delivered / elapsed / 1e6,
        "dc_rtt_ms": 1e3 * statistics.median(rtts),
        "dc_cpu_us_per_packet": 1e6 * cpu_used / max(packets, 1),
        "dc_packets": packets,
    }


def measure_datachannel(
    port: int, secret: str, cpu: Callable[[], float], seconds: float
) -> dict[str, float]:
    """Run the data-channel measurement against the TURN server on 127.0.0.1:``port``."""
    return asyncio.run(_measure(port, secret, cpu, seconds))
