"""IncomingCircuitPolicy: what a peer does with relay circuits it did not ask for.

Any registered identity can open circuits to us; one that opens them and never sends
would otherwise hold them (and the relay's per-target slots) forever (issue #10,
item 5). The policy P2PNetwork applies to each incoming circuit before it knows what
it is: at most ``max_unclaimed`` per peer may wait for their first message, which must
come within ``idle_timeout``; a plain (non-link) circuit is kept only if
``accept_relay_circuits`` allows its peer, and closes after ``idle_timeout`` with no
message either way. Link circuits (LINK_HELLO first) belong to their link after that.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import trio

from .._config import P2PConfig
from ._circuit import RelayCircuit

log = logging.getLogger("darkswap_trio.network")

CircuitFilter = Callable[[str], bool]


@dataclass(frozen=True)
class IncomingCircuitStatistics:
    unclaimed: int  # incoming circuits waiting for their first message now
    refused: int  # plain circuits closed because accept_relay_circuits said no
    over_limit: int  # closed at once: the peer already had max_unclaimed waiting
    idle_closed: int  # closed after idle_timeout without a message


class IncomingCircuitPolicy:
    def __init__(
        self, accept: bool | CircuitFilter, idle_timeout: float, max_unclaimed: int
    ) -> None:
        self._accept = accept
        self.idle_timeout = idle_timeout
        self.max_unclaimed = max_unclaimed
        self._unclaimed: dict[str, int] = {}
        self.refused = self.over_limit = self.idle_closed = 0

    async def first_message(self, circuit: RelayCircuit) -> bytes | None:
        """The circuit's first message; None once it is closed (by the far end, or here:
        one too many waiting from its peer, or silent for ``idle_timeout``)."""
        peer = circuit.peer_id
        if self._unclaimed.get(peer, 0) >= self.max_unclaimed:
            self.over_limit += 1
            log.info(
                "closing circuit %s from %s: %d unclaimed circuits from it already",
                circuit.relay_id,
                peer,
                self.max_unclaimed,
            )
            await circuit.aclose(reason="too_many_circuits")
            return None
        self._unclaimed[peer] = self._unclaimed.get(peer, 0) + 1
        try:
            with trio.move_on_after(self.idle_timeout):
                try:
                    return await circuit.receive()
                except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError):
                    return None
        finally:
            left = self._unclaimed[peer] - 1
            if left:
                self._unclaimed[peer] = left
            else:
                del self._unclaimed[peer]
        self.idle_closed += 1
        await circuit.aclose(reason="idle")
        return None

    @classmethod
    def from_config(cls, p2p: P2PConfig) -> IncomingCircuitPolicy:
        return cls(
            p2p.accept_relay_circuits,
            p2p.relay_circuit_idle_timeout,
            p2p.max_unclaimed_relay_circuits,
        )

    async def admit_plain(self, circuit: RelayCircuit, first: bytes | None) -> bytes | None:
        """``first`` if this plain circuit is accepted; else it is closed (``refused``), None."""
        if first is None or self.accepts_plain(circuit.peer_id):
            return first
        self.refused += 1
        await circuit.aclose(reason="refused")
        return None

    def accepts_plain(self, peer_id: str) -> bool:
        """Whether a plain circuit (connect_via_relay) from ``peer_id`` is accepted."""
        if isinstance(self._accept, bool):
            return self._accept
        try:
            return bool(self._accept(peer_id))
        except Exception:  # a faulty filter refuses; it never breaks the network
            log.exception("accept_relay_circuits filter failed for %s; refusing", peer_id)
            return False

    def statistics(self) -> IncomingCircuitStatistics:
        return IncomingCircuitStatistics(
            sum(self._unclaimed.values()), self.refused, self.over_limit, self.idle_closed
        )


async def receive_or_idle(circuit: RelayCircuit, idle_timeout: float | None) -> bytes:
    """``circuit.receive()``, closing the circuit (reason ``idle``) once no message has
    gone either way for ``idle_timeout`` seconds; raises what receive() raises."""
    while True:
        deadline = math.inf if idle_timeout is None else circuit.last_activity + idle_timeout
        with trio.move_on_at(deadline):
            return await circuit.receive()
        if trio.current_time() >= circuit.last_activity + idle_timeout:  # type: ignore[operator]
            await circuit.aclose(reason="idle")
