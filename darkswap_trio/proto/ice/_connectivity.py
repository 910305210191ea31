"""Connectivity checks and nomination (RFC 8445 sections 6.1.4-8) on the check list.

:class:`ConnectivityChecks` owns the check list and what runs on it: the triggered
queue, the Ta pacing of new checks, the answers to our checks, and when the
controlling side nominates. It sends through the agent's transaction table, reads
the agent's state and selected pair through :class:`CheckOwner`, and tells the agent
when a pair is nominated or a check fails (the agent decides what that means for
its state). Incoming checks arrive here only once the agent has authenticated them.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

from ..stun import Class, Message, StunTransaction
from ._checklist import (
    CandidatePair,
    CheckList,
    PairState,
    peer_reflexive_candidate,
)
from ._events import IceOutbox, IceState, RoleChanged
from ._stun import IceCredentials
from ._timers import PendingTransaction, TransactionTable

__all__ = ["MIN_TA", "TA", "CheckOwner", "ConnectivityChecks"]

TA = 0.05  # RFC 8445 section 14.2: default pacing of new checks
# RFC 8445 section 14.2: whatever the peers agree, never a new transaction more often.
MIN_TA = 0.005
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


class CheckOwner(Protocol):
    """What the checks need from their agent."""

    @property
    def state(self) -> IceState: ...

    @property
    def selected_pair(self) -> CandidatePair | None: ...

    def _nominated(self, pair: CandidatePair, now: float) -> None: ...

    def _maybe_fail(self) -> None: ...


class ConnectivityChecks:
    """The check list of one ICE session and the checks and nomination that run on it."""

    def __init__(
        self,
        owner: CheckOwner,
        controlling: bool,
        pacing: float,
        credentials: IceCredentials,
        pending: TransactionTable,
        outbox: IceOutbox,
        data_addrs: set[tuple[str, int]],
        stats: dict[str, int],
    ) -> None:
        self._owner = owner
        self.checklist = CheckList(controlling)
        # Ta: both peers propose one (SDP a=ice-pacing, RFC 8839 section 5.5) and use
        # the higher; the caller passes the agreed value. 50 ms when nobody proposes.
        self.pacing = pacing
        self._credentials = credentials
        self._pending = pending
        self._outbox = outbox
        self._data_addrs = data_addrs  # the agent's: addresses we accept data from
        self._stats = stats  # the agent's counters
        self.triggered: deque[CandidatePair] = deque()
        self.remote_end = False  # the peer signalled end-of-candidates
        self.next_check_at: float | None = None
        self._first_valid_at: float | None = None
        self._first_valid_rtt = 0.0
        self._last_check_at: float | None = None
        self._nominations_seen: deque[bytes] = deque(maxlen=32)

    @property
    def controlling(self) -> bool:
        return self.checklist.controlling

    def restart(self) -> None:
        """ICE restart: a new check list (same role), nothing scheduled."""
        self.checklist = CheckList(self.controlling)
        self.triggered.clear()
        self.remote_end = False
        self._first_valid_at = None
        self.next_check_at = None

    def stop(self) -> None:
        self.triggered.clear()
        self.next_check_at = None

    # -- incoming checks (RFC 8445 section 7.3.1.3-7.3.1.5) ------------------------------

    def incoming_check(
        self, message: Message, addr: tuple[str, int], local: tuple[str, int], now: float
    ) -> None:
        """An authenticated check from ``addr`` to our base ``local``."""
        checklist = self.checklist
        remote = checklist.find_remote(addr)
        if remote is None:
            remote = peer_reflexive_candidate(
                addr, message.attributes["PRIORITY"], self._credentials.random_string(8)
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
                self._pending.resend(in_flight)
        if pair.state in (PairState.FROZEN, PairState.WAITING, PairState.FAILED):
            pair.state = PairState.WAITING
            if pair not in self.triggered:
                self.triggered.append(pair)
                self._expedite(now)
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
                self._owner._nominated(pair, now)

    # -- answers to our checks (RFC 8445 section 7.2.5) ----------------------------------

    def on_response(
        self, message: Message, addr: tuple[str, int], pending: PendingTransaction, now: float
    ) -> None:
        """An authenticated answer to one of our checks."""
        pair = pending.pair
        assert pair is not None
        pair.check_transaction = None
        if message.message_class == Class.ERROR:
            if message.error_code == 487:
                self.switch_role(not pending.sent_controlling)
                pair.state = PairState.WAITING
                pair.nominating = False
                self.triggered.appendleft(pair)
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
            self.checklist.unfreeze_foundation(pair)
            if self._first_valid_at is None:
                self._first_valid_at = now
                self._first_valid_rtt = now - pending.sent_at
        if pending.nominate or (pair.remote_nominated and not self.controlling):
            self._owner._nominated(pair, now)
        self.maybe_nominate(now)

    def on_timeout(self, pending: PendingTransaction, now: float) -> None:
        """One of our checks went unanswered."""
        assert pending.pair is not None
        pending.pair.check_transaction = None
        self._check_failed(pending.pair)
        self.maybe_nominate(now)

    def _check_failed(self, pair: CandidatePair) -> None:
        pair.state = PairState.FAILED
        pair.nominating = False
        self._owner._maybe_fail()

    def exhausted(self) -> bool:
        """Every pair failed, nothing is left to try, and the peer has no more candidates."""
        if not self.remote_end or self.triggered or self._pending.has_kind("check"):
            return False
        return self.checklist.all_failed()

    # -- sending checks ------------------------------------------------------------------

    def has_checks_to_start(self) -> bool:
        owner = self._owner
        if self._credentials.remote_pwd is None or owner.state in (
            IceState.FAILED,
            IceState.CLOSED,
        ):
            return False
        if self.triggered:
            return True
        return owner.selected_pair is None and self.checklist.next_ordinary() is not None

    def schedule(self, now: float) -> None:
        if self.next_check_at is None and self.has_checks_to_start():
            self.next_check_at = now

    def _expedite(self, now: float) -> None:
        """A triggered check goes out once MIN_TA has passed since our last check, not
        at the next Ta slot.

        Ta paces ordinary checks, which probe new pairs. A triggered check answers a
        check the peer sent (at its own pace) and a nominating check repeats one that
        succeeded, so their number is bounded by the peer's checks and our valid pairs;
        RFC 8445 14.2's floor -- no new transaction more often than every 5 ms -- still
        holds for every check. (Strictly, RFC 8445 6.1.4.2 serves the triggered queue
        from the Ta timer: with a peer that proposes no a=ice-pacing that is 50 ms, paid
        once for the triggered check and again for the nomination, and it made opening
        a channel with aiortc or a browser 2-2.5x slower than aiortc, whose aioice starts
        triggered checks at once.)
        """
        if not self.has_checks_to_start():
            return
        at = now if self._last_check_at is None else max(now, self._last_check_at + MIN_TA)
        if self.next_check_at is None or at < self.next_check_at:
            self.next_check_at = at

    def start_next_check(self, now: float) -> None:
        if not self.has_checks_to_start():
            self.next_check_at = None
            return
        pair = None
        nominate = False
        while self.triggered and pair is None:
            candidate = self.triggered.popleft()
            if candidate in self.checklist.pairs and candidate.check_transaction is None:
                pair = candidate
                nominate = candidate.nominating
        if pair is None and self._owner.selected_pair is None:
            pair = self.checklist.next_ordinary()
        if pair is not None:
            self._send_check(pair, nominate, now)
        self.next_check_at = now + self.pacing

    def _send_check(self, pair: CandidatePair, nominate: bool, now: float) -> None:
        request = self._credentials.check_request(self.controlling, nominate)
        if pair.state is not PairState.SUCCEEDED:
            pair.state = PairState.IN_PROGRESS
        pair.check_transaction = request.transaction_id
        pair.check_started_at = now
        self._last_check_at = now
        self._stats["checks_sent"] += 1
        transaction = StunTransaction(
            bytes(request),
            now,
            max_requests=CHECK_MAX_REQUESTS,
            last_wait_factor=CHECK_LAST_WAIT_FACTOR,
        )
        self._pending.start(
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

    # -- nomination ----------------------------------------------------------------------

    def wants_nomination(self) -> bool:
        owner = self._owner
        return (
            self.controlling
            and owner.selected_pair is None
            and owner.state is IceState.CHECKING
            and not any(p.nominating for p in self.checklist.pairs)
        )

    def maybe_nominate(self, now: float) -> None:
        """Regular nomination (RFC 8445 section 8.1.1) of the best valid pair.

        Waits up to NOMINATION_DELAY after the first success while a better pair is
        still being checked, so a slow host pair beats a quick relay-ish one.
        """
        if not self.wants_nomination():
            return
        valid = self.checklist.valid_pairs()
        if not valid:
            return
        best = valid[0]  # pairs are kept sorted
        hold = self._nomination_hold(best)
        if hold is not None and now < hold:
            return
        best.nominating = True
        self.triggered.appendleft(best)
        self._expedite(now)  # a valid pair: its nominating check need not wait for Ta

    def _nomination_hold(self, best: CandidatePair) -> float | None:
        """Until when a better pair than ``best`` may still succeed (None: nominate now).

        A better pair not checked yet holds nomination back up to NOMINATION_DELAY
        after the first success; one whose check is out holds it only until the check
        has gone unanswered for a few round trips of the first valid pair.
        """
        assert self._first_valid_at is not None
        patience = max(NOMINATION_PATIENCE, NOMINATION_RTT_FACTOR * self._first_valid_rtt)
        hold: float | None = None
        for pair in self.checklist.pairs:
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

    def poll_timeout(self) -> float | None:
        """The next check to start, or the end of a nomination hold."""
        deadlines = []
        if self.next_check_at is not None and self.has_checks_to_start():
            deadlines.append(self.next_check_at)
        if self._first_valid_at is not None and self.wants_nomination():
            valid = self.checklist.valid_pairs()
            hold = self._nomination_hold(valid[0]) if valid else None
            if hold is not None:
                deadlines.append(hold)
        return min(deadlines) if deadlines else None

    def handle_timeout(self, now: float) -> None:
        self.schedule(now)
        if self.next_check_at is not None and now >= self.next_check_at:
            self.start_next_check(now)
        self.maybe_nominate(now)

    def switch_role(self, controlling: bool) -> None:
        if controlling == self.controlling:
            return
        self.checklist.set_controlling(controlling)
        for pair in self.checklist.pairs:
            pair.nominating = False
        self._outbox.emit(RoleChanged(controlling))

    def abandon_others(self, nominated: CandidatePair) -> None:
        """Once a pair is nominated, the pairs still waiting for a check are not (8.1.2)."""
        for other in self.checklist.pairs:
            if other.state in (PairState.WAITING, PairState.FROZEN) and other is not nominated:
                other.state = PairState.FAILED
