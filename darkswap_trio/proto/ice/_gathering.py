"""Server-reflexive gathering (RFC 8445 section 5.1.1.2): a Binding request from every
host candidate to every STUN server of its family, a candidate per new mapping.

:class:`Gathering` owns the STUN servers and the candidates learned; it starts its
transactions in the agent's :class:`~._timers.TransactionTable` and announces
candidates on the agent's :class:`~._events.IceOutbox`.
"""

from __future__ import annotations

from collections.abc import Callable

from ..stun import Class, Message, StunTransaction, binding_request, mapped_address
from ._checklist import Candidate, canonical_addr, server_reflexive_candidate
from ._events import CandidateGathered, GatheringComplete, IceOutbox
from ._stun import IceCredentials, ip_family
from ._timers import PendingTransaction, TransactionTable

__all__ = ["Gathering"]


class Gathering:
    """STUN servers, server-reflexive candidates, and whether gathering is complete."""

    def __init__(
        self,
        stun_servers: list[tuple[str, int]],
        credentials: IceCredentials,
        pending: TransactionTable,
        outbox: IceOutbox,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        self.servers = [canonical_addr(s) for s in stun_servers]
        self.srflx: list[Candidate] = []
        self.started = False
        self._done = False
        self._credentials = credentials
        self._pending = pending
        self._outbox = outbox
        self._busy = busy  # other gathering (relay allocations) still going on

    def add_server(self, addr: tuple[str, int]) -> None:
        server = canonical_addr(addr)
        if server not in self.servers:
            self.servers.append(server)

    def start(self, bases: list[Candidate], now: float) -> None:
        """Query every server of each base's family; :class:`GatheringComplete` follows."""
        if self.started:
            return
        self.started = True
        for base in bases:
            for server in self.servers:
                if ip_family(server[0]) != ip_family(base.host):
                    continue
                request = binding_request(self._credentials.transaction_id())
                request.add_fingerprint()
                self._pending.start(
                    PendingTransaction(
                        "gather",
                        StunTransaction(bytes(request), now),
                        server,
                        (base.host, base.port),
                        base=base,
                    )
                )
        self.maybe_complete()

    def restart(self) -> None:
        self.srflx.clear()
        self.started = self._done = False

    def on_response(
        self, message: Message, pending: PendingTransaction, known: set[tuple[str, int]]
    ) -> None:
        """A server answered (``known``: the addresses of our candidates so far)."""
        mapped = mapped_address(message) if message.message_class == Class.RESPONSE else None
        base = pending.base
        assert base is not None
        if mapped is not None:
            mapped = canonical_addr(mapped)
            if mapped not in known:
                candidate = server_reflexive_candidate(mapped, base)
                self.srflx.append(candidate)
                self._outbox.emit(CandidateGathered(candidate))
        self.maybe_complete()

    def maybe_complete(self) -> None:
        if self._done or not self.started or self._pending.has_kind("gather"):
            return
        if self._busy is not None and self._busy():
            return
        self._done = True
        self._outbox.emit(GatheringComplete())
