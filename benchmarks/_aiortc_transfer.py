"""One timed bulk transfer over an open aiortc data channel (shared by the benchmarks)."""

from __future__ import annotations

import asyncio
import time


async def aiortc_transfer(channel, remote, total: int, seconds: float, message: int,
                          high_water: int) -> tuple[int, float]:
    """Send ``total`` bytes in ``message``-byte messages on ``channel`` (at most
    ``high_water`` buffered) and count them arriving on ``remote``; (bytes, seconds),
    capped at ``seconds``."""
    done = asyncio.get_running_loop().create_future()
    received = 0

    def on_message(data: bytes) -> None:
        nonlocal received
        received += len(data)
        if received >= total and not done.done():
            done.set_result(None)

    remote.on("message", on_message)
    low = asyncio.Event()
    channel.bufferedAmountLowThreshold = high_water // 2
    channel.on("bufferedamountlow", low.set)
    payload = bytes(message)

    async def send_all() -> None:
        for _ in range(total // message):
            while channel.bufferedAmount > high_water:
                low.clear()
                await low.wait()
            channel.send(payload)
        await done

    start = time.perf_counter()
    try:
        await asyncio.wait_for(send_all(), seconds)
    except TimeoutError:
        pass
    return received, time.perf_counter() - start
