"""Two PeerLinks over an in-memory relay circuit (no relay, no sockets): deterministic
under MockClock, so tests can count task steps and frames per message.

Each direction of the circuit is a :class:`Wire`: what one end writes (always at once,
like a free session with room in its socket) is delivered to the other end by a reader
task, as a relay session's reader task delivers circuit frames.
"""

from __future__ import annotations

from collections import deque
from contextlib import asynccontextmanager

import trio

from darkswap_trio._p2p._peer_link import PeerLink
from darkswap_trio._relay_client._circuit import RelayCircuit
from darkswap_trio.proto.link import parse_hello_untrusted
from darkswap_trio.proto.signaling import CircuitLimits

LIMITS = CircuitLimits(window=16 << 20, max_data_frame=64 * 1024)


class Wire:
    """One direction of a circuit: frames written, then delivered by :meth:`run`."""

    def __init__(self) -> None:
        self.target: RelayCircuit | None = None  # the receiving end
        self.frames: deque[bytes] = deque()
        self.kinds: list[int] = []  # first byte of every frame written (link frame type)
        self._arrived = trio.Event()

    def try_send(self, payload: bytes) -> bool:
        self.frames.append(bytes(payload))
        self.kinds.append(payload[0] if payload else -1)
        self._arrived.set()
        return True

    async def send(self, payload: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self.try_send(payload)

    async def run(self) -> None:
        while True:
            await self._arrived.wait()
            self._arrived = trio.Event()
            while self.frames:
                assert self.target is not None
                self.target._deliver(self.frames.popleft())


class _Owner:
    """A LinkOwner that asks for nothing (the circuit never dies in these tests)."""

    def __getattr__(self, name: str):
        return lambda *args: None


async def _nothing(*args: object) -> None:
    await trio.lowlevel.checkpoint()


def circuit_pair(nursery: trio.Nursery) -> tuple[RelayCircuit, RelayCircuit, Wire, Wire]:
    """(opener's circuit, acceptor's circuit, opener->acceptor wire, the other wire)."""
    ab, ba = Wire(), Wire()
    ends: list[RelayCircuit] = []

    def credit_to(index: int):
        async def send_credit(key: bytes, increment: int) -> None:
            await trio.lowlevel.checkpoint()
            ends[index]._add_credit(increment)

        return send_credit

    for out, initiator in ((ab, True), (ba, False)):
        ends.append(
            RelayCircuit(
                "00000000-0000-0000-0000-000000000001",
                bytes(16),
                "B" if initiator else "A",
                LIMITS,
                initiator=initiator,
                send_data=out.send,
                try_send_data=out.try_send,
                flush=_nothing,
                flush_needed=lambda: False,
                send_credit=credit_to(1 if initiator else 0),
                send_close=_nothing,
                on_closed=lambda circuit: None,
            )
        )
    ab.target, ba.target = ends[1], ends[0]
    nursery.start_soon(ab.run)
    nursery.start_soon(ba.run)
    return ends[0], ends[1], ab, ba


@asynccontextmanager
async def link_pair():
    """(opener's link, acceptor's link, opener->acceptor wire, the other wire)."""
    async with trio.open_nursery() as nursery:
        circuit_a, circuit_b, ab, ba = circuit_pair(nursery)
        a = PeerLink("B", nursery, _Owner(), local_peer_id="A")  # type: ignore[arg-type]
        b = PeerLink("A", nursery, _Owner(), local_peer_id="B")  # type: ignore[arg-type]
        await circuit_a.send(a.hello)  # the opener's HELLO, as the network sends it
        hello = parse_hello_untrusted(await circuit_b.receive())
        assert hello is not None
        b.remote_link_id = hello[0]
        assert a.attach_relay(circuit_a) and b.attach_relay(circuit_b)
        await a.wait_ready()
        await b.wait_ready()
        yield a, b, ab, ba
        nursery.cancel_scope.cancel()
