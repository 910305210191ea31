"""A sans-IO ICE agent (RFC 8445) for one data-channel component.

Full agent, both roles: host candidates handed in by the driver (the core does not
enumerate interfaces), server-reflexive gathering against STUN servers, peer-reflexive
learning, paced connectivity checks with retransmission, regular nomination, role
conflict repair, trickle, consent freshness (RFC 7675) and ICE restart.

Scope cuts: one component, UDP only, no TURN relay candidates of our own, no mDNS
names, no ICE-lite peers, aggressive nomination by a remote controlling agent is
accepted (aioice does that) but never used.

Driving it: feed every datagram of the socket to :meth:`IceAgent.receive` (STUN is
handled, DTLS from validated addresses comes back as :class:`DataReceived`), call
:meth:`IceAgent.handle_timeout` at :meth:`IceAgent.poll_timeout`, and send what
:meth:`IceAgent.poll_transmit` returns. ``now`` is always passed in.
"""

from __future__ import annotations

from ..demux import DatagramKind, classify
from ..errors import StunParseError
from ..stun import (
    Class,
    StunTransaction,
    binding_request,
    parse_stun_untrusted,
)
from ._checklist import (
    Candidate,
    CandidatePair,
    CheckList,
    PairState,
    canonical_addr,
    host_candidate,
)
from ._connectivity import MIN_TA, IceConnectivity
from ._events import (
    CandidateGathered,
    DataReceived,
    IceEvent,
    IceState,
    IceStatistics,
    Transmit,
)
from ._stun import (
    copy_candidate,
    ip_family,
)
from ._timers import PendingTransaction

__all__ = ["IceAgent", "Transmit"]


class IceAgent(IceConnectivity):
    """The ICE state machine of one peer connection (see module docstring).

    Add host candidates with :meth:`add_local_candidate` before :meth:`gather`.
    ``pacing`` is Ta (RFC 8445 section 14.2), the interval between new checks: 50 ms
    by default, or the higher of the values both peers proposed (``a=ice-pacing``),
    5 ms at least. Regular nomination needs a second check, so it comes one Ta after
    the first check; that is most of the connect time on a fast path.
    """

    # -- public surface ----------------------------------------------------------------

    @property
    def controlling(self) -> bool:
        return self._checklist.controlling

    @property
    def state(self) -> IceState:
        return self._state

    @property
    def selected_pair(self) -> CandidatePair | None:
        return self._selected

    @property
    def pacing(self) -> float:
        """Ta in seconds: the interval between new connectivity checks."""
        return self._pacing

    def set_pacing(self, seconds: float) -> None:
        """Change Ta, e.g. to the value both peers agreed once the remote description
        arrives (RFC 8839 section 5.5); checks scheduled from now on use it. Raises
        ValueError below 5 ms (RFC 8445 section 14.2)."""
        if not seconds >= MIN_TA:
            raise ValueError(f"ICE pacing (Ta) must be at least {MIN_TA} s")
        self._pacing = seconds

    @property
    def local_candidates(self) -> list[Candidate]:
        return [*self._checklist.local, *self._srflx]

    @property
    def remote_candidates(self) -> list[Candidate]:
        return list(self._checklist.remote)

    @property
    def pairs(self) -> list[CandidatePair]:
        return list(self._checklist.pairs)

    def add_local_candidate(self, addr: tuple[str, int]) -> Candidate:
        """Add a host candidate for a bound local socket address and announce it."""
        addr = canonical_addr(addr)
        known = self._checklist.find_local(addr)
        if known is not None:
            return known
        local_pref = 65535 - len(self._checklist.local)
        candidate = host_candidate(addr, local_pref)
        self._checklist.add_local(candidate)
        self._emit(CandidateGathered(candidate))
        return candidate

    def add_stun_server(self, addr: tuple[str, int]) -> None:
        """Add a STUN server (IP literal: resolving names is the driver's job) before gather."""
        server = canonical_addr(addr)
        if server not in self._stun_servers:
            self._stun_servers.append(server)

    def gather(self, now: float) -> None:
        """Start server-reflexive gathering; :class:`GatheringComplete` follows."""
        self._last_now = now
        if self._gathering:
            return
        self._gathering = True
        for base in self._checklist.local:
            for server in self._stun_servers:
                if ip_family(server[0]) != ip_family(base.host):
                    continue
                request = binding_request(self._transaction_id())
                request.add_fingerprint()
                self._start(
                    PendingTransaction(
                        "gather",
                        StunTransaction(bytes(request), now),
                        server,
                        (base.host, base.port),
                        base=base,
                    )
                )
        self._maybe_gathering_complete()

    def set_remote_credentials(self, ufrag: str, pwd: str, now: float | None = None) -> None:
        """Set the peer's ice-ufrag/ice-pwd; checks start once pairs exist."""
        if not ufrag or not pwd:
            raise ValueError("remote ice-ufrag and ice-pwd must not be empty")
        self.remote_ufrag = ufrag
        self.remote_pwd = pwd
        now = self._last_now = self._last_now if now is None else now
        if self._state is IceState.NEW:
            self._set_state(IceState.CHECKING)
        # Checks that arrived before the credentials (RFC 8445 section 7.3).
        for message, addr, local in list(self._early_checks):
            if message.attributes["USERNAME"].partition(":")[2] == ufrag:
                self._incoming_check(message, addr, local, now)
        self._early_checks.clear()
        self._schedule_checks(now)
        self._maybe_fail()  # end-of-candidates may have come first, with nothing to pair

    def add_remote_candidate(self, candidate: Candidate | None, now: float | None = None) -> None:
        """Trickle a remote candidate in; ``None`` means end-of-candidates."""
        if candidate is None:
            self._remote_end = True
            self._maybe_fail()
            return
        now = self._last_now = self._last_now if now is None else now
        candidate = copy_candidate(candidate)
        self._checklist.add_remote(candidate)
        self._schedule_checks(now)

    def restart(self, now: float, ufrag: str | None = None, pwd: str | None = None) -> None:
        """ICE restart: new local credentials, forget the remote side, gather again.

        The selected pair keeps carrying data until a new one is nominated.
        """
        self.local_ufrag = ufrag or self._random_ice_string(8)
        self.local_pwd = pwd or self._random_ice_string(24)
        self.remote_ufrag = self.remote_pwd = None
        locals_ = list(self._checklist.local)
        self._checklist = CheckList(self.controlling)
        self._srflx.clear()
        self._pending.clear()
        self._triggered.clear()
        self._early_checks.clear()
        self._remote_end = False
        self._first_valid_at = None
        self._next_check_at = None
        self._gathering = self._gathering_done = False
        self._consent.stop()
        self._previous_selected = self._selected or self._previous_selected
        self._selected = None
        for base in locals_:
            self._checklist.add_local(base)
            self._emit(CandidateGathered(base))
        self._set_state(IceState.NEW)
        self.gather(now)

    def close(self) -> None:
        """Stop everything: no more transmits, timers or events after CLOSED."""
        self._pending.clear()
        self._triggered.clear()
        self._transmits.clear()
        self._selected = None
        self._consent.stop()
        self._next_check_at = None
        self._set_state(IceState.CLOSED)

    def receive(
        self,
        data: bytes,
        addr: tuple[str, int],
        now: float,
        local: tuple[str, int] | None = None,
    ) -> None:
        """Feed one datagram received on ``local`` (the socket address) from ``addr``."""
        if self._state is IceState.CLOSED:
            return
        self._last_now = now
        # Parsing the address is most of the per-datagram cost on the data path.
        canonical = self._canonical_addrs.get(addr)
        if canonical is None:
            try:
                canonical = canonical_addr(addr)
            except ValueError:
                self._stats["datagrams_dropped"] += 1
                return
            if len(self._canonical_addrs) < 64:
                self._canonical_addrs[addr] = canonical
        addr = canonical
        kind = classify(data)
        if kind is DatagramKind.DTLS:
            if addr in self._data_addrs:
                self._emit(DataReceived(bytes(data), addr))
            else:
                self._stats["datagrams_dropped"] += 1
            return
        if kind is not DatagramKind.STUN:
            self._stats["datagrams_dropped"] += 1
            return
        try:
            message = parse_stun_untrusted(data)
        except StunParseError:
            self._stats["datagrams_dropped"] += 1
            return
        base = self._base_for(local, addr)
        if message.message_class == Class.REQUEST:
            self._stats["requests_received"] += 1
            self._on_request(message, addr, base, now)
        elif message.message_class in (Class.RESPONSE, Class.ERROR):
            self._stats["responses_received"] += 1
            self._on_response(message, addr, now)
        # Indications (keepalives) need nothing.
        self._schedule_checks(now)

    def send_data(self, data: bytes, reply_to: tuple[str, int] | None = None) -> Transmit | None:
        """A transmit carrying ``data`` on the selected pair, or None without a path.

        Before a pair is selected, RFC 8445 section 12.1 lets data flow on a valid
        pair: ``reply_to`` (the address a :class:`DataReceived` came from) if ICE
        validated it -- a peer done with ICE first (a controlled browser starting
        DTLS) must get its answer now, not after a retransmission timer; an address
        that sent us an authenticated check counts as validated, as it does for the
        data we accept from it -- else the best valid pair, if any.
        """
        if self._state in (IceState.FAILED, IceState.CLOSED):
            return None
        pair = self._selected or self._previous_selected
        if pair is not None:
            return Transmit(bytes(data), pair.remote_addr, pair.local_addr)
        if reply_to is None or reply_to not in self._data_addrs:
            valid = self.first_valid_pair()  # we speak first (a DTLS client): the best one
            return None if valid is None else Transmit(bytes(data), valid.remote_addr,
                                                       valid.local_addr)
        local = None
        for candidate_pair in self._checklist.pairs:
            if candidate_pair.remote_addr == reply_to:
                local = candidate_pair.local_addr
                if candidate_pair.state is PairState.SUCCEEDED:
                    break
        return Transmit(bytes(data), reply_to, local)

    def first_valid_pair(self) -> CandidatePair | None:
        """The selected pair, else the best pair whose check succeeded, else None."""
        if self._selected is not None:
            return self._selected
        for pair in self._checklist.pairs:  # kept sorted, best first
            if pair.state is PairState.SUCCEEDED:
                return pair
        return None

    def poll_transmit(self) -> Transmit | None:
        return self._transmits.popleft() if self._transmits else None

    def poll_event(self) -> IceEvent | None:
        return self._events.popleft() if self._events else None

    def poll_timeout(self) -> float | None:
        if self._state is IceState.CLOSED:
            return None
        deadlines = [
            d for d in (self._pending.poll_timeout(), self._consent.poll_timeout()) if d is not None
        ]
        if self._next_check_at is not None and self._has_checks_to_start():
            deadlines.append(self._next_check_at)
        if self._first_valid_at is not None and self._wants_nomination():
            valid = self._checklist.valid_pairs()
            hold = self._nomination_hold(valid[0]) if valid else None
            if hold is not None:
                deadlines.append(hold)
        return min(deadlines) if deadlines else None

    def handle_timeout(self, now: float) -> None:
        if self._state is IceState.CLOSED:
            return
        self._last_now = now
        for pending, timed_out in self._pending.expire(now):
            if timed_out:
                self._on_transaction_timeout(pending, now)
            else:
                self._stats["retransmissions"] += 1
                self._queue(pending.transaction.data, pending.addr, pending.local)
        self._run_consent(now)
        self._schedule_checks(now)
        if self._next_check_at is not None and now >= self._next_check_at:
            self._start_next_check(now)
        self._maybe_nominate(now)

    def statistics(self) -> IceStatistics:
        selected = self._selected
        return IceStatistics(
            state=self._state,
            controlling=self.controlling,
            local_candidates=len(self.local_candidates),
            remote_candidates=len(self._checklist.remote),
            pairs=len(self._checklist.pairs),
            succeeded_pairs=len(self._checklist.valid_pairs()),
            selected_local=selected.local_addr if selected else None,
            selected_remote=selected.remote_addr if selected else None,
            **self._stats,
        )
