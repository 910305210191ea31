"""One timed bulk transfer over an open data channel, ours or aiortc's (shared by the
data-channel benchmarks)."""

from __future__ import annotations

import asyncio
import time

import trio


async def aiortc_transfer(
    channel, remote, total: int, seconds: float, message: int, high_water: int
) -> tuple[int, float]:
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


async def our_transfer(
    channel, accepted, total: int, seconds: float, message: int
) -> tuple[int, float]:
    """Send ``total`` bytes in ``message``-byte messages on our ``channel`` and count them
    arriving on ``accepted``; (bytes, seconds), capped at ``seconds``."""
    payload = bytes(message)
    received = 0
    start = time.perf_counter()
    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:

            async def send_all() -> None:
                for _ in range(total // message):
                    await channel.send(payload)

            nursery.start_soon(send_all)
            while received < total:
                received += len(await accepted.receive())
    return received, time.perf_counter() - start
