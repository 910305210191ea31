"""A seeded, impairing UDP proxy on 127.0.0.1 between two peers (benchmarks only).

Each peer is told the other's candidate is a proxy port: A learns B at ``port_for_b``
and B learns A at ``port_for_a`` (see :func:`rewrite_candidates`). The proxy forwards
what arrives at ``port_for_a`` (from B) to A out of ``port_for_b``, and the reverse, so
each side sees its peer at the address it was told. Loss, duplication and reordering
(a datagram held back until 1-3 later datagrams of its direction passed, at most
``hold_seconds``) come from one ``random.Random(seed)``; they apply only while
``enabled`` is set, so the handshakes run clean and only the transfer is impaired.

The proxy runs its own ``trio.run`` on a worker thread, so the same proxy serves our
trio peers and aiortc's asyncio peers alike.
"""

from __future__ import annotations

import queue
import random
import re
import threading
from dataclasses import dataclass, field

import trio

LOOPBACK = "127.0.0.1"
_CANDIDATE = re.compile(r"(a=candidate:\S+ \d+ udp \d+ 127\.0\.0\.1 )(\d+)( typ host)", re.I)


def candidate_port(sdp: str) -> int:
    """The port of the (single, loopback) host candidate in ``sdp``."""
    match = _CANDIDATE.search(sdp)
    if match is None:
        raise ValueError("no 127.0.0.1 host candidate in the description")
    return int(match.group(2))


def rewrite_candidates(sdp: str, port: int) -> str:
    """``sdp`` with every loopback host candidate moved to ``port`` (the proxy)."""
    return _CANDIDATE.sub(lambda m: f"{m.group(1)}{port}{m.group(3)}", sdp)


@dataclass
class Impairment:
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    hold_seconds: float = 0.005
    seed: int = 0
    enabled: bool = False
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("forwarded", "lost", "duplicated", "held"), 0)
    )


class ImpairedProxy:
    """Start with :meth:`start` (returns the two proxy ports), stop with :meth:`stop`."""

    def __init__(self, impairment: Impairment) -> None:
        self.impairment = impairment
        self.peer_a: tuple[str, int] | None = None  # real addresses, set from the SDP
        self.peer_b: tuple[str, int] | None = None
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._cancel: trio.CancelScope | None = None

    def start(self) -> tuple[int, int]:
        ready: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=trio.run, args=(self._main, ready), daemon=True)
        self._thread.start()
        return ready.get(timeout=10)

    def stop(self) -> None:
        if self._token is not None and self._cancel is not None:
            try:
                trio.from_thread.run_sync(self._cancel.cancel, trio_token=self._token)
            except trio.RunFinishedError:
                pass  # the proxy had already stopped (its error was printed by the thread)
        if self._thread is not None:
            self._thread.join(timeout=10)

    async def _main(self, ready: queue.Queue) -> None:
        self._token = trio.lowlevel.current_trio_token()
        rng = random.Random(self.impairment.seed)
        with trio.CancelScope() as self._cancel:
            sock_a = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
            sock_b = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
            with sock_a, sock_b:
                await sock_a.bind((LOOPBACK, 0))
                await sock_b.bind((LOOPBACK, 0))
                ready.put((sock_a.getsockname()[1], sock_b.getsockname()[1]))
                async with trio.open_nursery() as nursery:
                    # Arriving at A's proxy port (from B): out of B's proxy port to A.
                    nursery.start_soon(self._forward, sock_a, sock_b, "a", rng)
                    nursery.start_soon(self._forward, sock_b, sock_a, "b", rng)

    async def _forward(self, inbound, outbound, to: str, rng: random.Random) -> None:
        imp = self.impairment
        counts = imp.counts
        held: list[list] = []  # [datagrams still to pass, deadline, data]

        async def release_late() -> None:
            while True:  # bounded by the proxy's cancel scope
                await trio.sleep(0.001)
                now = trio.current_time()
                # Take the due ones out before any await: the other loop edits ``held``.
                due = [h for h in held if h[1] <= now]
                held[:] = [h for h in held if h[1] > now]
                for item in due:
                    await send(item[2])

        async def send(data: bytes) -> None:
            target = self.peer_a if to == "a" else self.peer_b
            if target is not None:
                counts["forwarded"] += 1
                try:
                    await outbound.sendto(data, target)
                except OSError:
                    pass  # a peer that closed first: ICMP port unreachable

        async with trio.open_nursery() as nursery:
            nursery.start_soon(release_late)
            while True:
                try:
                    data, _ = await inbound.recvfrom(65536)
                except ConnectionRefusedError:
                    continue  # ICMP from an earlier send to a closed peer port
                if not imp.enabled:
                    await send(data)
                    continue
                if rng.random() < imp.loss:
                    counts["lost"] += 1
                    continue
                copies = 1
                if rng.random() < imp.duplicate:
                    counts["duplicated"] += 1
                    copies = 2
                for _ in range(copies):
                    if rng.random() < imp.reorder:
                        counts["held"] += 1
                        deadline = trio.current_time() + imp.hold_seconds
                        held.append([rng.randint(1, 3), deadline, data])
                        continue
                    for item in held:
                        item[0] -= 1
                    due = [h for h in held if h[0] <= 0]
                    held[:] = [h for h in held if h[0] > 0]
                    await send(data)
                    for item in due:
                        await send(item[2])
