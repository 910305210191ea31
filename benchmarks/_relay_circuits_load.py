"""The many-circuits load of bench_relay.py (the ``circuits`` command of _relay_loadgen.py).

``count`` circuits, each between two sessions of its own, every sender writing 16 KiB
DATA frames as fast as its credit allows, every receiver counting bytes and returning
credit once half the circuit's announced window is owed (as clients do).

What is measured is the relay's fair sharing, so nothing else may vary meanwhile:
- every circuit is open before the first byte is sent (setup is not timed);
- the clock starts only once every circuit has moved its whole first window and four
  frames more: the circuits opened first were announced larger windows (the budget was
  still empty) and their first window is a burst that says nothing about sharing;
- the load generator's CPU over the measured seconds is returned beside the relay's,
  so a reader sees when the generator, not the relay, was the limit.
"""

from __future__ import annotations

import asyncio
import os
import time

from _relay_loadgen import (
    CircuitEnd,
    CountingReceiver,
    open_circuit,
    premasked_binary_frame,
    register,
)
from _relay_servers import cpu_seconds

from darkswap_trio import Keypair, PeerId
from darkswap_trio.proto import signaling as sig

WARMUP_MIN, WARMUP_MAX = 1.0, 30.0  # seconds


async def cmd_circuits(cmd: dict) -> dict:
    target, count, size, seconds = cmd["target"], cmd["count"], cmd["size"], cmd["seconds"]
    relay = PeerId.from_string(target["peer_id"])
    keys = [(Keypair.generate(), Keypair.generate()) for _ in range(count)]
    gate = asyncio.Semaphore(cmd.get("concurrency", 64))

    async def setup(ka: Keypair, kb: Keypair):
        async with gate:
            a = await register(target["url"], relay, ka)
            b = await register(target["url"], relay, kb)
            return await open_circuit(a, b, str(kb.peer_id), str(ka.peer_id))

    setup_start = time.perf_counter()
    circuits = await asyncio.gather(*(setup(ka, kb) for ka, kb in keys))
    setup_seconds = time.perf_counter() - setup_start
    counters = [CountingReceiver(b.ws, size, b) for _, b in circuits]

    async def send(end: CircuitEnd) -> None:
        wire = premasked_binary_frame(sig.encode_circuit_data(end.key, os.urandom(size)))
        while True:
            await end.send_prebuilt(wire, size)

    tasks = [asyncio.ensure_future(send(a)) for a, _ in circuits]
    warmup_start = time.perf_counter()
    await asyncio.sleep(min(WARMUP_MIN, seconds / 4))
    firsts = [b.window + 4 * size for _, b in circuits]
    deadline = warmup_start + WARMUP_MAX
    while time.perf_counter() < deadline and any(
        c.payload_received < first for c, first in zip(counters, firsts, strict=True)
    ):
        await asyncio.sleep(0.1)
    warmup_seconds = time.perf_counter() - warmup_start

    server0, client0 = cpu_seconds(target["pid"]), time.process_time()
    before = [c.payload_received for c in counters]
    start = time.perf_counter()
    await asyncio.sleep(seconds)
    received = [c.payload_received - b for c, b in zip(counters, before, strict=True)]
    elapsed = time.perf_counter() - start
    server_cpu = (cpu_seconds(target["pid"]) - server0) / elapsed
    client_cpu = (time.process_time() - client0) / elapsed
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for a, b in circuits:
        a.ws.transport.abort()
        b.ws.transport.abort()
    return {
        "bytes": received,
        "windows": [b.window for _, b in circuits],
        "seconds": elapsed,
        "setup_seconds": setup_seconds,
        "warmup_seconds": warmup_seconds,
        "server_cpu": server_cpu,
        "client_cpu": client_cpu,
    }
