"""Raw TCP baseline clients for bench_relay.py: the splice relay and the trio echo server.

asyncio + uvloop, like the rest of the load generator, so the baselines are driven by a
client as cheap as the one driving our relay.
"""

from __future__ import annotations

import asyncio
import os
import time


async def tcp_pair(port: int):
    token = os.urandom(16)
    ra, wa = await asyncio.open_connection("127.0.0.1", port)
    rb, wb = await asyncio.open_connection("127.0.0.1", port)
    wa.write(token)
    wb.write(token)
    wa.write(b"x")
    await wa.drain()
    await rb.readexactly(1)  # paired
    return ra, wa, rb, wb


class ByteCounter(asyncio.Protocol):
    """A raw TCP receiver that only counts (the splice baseline's cheap sink)."""

    def __init__(self) -> None:
        self.received = 0
        self.target = 0
        self.done: asyncio.Future | None = None

    def expect(self, more: int) -> asyncio.Future:
        self.target = self.received + more
        self.done = asyncio.get_running_loop().create_future()
        if self.received >= self.target:
            self.done.set_result(time.perf_counter())
        return self.done

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.done is not None and self.received >= self.target and not self.done.done():
            self.done.set_result(time.perf_counter())

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError("connection lost"))


async def throughput_splice(target: dict, total: int, size: int) -> float:
    token = os.urandom(16)
    _, wa = await asyncio.open_connection("127.0.0.1", target["port"])
    counter = ByteCounter()
    tb, _ = await asyncio.get_running_loop().create_connection(
        lambda: counter, "127.0.0.1", target["port"]
    )
    tb.write(token)
    wa.write(token + b"x")
    await counter.expect(1)  # paired
    payload, count = os.urandom(size), total // size
    done = counter.expect(count * size)
    start = time.perf_counter()
    for _ in range(count):
        wa.write(payload)
        await wa.drain()
    end = await done
    wa.transport.abort()
    tb.abort()
    return end - start


async def rtt_tcp(target: dict, samples: int, size: int, echo: bool) -> list[float]:
    if echo:
        ra, wa = await asyncio.open_connection("127.0.0.1", target["port"])
    else:
        ra, wa, rb, wb = await tcp_pair(target["port"])
    payload, out = os.urandom(size), []
    for _ in range(samples):
        start = time.perf_counter()
        wa.write(payload)
        if not echo:
            wb.write(await rb.readexactly(size))
        await ra.readexactly(size)
        out.append((time.perf_counter() - start) * 1e6)
    wa.close()
    if not echo:
        wb.close()
    return out
