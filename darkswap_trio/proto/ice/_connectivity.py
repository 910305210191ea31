"""The connectivity-check engine of the ICE agent (RFC 8445 sections 6.1.4-8, RFC 7675).

:class:`IceConnectivity` holds the agent's state and reacts to checks, responses and
timers; :class:`darkswap_trio.proto.ice._agent.IceAgent` adds the public surface on top.
The split only keeps each module readable: there is one state machine.
"""

from __future__ import annotations

import random
from collections import deque

from ..stun import (
    Class,
    Message,
    StunTransaction,
    binding_success_response,
    error_response,
    mapped_address,
)
from ._checklist import (
    Candidate,
    CandidatePair,
    CheckList,
    PairState,
    canonical_addr,
    peer_reflexive_candidate,
    server_reflexive_candidate,
)
from ._events import (
    CandidateGathered,
    ConsentLost,
    GatheringComplete,
    IceEvent,
    IceState,
    IceStateChanged,
    RoleChanged,
    SelectedPairChanged,
    Transmit,
)
from ._stun import (
    ICE_CHARS,
    RoleDecision,
    authenticate_check,
    build_check_request,
    ip_family,
    resolve_role_conflict,
)
from ._timers import ConsentFreshness, PendingTransaction, TransactionTable

__all__ = ["IceConnectivity"]

TA = 0.05  # RFC 8445 section 14.2: default pacing of new checks
# RFC 8445 section 14.2: whatever the peers agree, never a new transaction more often.
MIN_TA = 0.005
# Addresses accepted for data on the strength of an early check alone (bounded).
MAX_EARLY_DATA_ADDRS = 16
NOMINATION_DELAY = 0.5  # the longest a better pair may keep us from nominating
# A better pair whose check went unanswered for NOMINATION_RTT_FACTOR round trips of the
# first valid pair (at least NOMINATION_PATIENCE) stops holding nomination back: a dead
# host pair (a private address behind the peer's NAT) cost 0.5 s on every connection.
NOMINATION_PATIENCE = 0.05
NOMINATION_RTT_FACTOR = 4
# Checks keep RFC 8445 14.3's 500 ms RTO; Rc/Rm (RFC 8489 6.2.1, configurable) give
# requests at 0, 0.5, 1.5, 3.5 s and failure at 4.5 s, not 39.5 s (Rc=7, Rm=16), so a
# hopeless checklist (symmetric NATs on both sides) ends within seconds.
CHECK_MAX_REQUESTS = 4
CHECK_LAST_WAIT_FACTOR = 2
# The event queue is drained after every call; the bound only stops a driver that
# forgot to drain from growing it without limit.
MAX_EVENTS = 1024
MAX_TRANSMITS = 1024


class IceConnectivity:
    """State and internal transitions of one ICE agent; use :class:`IceAgent`."""

    def __init__(
        self,
        controlling: bool,
        local_ufrag: str | None = None,
        local_pwd: str | None = None,
        stun_servers: tuple[tuple[str, int], ...] | list[tuple[str, int]] = (),
        tie_breaker: int | None = None,
        rng: random.Random | None = None,
        pacing: float = TA,
    ) -> None:
        if not pacing >= MIN_TA:
            raise ValueError(f"ICE pacing (Ta) must be at least {MIN_TA} s")
        # Ta: both peers propose one (SDP a=ice-pacing, RFC 8839 section 5.5) and use
        # the higher; the caller passes the agreed value. 50 ms when nobody proposes.
        self._pacing = pacing
        self._rng = rng if rng is not None else random.SystemRandom()
        self._stun_servers = [canonical_addr(s) for s in stun_servers]
        self._tie_breaker = tie_breaker if tie_breaker is not None else self._rng.getrandbits(64)
        self.local_ufrag = local_ufrag or self._random_ice_string(8)
        self.local_pwd = local_pwd or self._random_ice_string(24)
        if len(self.local_ufrag) < 4 or len(self.local_pwd) < 22:
            raise ValueError("ice-ufrag needs 4+ characters and ice-pwd 22+")
        self.remote_ufrag: str | None = None
        self.remote_pwd: str | None = None
        self._checklist = CheckList(controlling)
        self._srflx: list[Candidate] = []
        self._state = IceState.NEW
        self._events: deque[IceEvent] = deque()
        self._transmits: deque[Transmit] = deque()
        self._pending = TransactionTable()
        self._triggered: deque[CandidatePair] = deque()
        self._early_checks: deque[tuple[Message, tuple[str, int], tuple[str, int]]] = deque(
            maxlen=16
        )
        self._gathering = False
        self._gathering_done = False
        self._remote_end = False
        self._next_check_at: float | None = None
        self._first_valid_at: float | None = None
        self._first_valid_rtt = 0.0
        self._selected: CandidatePair | None = None
        # The old selected pair keeps carrying data during an ICE restart.
        self._previous_selected: CandidatePair | None = None
        # Calls without ``now`` (credentials, trickle) use the latest time seen.
        self._last_now = 0.0
        self._data_addrs: set[tuple[str, int]] = set()
        self._nominations_seen: deque[bytes] = deque(maxlen=32)
        self._canonical_addrs: dict[tuple[str, int], tuple[str, int]] = {}
        self._consent = ConsentFreshness(self._rng)
        self._stats = dict.fromkeys(
            (
                "checks_sent",
                "retransmissions",
                "requests_received",
                "responses_received",
                "role_conflicts",
                "datagrams_dropped",
            ),
            0,
        )

    # -- incoming requests (RFC 8445 section 7.3) ----------------------------------------

    def _on_request(
        self, message: Message, addr: tuple[str, int], base: Candidate | None, now: float
    ) -> None:
        error = (
            400
            if base is None
            else authenticate_check(
                message,
                local_ufrag=self.local_ufrag,
                local_pwd=self.local_pwd,
                remote_ufrag=self.remote_ufrag,
            )
        )
        if error is not None or base is None:
            reason = "Bad Request" if error == 400 else "Unauthenticated"
            self._reply(error_response(message, error or 400, reason), addr, base)
            return
        decision = resolve_role_conflict(message, self.controlling, self._tie_breaker)
        if decision is not RoleDecision.KEEP:
            self._stats["role_conflicts"] += 1
        if decision is RoleDecision.REJECT:
            key = self.local_pwd.encode()
            self._reply(error_response(message, 487, "Role Conflict", key), addr, base)
            return
        if decision is RoleDecision.SWITCH:
            self._switch_role(not self.controlling)
        self._reply(binding_success_response(message, addr, self.local_pwd.encode()), addr, base)
        if self.remote_pwd is None:
            self._early_checks.append((message, addr, (base.host, base.port)))
            # The check carried our password: the peer's DTLS may follow from there
            # before its answer reaches us (a browser that answered us starts at once).
            if len(self._data_addrs) < MAX_EARLY_DATA_ADDRS:
                self._data_addrs.add(addr)
            return
        self._incoming_check(message, addr, (base.host, base.port), now)

    def _incoming_check(
        self, message: Message, addr: tuple[str, int], local: tuple[str, int], now: float
    ) -> None:
        checklist = self._checklist
        remote = checklist.find_remote(addr)
        if remote is None:
            remote = peer_reflexive_candidate(
                addr, message.attributes["PRIORITY"], self._random_ice_string(8)
            )
            checklist.add_remote(remote)
        pair = checklist.find_pair(local, addr)
        if pair is None:
            return  # the check list is full or the families differ
        self._data_addrs.add(addr)
        # Triggered check (RFC 8445 section 7.3.1.4). A check in progress is resent now
        # (RFC 5245 7.2.1.4's immediate retransmit): the peer's check just opened its
        # NAT for ours, so the answer comes in one round trip, not after the next RTO.
        if pair.state is PairState.IN_PROGRESS and pair.check_transaction is not None:
            in_flight = self._pending.get(pair.check_transaction)
            if in_flight is not None:
                self._stats["retransmissions"] += 1
                self._queue(in_flight.transaction.data, in_flight.addr, in_flight.local)
        if pair.state in (PairState.FROZEN, PairState.WAITING, PairState.FAILED):
            pair.state = PairState.WAITING
            if pair not in self._triggered:
                self._triggered.append(pair)
        if (
            "USE-CANDIDATE" in message.attributes
            and not self.controlling
            and message.transaction_id not in self._nominations_seen
        ):
            # The controlling side decides: its latest nomination wins, even over a
            # higher-priority pair whose nomination it saw fail. Retransmitted or
            # duplicated requests (same transaction) must not revive an old choice.
            self._nominations_seen.append(message.transaction_id)
            for other in checklist.pairs:
                other.remote_nominated = other is pair
            if pair.state is PairState.SUCCEEDED:
                self._nominated(pair, now)

    # -- responses (RFC 8445 section 7.2.5) ----------------------------------------------

    def _on_response(self, message: Message, addr: tuple[str, int], now: float) -> None:
        pending = self._pending.get(message.transaction_id)
        if pending is None:
            return
        if pending.kind == "gather":
            self._pending.remove(pending)
            self._on_gather_response(message, pending)
            return
        assert self.remote_pwd is not None
        # An unauthenticated answer is ignored and retransmissions go on (RFC 8489 9.1.4).
        if not message.check_message_integrity(self.remote_pwd.encode()):
            return
        self._pending.remove(pending)
        pair = pending.pair
        assert pair is not None
        if pending.kind == "consent":
            if message.message_class == Class.RESPONSE and addr == pair.remote_addr:
                self._consent.refreshed(now)
            return
        pair.check_transaction = None
        if message.message_class == Class.ERROR:
            if message.error_code == 487:
                self._switch_role(not pending.sent_controlling)
                pair.state = PairState.WAITING
                pair.nominating = False
                self._triggered.appendleft(pair)
            else:
                self._check_failed(pair)
            return
        if addr != pair.remote_addr:  # non-symmetric: RFC 8445 7.2.5.2.1
            self._check_failed(pair)
            return
        first_valid = pair.state is not PairState.SUCCEEDED
        pair.state = PairState.SUCCEEDED
        self._data_addrs.add(pair.remote_addr)
        if first_valid:
            self._checklist.unfreeze_foundation(pair)
            if self._first_valid_at is None:
                self._first_valid_at = now
                self._first_valid_rtt = now - pending.sent_at
        if pending.nominate or (pair.remote_nominated and not self.controlling):
            self._nominated(pair, now)
        self._maybe_nominate(now)

    def _on_gather_response(self, message: Message, pending: PendingTransaction) -> None:
        mapped = mapped_address(message) if message.message_class == Class.RESPONSE else None
        base = pending.base
        assert base is not None
        if mapped is not None:
            mapped = canonical_addr(mapped)
            known = {(c.host, c.port) for c in self.local_candidates}
            if mapped not in known:
                candidate = server_reflexive_candidate(mapped, base)
                self._srflx.append(candidate)
                self._emit(CandidateGathered(candidate))
        self._maybe_gathering_complete()

    def _on_transaction_timeout(self, pending: PendingTransaction, now: float) -> None:
        if pending.kind == "gather":
            self._maybe_gathering_complete()
        elif pending.kind == "check" and pending.pair is not None:
            pending.pair.check_transaction = None
            self._check_failed(pending.pair)
            self._maybe_nominate(now)
        # A lost consent check only matters through _consent_expires_at.

    def _check_failed(self, pair: CandidatePair) -> None:
        pair.state = PairState.FAILED
        pair.nominating = False
        self._maybe_fail()

    # -- checks and nomination -----------------------------------------------------------

    def _has_checks_to_start(self) -> bool:
        if self.remote_pwd is None or self._state in (IceState.FAILED, IceState.CLOSED):
            return False
        if self._triggered:
            return True
        return self._selected is None and self._checklist.next_ordinary() is not None

    def _schedule_checks(self, now: float) -> None:
        if self._next_check_at is None and self._has_checks_to_start():
            self._next_check_at = now

    def _start_next_check(self, now: float) -> None:
        if not self._has_checks_to_start():
            self._next_check_at = None
            return
        pair = None
        nominate = False
        while self._triggered and pair is None:
            candidate = self._triggered.popleft()
            if candidate in self._checklist.pairs and candidate.check_transaction is None:
                pair = candidate
                nominate = candidate.nominating
        if pair is None and self._selected is None:
            pair = self._checklist.next_ordinary()
        if pair is not None:
            self._send_check(pair, nominate, now)
        self._next_check_at = now + self._pacing

    def _send_check(self, pair: CandidatePair, nominate: bool, now: float) -> None:
        assert self.remote_ufrag is not None and self.remote_pwd is not None
        request = self._check_request(nominate)
        if pair.state is not PairState.SUCCEEDED:
            pair.state = PairState.IN_PROGRESS
        pair.check_transaction = request.transaction_id
        pair.check_started_at = now
        self._stats["checks_sent"] += 1
        transaction = StunTransaction(
            bytes(request),
            now,
            max_requests=CHECK_MAX_REQUESTS,
            last_wait_factor=CHECK_LAST_WAIT_FACTOR,
        )
        self._start(
            PendingTransaction(
                "check",
                transaction,
                pair.remote_addr,
                pair.local_addr,
                pair=pair,
                nominate=nominate,
                sent_controlling=self.controlling,
                sent_at=now,
            )
        )

    def _check_request(self, nominate: bool) -> Message:
        assert self.remote_ufrag is not None and self.remote_pwd is not None
        return build_check_request(
            self._transaction_id(),
            remote_ufrag=self.remote_ufrag,
            local_ufrag=self.local_ufrag,
            remote_pwd=self.remote_pwd,
            controlling=self.controlling,
            tie_breaker=self._tie_breaker,
            nominate=nominate,
        )

    def _wants_nomination(self) -> bool:
        return (
            self.controlling
            and self._selected is None
            and self._state is IceState.CHECKING
            and not any(p.nominating for p in self._checklist.pairs)
        )

    def _maybe_nominate(self, now: float) -> None:
        """Regular nomination (RFC 8445 section 8.1.1) of the best valid pair.

        Waits up to NOMINATION_DELAY after the first success while a better pair is
        still being checked, so a slow host pair beats a quick relay-ish one.
        """
        if not self._wants_nomination():
            return
        valid = self._checklist.valid_pairs()
        if not valid:
            return
        best = valid[0]  # pairs are kept sorted
        hold = self._nomination_hold(best)
        if hold is not None and now < hold:
            return
        best.nominating = True
        self._triggered.appendleft(best)
        self._schedule_checks(now)

    def _nomination_hold(self, best: CandidatePair) -> float | None:
        """Until when a better pair than ``best`` may still succeed (None: nominate now).

        A better pair not checked yet holds nomination back up to NOMINATION_DELAY
        after the first success; one whose check is out holds it only until the check
        has gone unanswered for a few round trips of the first valid pair.
        """
        assert self._first_valid_at is not None
        patience = max(NOMINATION_PATIENCE, NOMINATION_RTT_FACTOR * self._first_valid_rtt)
        hold: float | None = None
        for pair in self._checklist.pairs:
            if pair.priority <= best.priority:
                break  # pairs are kept sorted
            if pair.state in (PairState.WAITING, PairState.FROZEN):
                until = self._first_valid_at + NOMINATION_DELAY
            elif pair.state is PairState.IN_PROGRESS and pair.check_started_at is not None:
                until = pair.check_started_at + patience
            else:
                continue
            hold = until if hold is None else max(hold, until)
        if hold is None:
            return None
        return min(hold, self._first_valid_at + NOMINATION_DELAY)

    def _nominated(self, pair: CandidatePair, now: float) -> None:
        pair.nominated = True
        pair.nominating = False
        if self._selected is pair:
            return
        self._selected = pair
        self._previous_selected = None
        self._consent.start(now)
        # Once nominated, the other pairs waiting for a check are abandoned (8.1.2).
        for other in self._checklist.pairs:
            if other.state in (PairState.WAITING, PairState.FROZEN) and other is not pair:
                other.state = PairState.FAILED
        self._emit(SelectedPairChanged(pair.local, pair.remote))
        if self._state is not IceState.CONNECTED:
            self._set_state(IceState.CONNECTED)

    def _switch_role(self, controlling: bool) -> None:
        if controlling == self.controlling:
            return
        self._checklist.set_controlling(controlling)
        for pair in self._checklist.pairs:
            pair.nominating = False
        self._emit(RoleChanged(controlling))

    # -- consent freshness (RFC 7675) ----------------------------------------------------

    def _run_consent(self, now: float) -> None:
        pair = self._selected
        if pair is None or self._state is not IceState.CONNECTED or self.remote_pwd is None:
            return
        if self._consent.expired(now):
            self._consent.stop()
            self._emit(ConsentLost())
            self._set_state(IceState.FAILED)
        elif self._consent.check_due(now):
            request = self._check_request(nominate=False)
            # Retransmitted within the ~5 s interval (at 0, 0.5, 1.5 and 3.5 s), so a
            # lossy path keeps its consent; the transaction ends before the next one.
            transaction = StunTransaction(bytes(request), now, max_requests=4, last_wait_factor=2)
            self._start(
                PendingTransaction(
                    "consent", transaction, pair.remote_addr, pair.local_addr, pair=pair
                )
            )

    # -- helpers -------------------------------------------------------------------------

    def _maybe_gathering_complete(self) -> None:
        if self._gathering_done or not self._gathering:
            return
        if self._pending.has_kind("gather"):
            return
        self._gathering_done = True
        self._emit(GatheringComplete())

    def _maybe_fail(self) -> None:
        if self._state is not IceState.CHECKING or self._selected is not None:
            return
        if not self._remote_end or self._triggered:
            return
        if self._pending.has_kind("check"):
            return
        if self._checklist.all_failed():
            self._set_state(IceState.FAILED)

    def _set_state(self, state: IceState) -> None:
        if state is not self._state:
            self._state = state
            self._emit(IceStateChanged(state))

    def _start(self, pending: PendingTransaction) -> None:
        self._pending.add(pending)
        self._queue(pending.transaction.data, pending.addr, pending.local)

    def _reply(self, data: bytes, addr: tuple[str, int], base: Candidate | None) -> None:
        self._queue(data, addr, (base.host, base.port) if base is not None else None)

    def _queue(self, data: bytes, addr: tuple[str, int], local: tuple[str, int] | None) -> None:
        if len(self._transmits) < MAX_TRANSMITS:
            self._transmits.append(Transmit(data, addr, local))

    def _emit(self, event: IceEvent) -> None:
        if len(self._events) < MAX_EVENTS:
            self._events.append(event)

    def _base_for(self, local: tuple[str, int] | None, addr: tuple[str, int]) -> Candidate | None:
        if local is not None:
            found = self._checklist.find_local(canonical_addr(local))
            if found is not None:
                return found
        family = ip_family(addr[0])
        for candidate in self._checklist.local:
            if ip_family(candidate.host) == family:
                return candidate
        return None

    def _transaction_id(self) -> bytes:
        return self._rng.getrandbits(96).to_bytes(12, "big")

    def _random_ice_string(self, length: int) -> str:
        return "".join(self._rng.choice(ICE_CHARS) for _ in range(length))
