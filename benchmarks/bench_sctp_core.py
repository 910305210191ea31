"""SCTP core throughput: two SctpAssociations wired in memory (no DTLS, no sockets).

Transfers 64 MiB in 16 KiB messages from one association to the other and prints a
table: MB/s of user data, packets/s (both directions), and the Python time spent per
packet. "batch" is how many arriving packets a side handles before it polls its
output, as a driver draining a socket would. "sack/pkts" is the association's
``max_packets_per_sack`` (2: the RFC's every-second-packet, even inside a batch; "-":
None, one stretch SACK per poll).

    python benchmarks/bench_sctp_core.py [--mib 64] [--message-kib 16]

Bounded: each run stops after --max-seconds of wall time and reports what it moved.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import deque

from darkswap_trio.proto.sctp import MessageReceived, SctpAssociation, SctpState


def _pump(src: SctpAssociation, queue: deque) -> None:
    while (packet := src.poll_transmit()) is not None:
        queue.append(packet)


def run(
    total: int, message_size: int, batch: int, sack_every: int | None, max_seconds: float
) -> dict:
    a = SctpAssociation(True, rng=random.Random(1), max_packets_per_sack=sack_every)
    b = SctpAssociation(False, rng=random.Random(2), max_packets_per_sack=sack_every)
    to_b: deque[bytes] = deque()
    to_a: deque[bytes] = deque()
    now = 0.0
    a.connect(now)
    b.connect(now)
    for _ in range(10):
        _pump(a, to_b)
        _pump(b, to_a)
        while to_b:
            b.receive(to_b.popleft(), now)
        while to_a:
            a.receive(to_a.popleft(), now)
    assert a.state is b.state is SctpState.ESTABLISHED
    while a.poll_event() or b.poll_event():
        pass

    message = bytes(message_size)
    queued = received = packets = 0
    high_water = 1 << 20  # the driver's send-buffer bound (backpressure)
    start = time.perf_counter()
    cpu_start = time.process_time()
    deadline = start + max_seconds
    while received < total:
        now += 0.0002  # simulated time: 0.2 ms per round
        while queued < total and a.buffered_amount() < high_water:
            a.send(1, 53, message, now)
            queued += message_size
        _pump(a, to_b)
        for _ in range(max(1, len(to_b) // batch)):
            for _ in range(min(batch, len(to_b))):
                b.receive(to_b.popleft(), now)
                packets += 1
            _pump(b, to_a)
            while (event := b.poll_event()) is not None:
                if type(event) is MessageReceived:
                    received += len(event.data)
        while to_a:
            a.receive(to_a.popleft(), now)
            packets += 1
        while a.poll_event() is not None:
            pass
        timeout = a.poll_timeout()
        if timeout is not None and timeout <= now:
            a.handle_timeout(now)
        timeout = b.poll_timeout()
        if timeout is not None and timeout <= now:
            b.handle_timeout(now)
        if time.perf_counter() > deadline:
            break
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    stats = a.statistics()
    return {
        "batch": batch,
        "sack_every": "-" if sack_every is None else sack_every,
        "mib": received / (1 << 20),
        "seconds": wall,
        "mb_per_s": received / wall / 1e6,
        "packets_per_s": packets / wall,
        "us_per_packet": cpu / packets * 1e6,
        "data_packets": stats.packets_sent,
        "sack_packets": b.statistics().packets_sent,
        "retransmissions": stats.retransmissions,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--message-kib", type=int, default=16)
    parser.add_argument("--max-seconds", type=float, default=30.0)
    args = parser.parse_args()
    rows = [
        run(args.mib << 20, args.message_kib << 10, batch, sack_every, args.max_seconds)
        for batch, sack_every in ((1, 2), (32, 2), (32, None))
    ]
    print(f"SCTP core, {args.mib} MiB in {args.message_kib} KiB messages, in memory, one process")
    print(
        f"{'batch':>5} {'sack/pkts':>9} {'MiB':>6} {'s':>6} {'MB/s':>7} {'pkt/s':>8} {'us/pkt':>7} "
        f"{'DATA pkts':>9} {'SACK pkts':>9} {'rtx':>4}"
    )
    for r in rows:
        print(
            f"{r['batch']:>5} {r['sack_every']:>9} {r['mib']:>6.1f} {r['seconds']:>6.2f} "
            f"{r['mb_per_s']:>7.1f} "
            f"{r['packets_per_s']:>8.0f} {r['us_per_packet']:>7.2f} {r['data_packets']:>9} "
            f"{r['sack_packets']:>9} {r['retransmissions']:>4}"
        )
    print("us/pkt: CPU time of both associations per packet handled (sent + received).")


if __name__ == "__main__":
    main()
