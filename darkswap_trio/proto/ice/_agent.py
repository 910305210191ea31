"""A sans-IO ICE agent (RFC 8445) for one data-channel component.

Full agent, both roles: host candidates handed in by the driver (the core does not
enumerate interfaces), server-reflexive gathering against STUN servers, peer-reflexive
learning, paced connectivity checks with retransmission, regular nomination, role
conflict repair, trickle, consent freshness (RFC 7675) and ICE restart.

Relay candidates come from TURN servers (:mod:`._relay`); with ``relay_only`` they
are the only candidates offered and paired. Scope cuts: one component, UDP only, no
mDNS names or ICE-lite peers; a remote agent's aggressive nomination is accepted.

Driving it: feed every datagram of the socket to :meth:`IceAgent.receive` (STUN is
handled, DTLS from validated addresses comes back as :class:`DataReceived`), call
:meth:`IceAgent.handle_timeout` at :meth:`IceAgent.poll_timeout`, and send what
:meth:`IceAgent.poll_transmit` returns. ``now`` is always passed in.

Parts, each owning its state: :class:`IceCredentials` (both sides' ufrag/pwd, the
tie-breaker), :class:`ConnectivityChecks` (the check list, checks, nomination),
:class:`Gathering` (STUN servers, server-reflexive candidates), the
:class:`TransactionTable` of outstanding requests, :class:`ConsentFreshness`, and the
:class:`IceOutbox` they all send through. The agent owns the state, the selected pair
and the addresses data is accepted from; it answers checks and routes responses.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..demux import DatagramKind, classify
from ..errors import StunParseError
from ..stun import (
    Class,
    Message,
    StunTransaction,
    binding_success_response,
    error_response,
    parse_stun_untrusted,
)
from ._checklist import (
    Candidate,
    CandidatePair,
    PairState,
    canonical_addr,
    host_candidate,
)
from ._connectivity import MIN_TA, TA, ConnectivityChecks
from ._events import (
    COUNTERS,
    CandidateGathered,
    ConsentLost,
    DataReceived,
    IceEvent,
    IceOutbox,
    IceState,
    IceStateChanged,
    IceStatistics,
    SelectedPairChanged,
    Transmit,
)
from ._gathering import Gathering
from ._relay import relay_candidates_for
from ._stun import IceCredentials, RoleDecision, copy_candidate, ip_family, resolve_role_conflict
from ._timers import ConsentFreshness, PendingTransaction, TransactionTable

if TYPE_CHECKING:
    from ..turn.client import TurnClientSettings

__all__ = ["IceAgent", "Transmit"]

# Addresses accepted for data on the strength of an early check alone (bounded).
MAX_EARLY_DATA_ADDRS = 16


class IceAgent:
    """The ICE state machine of one peer connection (see module docstring).

    Add host candidates with :meth:`add_local_candidate` before :meth:`gather`.
    ``pacing`` is Ta (RFC 8445 section 14.2), the interval between new checks: 50 ms
    by default, or the higher of the values both peers proposed (``a=ice-pacing``),
    5 ms at least. Regular nomination needs a second check, so it comes one Ta after
    the first check; that is most of the connect time on a fast path.
    ``turn_servers``: relay candidates are gathered from these (IP literals);
    ``relay_only``: host and server-reflexive candidates are neither offered nor paired.
    """

    def __init__(
        self,
        controlling: bool,
        local_ufrag: str | None = None,
        local_pwd: str | None = None,
        stun_servers: tuple[tuple[str, int], ...] | list[tuple[str, int]] = (),
        tie_breaker: int | None = None,
        rng: random.Random | None = None,
        pacing: float = TA,
        turn_servers: Sequence[TurnClientSettings] = (),
        relay_only: bool = False,
    ) -> None:
        if not pacing >= MIN_TA:
            raise ValueError(f"ICE pacing (Ta) must be at least {MIN_TA} s")
        rng = rng if rng is not None else random.SystemRandom()
        servers = [canonical_addr(s) for s in stun_servers]
        self._credentials = IceCredentials(rng, local_ufrag, local_pwd, tie_breaker)
        self._state = IceState.NEW
        self._out = IceOutbox()
        self._pending = TransactionTable(self._out)
        self._stats: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._data_addrs: set[tuple[str, int]] = set()
        self._checks = ConnectivityChecks(
            self,
            controlling,
            pacing,
            self._credentials,
            self._pending,
            self._out,
            self._data_addrs,
            self._stats,
        )
        self._relay_only = relay_only
        self._relay = relay = relay_candidates_for(self, turn_servers, relay_only, self._out, rng)
        self._gathering = Gathering(
            [] if relay_only else servers,
            self._credentials,
            self._pending,
            self._out,
            busy=relay.pending if relay is not None else None,
        )
        self._consent = ConsentFreshness(rng)
        self._early_checks: deque[tuple[Message, tuple[str, int], tuple[str, int]]] = deque(
            maxlen=16
        )
        self._selected: CandidatePair | None = None
        # The old selected pair keeps carrying data during an ICE restart.
        self._previous_selected: CandidatePair | None = None
        # Calls without ``now`` (credentials, trickle) use the latest time seen.
        self._last_now = 0.0
        self._canonical_addrs: dict[tuple[str, int], tuple[str, int]] = {}
        # poll_timeout() is asked after every batch of a transfer that never reaches ICE:
        # its answer is kept until a call that can move a timer (they all clear this).
        self._timeout_known = False
        self._timeout: float | None = None

    # -- public surface ----------------------------------------------------------------

    @property
    def local_ufrag(self) -> str:
        return self._credentials.local_ufrag

    @property
    def local_pwd(self) -> str:
        return self._credentials.local_pwd

    @property
    def remote_ufrag(self) -> str | None:
        return self._credentials.remote_ufrag

    @property
    def remote_pwd(self) -> str | None:
        return self._credentials.remote_pwd

    @property
    def controlling(self) -> bool:
        return self._checks.checklist.controlling

    @property
    def state(self) -> IceState:
        return self._state

    @property
    def selected_pair(self) -> CandidatePair | None:
        return self._selected

    @property
    def pacing(self) -> float:
        """Ta in seconds: the interval between new connectivity checks."""
        return self._checks.pacing

    def set_pacing(self, seconds: float) -> None:
        """Change Ta for checks scheduled from now on (e.g. to the value both peers
        agreed, RFC 8839 section 5.5); ValueError below 5 ms (RFC 8445 section 14.2)."""
        self._timeout_known = False
        if not seconds >= MIN_TA:
            raise ValueError(f"ICE pacing (Ta) must be at least {MIN_TA} s")
        self._checks.pacing = seconds

    @property
    def local_candidates(self) -> list[Candidate]:
        return [*self._checks.checklist.local, *self._gathering.srflx]

    @property
    def remote_candidates(self) -> list[Candidate]:
        return list(self._checks.checklist.remote)

    @property
    def pairs(self) -> list[CandidatePair]:
        return list(self._checks.checklist.pairs)

    def add_local_candidate(self, addr: tuple[str, int]) -> Candidate:
        """Add a host candidate for a bound local socket address and announce it."""
        self._timeout_known = False
        addr = canonical_addr(addr)
        known = self._checks.checklist.find_local(addr)
        if known is not None:
            return known
        local_pref = 65535 - len(self._checks.checklist.local)
        candidate = host_candidate(addr, local_pref)
        if self._relay_only:  # the socket TURN is reached from, not a candidate
            self._relay.bases.append(candidate)  # type: ignore[union-attr]
            return candidate
        self._checks.checklist.add_local(candidate)
        self._out.emit(CandidateGathered(candidate))
        return candidate

    def add_stun_server(self, addr: tuple[str, int]) -> None:
        """Add a STUN server (IP literal: resolving names is the driver's job) before gather."""
        self._timeout_known = False
        self._gathering.add_server(addr)

    def gather(self, now: float) -> None:
        """Start server-reflexive gathering; :class:`GatheringComplete` follows."""
        self._timeout_known = False
        self._last_now = now
        hosts = [c for c in self._checks.checklist.local if c.type == "host"]
        if self._relay is not None:
            self._relay.start(self._relay.bases or hosts, now)
        self._gathering.start(hosts, now)

    def set_remote_credentials(self, ufrag: str, pwd: str, now: float | None = None) -> None:
        """Set the peer's ice-ufrag/ice-pwd; checks start once pairs exist."""
        self._timeout_known = False
        if not ufrag or not pwd:
            raise ValueError("remote ice-ufrag and ice-pwd must not be empty")
        self._credentials.remote_ufrag = ufrag
        self._credentials.remote_pwd = pwd
        now = self._last_now = self._last_now if now is None else now
        if self._state is IceState.NEW:
            self._set_state(IceState.CHECKING)
        # Checks that arrived before the credentials (RFC 8445 section 7.3).
        for message, addr, local in list(self._early_checks):
            if message.attributes["USERNAME"].partition(":")[2] == ufrag:
                self._checks.incoming_check(message, addr, local, now)
        self._early_checks.clear()
        self._checks.schedule(now)
        self._maybe_fail()  # end-of-candidates may have come first, with nothing to pair

    def add_remote_candidate(self, candidate: Candidate | None, now: float | None = None) -> None:
        """Trickle a remote candidate in; ``None`` means end-of-candidates."""
        self._timeout_known = False
        if candidate is None:
            self._checks.remote_end = True
            self._maybe_fail()
            return
        now = self._last_now = self._last_now if now is None else now
        candidate = copy_candidate(candidate)
        self._checks.checklist.add_remote(candidate)
        if self._relay is not None:
            self._relay.permit((candidate.host, candidate.port), now)
        self._checks.schedule(now)

    def restart(self, now: float, ufrag: str | None = None, pwd: str | None = None) -> None:
        """ICE restart: new local credentials, forget the remote side, gather again.

        The selected pair keeps carrying data until a new one is nominated.
        """
        self._timeout_known = False
        self._credentials.restart(ufrag, pwd)
        locals_ = list(self._checks.checklist.local)
        self._checks.restart()
        self._gathering.restart()
        self._pending.clear()
        self._early_checks.clear()
        self._consent.stop()
        self._previous_selected = self._selected or self._previous_selected
        self._selected = None
        for base in locals_:
            self._checks.checklist.add_local(base)
            self._out.emit(CandidateGathered(base))
        self._set_state(IceState.NEW)
        self.gather(now)

    def close(self) -> None:
        """Stop everything: no more transmits, timers or events after CLOSED."""
        self._timeout_known = False
        self._pending.clear()
        self._checks.stop()
        self._out.transmits.clear()
        self._selected = None
        self._consent.stop()
        self._set_state(IceState.CLOSED)
        if self._relay is not None:
            self._relay.close(self._last_now)  # the Refresh(0)s wait in poll_transmit

    def receive(
        self,
        data: bytes,
        addr: tuple[str, int],
        now: float,
        local: tuple[str, int] | None = None,
    ) -> None:
        """Feed one datagram received on ``local`` (the socket address) from ``addr``."""
        self._timeout_known = False
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
        relay = self._relay
        if relay is not None:
            if relay.is_server(addr) and relay.receive(data, addr, now):
                self._checks.schedule(now)
                return
            if self._relay_only and not relay.is_relayed(local):
                self._stats["datagrams_dropped"] += 1  # the policy: nothing direct
                return
        kind = classify(data)
        if kind is DatagramKind.DTLS:
            if addr in self._data_addrs:
                self._out.emit(DataReceived(bytes(data), addr))
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
        self._checks.schedule(now)

    def send_data(self, data: bytes, reply_to: tuple[str, int] | None = None) -> Transmit | None:
        """A transmit carrying ``data`` on the selected pair, or None without a path.

        Before a pair is selected, RFC 8445 section 12.1 lets data flow on a valid
        pair: ``reply_to`` (the address a :class:`DataReceived` came from) if ICE
        validated it -- a peer done with ICE first (a controlled browser starting
        DTLS) must get its answer now, not after a retransmission timer; an address
        that sent us an authenticated check counts as validated, as it does for the
        data we accept from it -- else the best valid pair, if any.
        """
        self._timeout_known = False
        if self._state in (IceState.FAILED, IceState.CLOSED):
            return None
        pair = self._selected or self._previous_selected
        if pair is not None:
            return self._through_relay(Transmit(bytes(data), pair.remote_addr, pair.local_addr))
        if reply_to is None or reply_to not in self._data_addrs:
            valid = self.first_valid_pair()  # we speak first (a DTLS client): the best one
            return (
                None
                if valid is None
                else self._through_relay(Transmit(bytes(data), valid.remote_addr, valid.local_addr))
            )
        local = None
        for candidate_pair in self._checks.checklist.pairs:
            if candidate_pair.remote_addr == reply_to:
                local = candidate_pair.local_addr
                if candidate_pair.state is PairState.SUCCEEDED:
                    break
        return self._through_relay(Transmit(bytes(data), reply_to, local))

    def _through_relay(self, transmit: Transmit) -> Transmit | None:
        relay = self._relay
        return transmit if relay is None else relay.wrap(transmit, self._last_now)

    def first_valid_pair(self) -> CandidatePair | None:
        """The selected pair, else the best pair whose check succeeded, else None."""
        if self._selected is not None:
            return self._selected
        for pair in self._checks.checklist.pairs:  # kept sorted, best first
            if pair.state is PairState.SUCCEEDED:
                return pair
        return None

    def poll_transmit(self) -> Transmit | None:
        transmits = self._out.transmits
        if self._relay is not None:
            self._timeout_known = False  # routing through TURN may start a transaction
            return self._relay.poll(transmits, self._last_now)
        return transmits.popleft() if transmits else None

    def poll_event(self) -> IceEvent | None:
        events = self._out.events
        return events.popleft() if events else None

    def poll_timeout(self) -> float | None:
        if self._timeout_known:
            return self._timeout
        deadline = None
        if self._state is not IceState.CLOSED:
            deadlines = (
                self._pending.poll_timeout(),
                self._consent.poll_timeout(),
                self._checks.poll_timeout(),
                self._relay.poll_timeout() if self._relay is not None else None,
            )
            deadline = min((d for d in deadlines if d is not None), default=None)
        self._timeout, self._timeout_known = deadline, True
        return deadline

    def handle_timeout(self, now: float) -> None:
        self._timeout_known = False
        if self._state is IceState.CLOSED:
            return
        self._last_now = now
        for pending, timed_out in self._pending.expire(now):
            if not timed_out:
                self._stats["retransmissions"] += 1
                self._pending.resend(pending)
            elif pending.kind == "gather":
                self._gathering.maybe_complete()
            elif pending.kind == "check" and pending.pair is not None:
                self._checks.on_timeout(pending, now)
            # A lost consent check only matters through the consent expiry.
        self._run_consent(now)
        self._checks.handle_timeout(now)
        if self._relay is not None:
            self._relay.handle_timeout(now)

    def statistics(self) -> IceStatistics:
        selected = self._selected
        active = selected or self._previous_selected or self.first_valid_pair()
        return IceStatistics(
            state=self._state,
            controlling=self.controlling,
            local_candidates=len(self.local_candidates),
            remote_candidates=len(self._checks.checklist.remote),
            pairs=len(self._checks.checklist.pairs),
            succeeded_pairs=len(self._checks.checklist.valid_pairs()),
            selected_local=selected.local_addr if selected else None,
            selected_remote=selected.remote_addr if selected else None,
            selected_local_type=selected.local.type if selected else None,
            selected_remote_type=selected.remote.type if selected else None,
            active_local_type=active.local.type if active else None,
            active_remote_type=active.remote.type if active else None,
            **self._stats,
        )

    # -- incoming requests (RFC 8445 section 7.3) ----------------------------------------

    def _on_request(
        self, message: Message, addr: tuple[str, int], base: Candidate | None, now: float
    ) -> None:
        error = 400 if base is None else self._credentials.authenticate(message)
        if error is not None or base is None:
            reason = "Bad Request" if error == 400 else "Unauthenticated"
            self._reply(error_response(message, error or 400, reason), addr, base)
            return
        checks = self._checks
        decision = resolve_role_conflict(message, checks.controlling, self._credentials.tie_breaker)
        if decision is not RoleDecision.KEEP:
            self._stats["role_conflicts"] += 1
        if decision is RoleDecision.REJECT:
            key = self.local_pwd.encode()
            self._reply(error_response(message, 487, "Role Conflict", key), addr, base)
            return
        if decision is RoleDecision.SWITCH:
            checks.switch_role(not checks.controlling)
        self._reply(binding_success_response(message, addr, self.local_pwd.encode()), addr, base)
        if self.remote_pwd is None:
            self._early_checks.append((message, addr, (base.host, base.port)))
            # The check carried our password: the peer's DTLS may follow from there
            # before its answer reaches us (a browser that answered us starts at once).
            if len(self._data_addrs) < MAX_EARLY_DATA_ADDRS:
                self._data_addrs.add(addr)
            return
        checks.incoming_check(message, addr, (base.host, base.port), now)

    def _reply(self, data: bytes, addr: tuple[str, int], base: Candidate | None) -> None:
        self._out.send(data, addr, (base.host, base.port) if base is not None else None)

    # -- responses (RFC 8445 section 7.2.5) ----------------------------------------------

    def _on_response(self, message: Message, addr: tuple[str, int], now: float) -> None:
        pending = self._pending.get(message.transaction_id)
        if pending is None:
            return
        if pending.kind == "gather":
            self._pending.remove(pending)
            known = {(c.host, c.port) for c in self.local_candidates}
            self._gathering.on_response(message, pending, known)
            return
        assert self.remote_pwd is not None
        # An unauthenticated answer is ignored and retransmissions go on (RFC 8489 9.1.4).
        if not message.check_message_integrity(self.remote_pwd.encode()):
            return
        self._pending.remove(pending)
        if pending.kind == "consent":
            pair = pending.pair
            assert pair is not None
            if message.message_class == Class.RESPONSE and addr == pair.remote_addr:
                self._consent.refreshed(now)
            return
        self._checks.on_response(message, addr, pending, now)

    # -- what the checks report (ConnectivityChecks' CheckOwner) -------------------------

    def _nominated(self, pair: CandidatePair, now: float) -> None:
        pair.nominated = True
        pair.nominating = False
        if self._selected is pair:
            return
        self._selected = pair
        self._previous_selected = None
        self._consent.start(now)
        self._checks.abandon_others(pair)
        if self._relay is not None:  # allocations no pair uses only cost the server
            self._relay.release_except(pair.local_addr, now)
        self._out.emit(SelectedPairChanged(pair.local, pair.remote))
        if self._state is not IceState.CONNECTED:
            self._set_state(IceState.CONNECTED)

    def _maybe_fail(self) -> None:
        if self._state is not IceState.CHECKING or self._selected is not None:
            return
        if self._relay is not None and self._relay.pending():
            return  # a relay candidate may still come
        if self._checks.exhausted():
            self._set_state(IceState.FAILED)

    # -- relay candidates (RelayCandidates' callbacks) ----------------------------------

    def _relay_candidate(self, candidate: Candidate, now: float) -> None:
        if self._state is IceState.CLOSED:
            return
        self._checks.checklist.add_local(candidate)
        self._out.emit(CandidateGathered(candidate))
        self._checks.schedule(now)

    def _relay_settled(self) -> None:
        self._gathering.maybe_complete()
        self._maybe_fail()

    # -- consent freshness (RFC 7675) ----------------------------------------------------

    def _run_consent(self, now: float) -> None:
        pair = self._selected
        if pair is None or self._state is not IceState.CONNECTED or self.remote_pwd is None:
            return
        if self._consent.expired(now):
            self._consent.stop()
            self._out.emit(ConsentLost())
            self._set_state(IceState.FAILED)
        elif self._consent.check_due(now):
            request = self._credentials.check_request(self.controlling, nominate=False)
            # Retransmitted within the ~5 s interval (at 0, 0.5, 1.5 and 3.5 s), so a
            # lossy path keeps its consent; the transaction ends before the next one.
            transaction = StunTransaction(bytes(request), now, max_requests=4, last_wait_factor=2)
            self._pending.start(
                PendingTransaction(
                    "consent", transaction, pair.remote_addr, pair.local_addr, pair=pair
                )
            )

    # -- helpers -------------------------------------------------------------------------

    def _set_state(self, state: IceState) -> None:
        if state is not self._state:
            self._state = state
            self._out.emit(IceStateChanged(state))

    def _base_for(self, local: tuple[str, int] | None, addr: tuple[str, int]) -> Candidate | None:
        checklist = self._checks.checklist
        if local is not None:
            found = checklist.find_local(canonical_addr(local))
            if found is not None:
                return found
        family = ip_family(addr[0])
        for candidate in checklist.local:
            if ip_family(candidate.host) == family:
                return candidate
        return None
