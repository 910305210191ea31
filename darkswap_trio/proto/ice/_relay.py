"""Relay candidates (RFC 8445 section 5.1.1.2): a TURN allocation per TURN server,
its relayed address a local candidate that is paired and checked like the others.

The agent sees a relay candidate as one more local base whose address is the
relayed address. :class:`RelayCandidates` sits between the agent and the socket:
what the agent sends from a relayed address goes to the peer through the
allocation (Send indication or ChannelData from the host socket to the TURN
server; the :class:`~darkswap_trio.proto.turn.TurnClient` installs the permission
and binds a channel first), and what the TURN server delivers comes back to the
agent as a datagram from the peer received on the relayed address. The clients
refresh allocations, permissions and channels while they are used, and free the
allocations the selected pair does not use once it is selected, and all of them when
the agent closes.

One allocation per server, from the first host base of the server's address
family: more would only add candidates with the same relayed role.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from aioice.candidate import Candidate, candidate_foundation, candidate_priority

from ..turn.client import TurnClient, TurnClientSettings
from ..turn.client_events import Allocated, AllocationFailed, PeerData
from ._checklist import COMPONENT, canonical_addr
from ._events import IceOutbox, Transmit
from ._stun import ip_family

__all__ = ["RelayCandidates", "relay_candidate", "relay_candidates_for"]

Address = tuple[str, int]


def relay_candidate(
    relayed: Address, mapped: Address | None, server: Address, local_pref: int = 65535
) -> Candidate:
    """A relay candidate: type preference 0, raddr/rport the server-reflexive address
    the TURN server saw (RFC 8839 section 5.1), foundation per server (RFC 8445 5.1.1.3)."""
    host, port = canonical_addr(relayed)
    return Candidate(
        foundation=candidate_foundation("relay", "udp", server[0]),
        component=COMPONENT,
        transport="udp",
        priority=candidate_priority(COMPONENT, "relay", local_pref),
        host=host,
        port=port,
        type="relay",
        related_address=mapped[0] if mapped else None,
        related_port=mapped[1] if mapped else None,
    )


class RelayOwner(Protocol):
    """What :class:`RelayCandidates` calls back into (the agent)."""

    def receive(
        self, data: bytes, addr: Address, now: float, local: Address | None = None
    ) -> None: ...
    def _relay_candidate(self, candidate: Candidate, now: float) -> None: ...
    def _relay_settled(self) -> None: ...
    @property
    def remote_candidates(self) -> list[Candidate]: ...


def relay_candidates_for(
    owner: RelayOwner,
    servers: Sequence[TurnClientSettings],
    relay_only: bool,
    outbox: IceOutbox,
    rng: random.Random,
) -> RelayCandidates | None:
    """The agent's relay candidates (None without TURN servers)."""
    if relay_only and not servers:
        raise ValueError("a relay-only agent needs a TURN server")
    if not servers:
        return None
    return RelayCandidates(
        list(servers),
        outbox,
        rng,
        owner._relay_candidate,
        lambda data, peer, relayed, now: owner.receive(data, peer, now, relayed),
        owner._relay_settled,
        lambda: [(c.host, c.port) for c in owner.remote_candidates],
    )


@dataclass
class _Allocation:
    client: TurnClient
    base: Address  # the host socket address the allocation is reached from
    server: Address  # canonical (parsing addresses is a per-datagram cost)
    candidate: Candidate | None = None


class RelayCandidates:
    """The TURN allocations of one agent (see the module docstring).

    ``on_candidate(candidate, now)`` is called when an allocation succeeds,
    ``on_data(payload, peer, relayed, now)`` for each datagram a peer sent to a
    relayed address, ``on_settled()`` when an allocation succeeds or fails (gathering
    may be complete).
    """

    def __init__(
        self,
        servers: list[TurnClientSettings],
        outbox: IceOutbox,
        rng: random.Random,
        on_candidate: Callable[[Candidate, float], None],
        on_data: Callable[[bytes, Address, Address, float], None],
        on_settled: Callable[[], None],
        remotes: Callable[[], list[Address]] = list,
    ) -> None:
        self._settings = [s for s in servers]
        self._outbox = outbox
        self._rng = rng
        self._on_candidate = on_candidate
        self._on_data = on_data
        self._on_settled = on_settled
        self._remotes = remotes  # the remote candidates' addresses so far
        self.bases: list[Candidate] = []  # host bases not paired (relay-only policy)
        self.allocations: list[_Allocation] = []
        self._by_server: dict[Address, list[_Allocation]] = {}
        self._by_relayed: dict[Address, _Allocation] = {}
        self.started = False

    def is_server(self, addr: Address) -> bool:
        return addr in self._by_server

    def is_relayed(self, addr: Address | None) -> bool:
        return addr in self._by_relayed

    def pending(self) -> bool:
        """Some allocation has not succeeded or failed yet (gathering goes on)."""
        return any(a.client.state in ("new", "allocating") for a in self.allocations)

    def start(self, bases: list[Candidate], now: float) -> None:
        if self.started:
            return
        self.started = True
        for settings in self._settings:
            server = canonical_addr(settings.server)
            family = ip_family(server[0])
            base = next((b for b in bases if ip_family(b.host) == family), None)
            if base is None:
                continue
            client = TurnClient(settings, rng=self._rng)
            allocation = _Allocation(client, (base.host, base.port), server)
            self.allocations.append(allocation)
            self._by_server.setdefault(server, []).append(allocation)
            allocation.client.allocate(now)
            self._flush(allocation, now)

    def receive(self, data: bytes, addr: Address, now: float) -> bool:
        """A datagram from a TURN server; False if no allocation takes it (then it is
        ordinary STUN for the agent: a Binding answer from the same server, say)."""
        for allocation in self._by_server.get(addr, ()):
            if allocation.client.receive(data, now):
                self._flush(allocation, now)
                return True
        return False

    def poll(self, transmits: deque[Transmit], now: float) -> Transmit | None:
        """The agent's next transmit; those from a relayed address go through their
        allocation instead (wrapped, they come back on ``transmits``)."""
        while transmits:
            transmit = transmits.popleft()
            if not self.route(transmit, now):
                return transmit
        return None

    def route(self, transmit: Transmit, now: float) -> bool:
        """Send ``transmit`` through its allocation if it leaves from a relayed address
        (True), waiting for the peer's permission if need be."""
        allocation = self._by_relayed.get(transmit.local)  # type: ignore[arg-type]
        if allocation is None:
            return False
        allocation.client.send(transmit.addr, transmit.data, now)
        self._flush(allocation, now)
        return True

    def wrap(self, transmit: Transmit, now: float) -> Transmit | None:
        """``transmit`` as a datagram to the TURN server if it leaves from a relayed
        address (None while the peer's permission is not installed yet), else as is."""
        allocation = self._by_relayed.get(transmit.local)  # type: ignore[arg-type]
        if allocation is None:
            return transmit
        frame = allocation.client.wrap(transmit.addr, transmit.data, now)
        self._flush(allocation, now)
        if frame is None:
            return None
        return Transmit(frame, allocation.server, allocation.base)

    def permit(self, remote: Address, now: float) -> None:
        """Let ``remote`` reach every relayed address (a new remote candidate): the
        permission is then in place before the first check, not set up by it."""
        for allocation in self.allocations:
            if allocation.candidate is not None and ip_family(remote[0]) == ip_family(
                allocation.candidate.host
            ):
                allocation.client.permit(remote[0], now)
                self._flush(allocation, now)

    def poll_timeout(self) -> float | None:
        deadlines = (a.client.poll_timeout() for a in self.allocations)
        return min((d for d in deadlines if d is not None), default=None)

    def handle_timeout(self, now: float) -> None:
        for allocation in self.allocations:
            deadline = allocation.client.poll_timeout()
            if deadline is not None and deadline <= now:
                allocation.client.handle_timeout(now)
                self._flush(allocation, now)

    def release_except(self, local: Address, now: float) -> None:
        """A pair is selected: free every allocation but the one at ``local`` (if the
        selected pair is relayed), as browsers prune unused TURN ports. Each allocation
        counts against the server's per-user quota for as long as it is refreshed."""
        for allocation in self.allocations:
            candidate = allocation.candidate
            if candidate is None or (candidate.host, candidate.port) != local:
                allocation.client.close(now)
                self._flush(allocation, now)

    def close(self, now: float) -> None:
        """Free every allocation (Refresh with LIFETIME 0 goes out with the rest)."""
        for allocation in self.allocations:
            allocation.client.close(now)
            self._flush(allocation, now)

    def candidate_type(self, local: Address | None) -> str | None:
        allocation = self._by_relayed.get(local) if local is not None else None
        return None if allocation is None else "relay"

    def _flush(self, allocation: _Allocation, now: float) -> None:
        client, server = allocation.client, allocation.server
        while (data := client.poll_transmit()) is not None:
            self._outbox.send(data, server, allocation.base)
        while (event := client.poll_event()) is not None:
            if isinstance(event, PeerData):
                if allocation.candidate is not None:
                    relayed = (allocation.candidate.host, allocation.candidate.port)
                    self._on_data(event.data, event.peer, relayed, now)
            elif isinstance(event, Allocated):
                local_pref = 65535 - len(self._by_relayed)
                candidate = relay_candidate(event.relayed, event.mapped, server, local_pref)
                allocation.candidate = candidate
                self._by_relayed[(candidate.host, candidate.port)] = allocation
                self._on_candidate(candidate, now)
                for remote in self._remotes():  # permissions before the first checks
                    client.permit(remote[0], now)
                self._on_settled()
            elif isinstance(event, AllocationFailed):
                self._on_settled()
        while (data := client.poll_transmit()) is not None:  # what the events started
            self._outbox.send(data, server, allocation.base)
            # AllocationEnded / PermissionFailed: the pairs through it fail their checks
            # (or consent), which is how the agent learns a path is gone.
