"""Relay circuits as a sans-IO core: the accounting rules of docs/PROTOCOL.md section 4-5.

:class:`CircuitTable` owns every circuit of one relay server, keyed by ``relay_id`` (the
UUID's 16 bytes). It decides; the trio driver only moves bytes. Calls describe what a
peer did (``request``, ``data``, ``credit``, ``close``, ``disconnect``) and the table
answers with events (:meth:`CircuitTable.poll_event`) saying what to send to whom:

- :class:`CircuitOpened` / :class:`CircuitRefused`: answer the requester, tell the target;
- :class:`DeliverData`: forward a payload to the other end;
- :class:`DeliverCredit`: the sender of a direction may send ``increment`` more bytes;
- :class:`CircuitClosed`: tell each peer in ``notify`` that the circuit closed, and why.

Invariants (checked by tests/proto/test_circuits.py): no data is delivered for a
circuit after its close; a direction never carries more than its credit (so the relay
holds at most ``window`` bytes per direction); the data limit is never exceeded; the
circuit caps are never exceeded; every close tells every still-connected end exactly once.

Stall rule: a direction is *blocked* when its sender's balance is below one full data
frame (its receiver holds, or the relay still queues, almost a whole window); one that
gets no credit back for ``stall_timeout`` seconds closes with reason ``stalled``. Progress
is returned credit, not socket writes: the rule does not depend on kernel buffer sizes.

Abuse rules (issue #10 item 5): one source holds at most ``max_circuits_per_pair``
circuits to one target (refused ``too_many_circuits_to_peer``), so one identity cannot take
all of a target's slots; a circuit that carries no data either way for ``idle_timeout``
seconds closes with reason ``idle``, both ends told.

Adaptive windows under a memory budget: :mod:`darkswap_trio.proto.circuit_windows`. Time
is passed in (``now``); the table never reads a clock.
"""

from __future__ import annotations

import dataclasses
import enum
from collections import deque
from dataclasses import dataclass, field

from .circuit_windows import WindowBudget
from .signaling import CircuitLimits

__all__ = [
    "CircuitClosed",
    "CircuitEvent",
    "CircuitOpened",
    "CircuitRefused",
    "CircuitTable",
    "CircuitTableStatistics",
    "CloseReason",
    "DeliverCredit",
    "DeliverData",
    "Outcome",
]


class CloseReason(enum.StrEnum):
    """Why a circuit closed (the ``reason`` of ``CloseRelay``)."""

    CLOSED = "closed"
    CLOSED_BY_PEER = "closed_by_peer"
    PEER_DISCONNECTED = "peer_disconnected"
    DURATION_LIMIT = "duration_limit"
    DATA_LIMIT = "data_limit"
    CREDIT_EXCEEDED = "credit_exceeded"
    STALLED = "stalled"
    IDLE = "idle"
    SERVER_SHUTDOWN = "server_shutdown"
    TOKEN_EXPIRED = "token_expired"
    PROTOCOL_ERROR = "protocol_error"
    # The relay node holding the other end became unreachable (relay cluster: its mesh
    # link broke), docs/PROTOCOL.md section 15.
    NODE_LOST = "node_lost"


class Outcome(enum.Enum):
    """Immediate result of a call that names a circuit."""

    OK = "ok"
    UNKNOWN_CIRCUIT = "unknown_circuit"  # no such circuit, or the caller is not one of its ends


# -- events -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CircuitOpened:
    relay_id: bytes
    requester: str
    target: str
    limits: CircuitLimits


@dataclass(frozen=True, slots=True)
class CircuitRefused:
    requester: str
    target: str
    code: str  # "self_circuit" | "too_many_circuits" | "too_many_circuits_to_peer"
    message: str


@dataclass(frozen=True, slots=True)
class DeliverData:
    relay_id: bytes
    sender: str
    receiver: str
    payload: bytes | memoryview
    #: the sender's encoded DATA frame of ``payload`` (darkswap-relay/1), if given to
    #: :meth:`CircuitTable.data`: a relay forwards it as is instead of encoding again
    frame: bytes | None = None


@dataclass(frozen=True, slots=True)
class DeliverCredit:
    relay_id: bytes
    to: str  # the sender of the direction the credit is for
    increment: int


@dataclass(frozen=True, slots=True)
class CircuitClosed:
    relay_id: bytes
    reason: CloseReason
    # (peer, reason to tell that peer); peers that are gone are not listed.
    notify: tuple[tuple[str, str], ...]
    # For the operator's log (not part of the event's identity): the two ends and the
    # payload bytes carried, both directions.
    requester: str = field(default="", compare=False)
    target: str = field(default="", compare=False)
    carried: int = field(default=0, compare=False)


CircuitEvent = CircuitOpened | CircuitRefused | DeliverData | DeliverCredit | CircuitClosed


@dataclass(frozen=True)
class CircuitTableStatistics:
    circuits: int
    opened: int
    refused: int
    closed: int
    bytes_relayed: int
    in_flight_bytes: int  # payload sent and not yet credited back, across all directions
    window_bytes: int = 0  # the windows of open circuits, both directions: what they may hold


# -- state ------------------------------------------------------------------------------


class _Direction:
    """One direction of a circuit: ``sender`` -> ``receiver``."""

    __slots__ = (
        "sender",
        "receiver",
        "balance",
        "withheld",
        "blocked_since",
        "rate_tokens",
        "rate_last",
    )

    def __init__(self, sender: str, receiver: str, window: int) -> None:
        self.sender = sender
        self.receiver = receiver
        self.balance = window  # bytes the sender may still send
        self.withheld = 0  # credit returned by the receiver, not yet passed on (budget)
        self.blocked_since: float | None = None
        # Bandwidth token bucket (used when limits.bandwidth > 0); may go negative.
        self.rate_tokens = 0.0
        self.rate_last: float | None = None

    def in_flight(self, limits: CircuitLimits) -> int:
        """Payload sent and not yet credited back (nor withheld by the relay)."""
        return limits.window - self.balance - self.withheld

    def refill(self, bandwidth: int, burst: float, now: float) -> None:
        if self.rate_last is None:
            self.rate_tokens = burst
        elif now > self.rate_last:
            self.rate_tokens = min(burst, self.rate_tokens + (now - self.rate_last) * bandwidth)
        self.rate_last = now if self.rate_last is None else max(now, self.rate_last)


class _Circuit:
    __slots__ = (
        "relay_id",
        "requester",
        "target",
        "limits",
        "deadline",
        "carried",
        "last_data",
        "forward",
        "backward",
    )

    def __init__(
        self, relay_id: bytes, requester: str, target: str, limits: CircuitLimits, now: float
    ) -> None:
        self.relay_id = relay_id
        self.requester = requester
        self.target = target
        self.limits = limits
        self.deadline = now + limits.duration if limits.duration > 0 else None
        self.carried = 0  # payload bytes, both directions
        self.last_data = now  # the idle timer runs from the open and from each data frame
        self.forward = _Direction(requester, target, limits.window)
        self.backward = _Direction(target, requester, limits.window)

    def direction_from(self, sender: str) -> _Direction | None:
        if sender == self.requester:
            return self.forward
        if sender == self.target:
            return self.backward
        return None

    def other(self, peer: str) -> str:
        return self.target if peer == self.requester else self.requester


class CircuitTable:
    """Every circuit of a relay, with its limits, credit and deadlines (sans-IO).

    ``limits`` is announced to both ends on open. ``window`` must be at least
    ``max_data_frame`` (both > 0). ``max_circuits``/``max_circuits_per_peer`` of 0 mean
    unlimited; ``stall_timeout`` of 0 disables stall detection. ``max_circuits_per_pair``
    caps the circuits one requester holds to one target and ``idle_timeout`` closes
    circuits that carry no data for that long (0: no cap / no idle close).
    ``window_budget``/``min_window``: adaptive windows (:class:`WindowBudget`; 0: none).
    """

    def __init__(
        self,
        *,
        limits: CircuitLimits,
        max_circuits: int,
        max_circuits_per_peer: int,
        stall_timeout: float,
        max_circuits_per_pair: int = 0,
        idle_timeout: float = 0.0,
        window_budget: int = 0,
        min_window: int = 0,
    ) -> None:
        if limits.window <= 0 or limits.max_data_frame <= 0:
            raise ValueError("window and max_data_frame must be positive")
        if limits.window < limits.max_data_frame:
            raise ValueError("window must be at least max_data_frame")
        self.limits = limits
        self.max_circuits = max_circuits
        self.max_circuits_per_peer = max_circuits_per_peer
        self.stall_timeout = stall_timeout
        self.max_circuits_per_pair = max_circuits_per_pair
        self.idle_timeout = idle_timeout
        self.windows = WindowBudget(window_budget, min_window)
        self._circuits: dict[bytes, _Circuit] = {}
        self._by_peer: dict[str, set[bytes]] = {}
        self._by_pair: dict[tuple[str, str], int] = {}  # (requester, target) -> circuits
        self._events: deque[CircuitEvent] = deque()
        self._opened = self._refused = self._closed = self._bytes = 0
        self._new_deadline: float | None = None

    # -- queries --------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._circuits)

    def __contains__(self, relay_id: bytes) -> bool:
        return relay_id in self._circuits

    def ends(self, relay_id: bytes) -> tuple[str, str] | None:
        """(requester, target) of an open circuit, or None."""
        c = self._circuits.get(relay_id)
        return None if c is None else (c.requester, c.target)

    def circuits_of(self, peer: str) -> frozenset[bytes]:
        return frozenset(self._by_peer.get(peer, ()))

    def balance(self, relay_id: bytes, sender: str) -> int | None:
        """Bytes ``sender`` may still send on the circuit; None if it is not an end."""
        c = self._circuits.get(relay_id)
        d = None if c is None else c.direction_from(sender)
        return None if d is None else d.balance

    def statistics(self) -> CircuitTableStatistics:
        in_flight = sum(c.forward.in_flight(c.limits) + c.backward.in_flight(c.limits)
                        for c in self._circuits.values())  # fmt: skip
        return CircuitTableStatistics(
            circuits=len(self._circuits),
            opened=self._opened,
            refused=self._refused,
            closed=self._closed,
            bytes_relayed=self._bytes,
            in_flight_bytes=in_flight,
            window_bytes=self.windows.committed,
        )

    def next_window(self) -> int:
        """The window a circuit opened now would get (announced in its limits)."""
        return self.windows.next_window(self.limits)

    def effective_window(self, relay_id: bytes) -> int | None:
        """The credit a direction of the circuit may hold now (circuit_windows)."""
        c = self._circuits.get(relay_id)
        return None if c is None else self.windows.effective(c.limits, len(self._circuits))

    # -- events and time ------------------------------------------------------------

    def poll_event(self) -> CircuitEvent | None:
        return self._events.popleft() if self._events else None

    def _note_deadline(self, t: float) -> None:
        if self._new_deadline is None or t < self._new_deadline:
            self._new_deadline = t

    def take_new_deadline(self) -> float | None:
        """The earliest deadline created since the last call, or None (O(1)).

        :meth:`poll_timeout` scans every circuit; a driver calls it only when its timer
        fires, and uses this cheap hint after each call into the table to learn whether
        it must wake its timer earlier.
        """
        t, self._new_deadline = self._new_deadline, None
        return t

    def poll_timeout(self) -> float | None:
        """The earliest duration or stall deadline, or None."""
        best: float | None = None
        for c in self._circuits.values():
            for t in self._deadlines(c):
                if best is None or t < best:
                    best = t
        return best

    def _deadlines(self, c: _Circuit) -> list[float]:
        out = [] if c.deadline is None else [c.deadline]
        if self.idle_timeout > 0:
            out.append(c.last_data + self.idle_timeout)
        if self.stall_timeout > 0:
            for d in (c.forward, c.backward):
                if d.blocked_since is not None:
                    out.append(d.blocked_since + self.stall_timeout)
        return out

    def handle_timeout(self, now: float) -> None:
        """Close every circuit whose duration, stall or idle deadline has passed."""
        for c in list(self._circuits.values()):
            if c.deadline is not None and now >= c.deadline:
                self._close(c, CloseReason.DURATION_LIMIT)
            elif self.idle_timeout > 0 and now >= c.last_data + self.idle_timeout:
                self._close(c, CloseReason.IDLE)
            elif self.stall_timeout > 0 and any(
                d.blocked_since is not None and now >= d.blocked_since + self.stall_timeout
                for d in (c.forward, c.backward)
            ):
                self._close(c, CloseReason.STALLED)

    # -- peer actions ---------------------------------------------------------------

    def request(
        self,
        requester: str,
        target: str,
        relay_id: bytes,
        now: float,
        *,
        limits: CircuitLimits | None = None,
    ) -> bool:
        """``requester`` asks for a circuit to ``target`` (which the caller knows is connected).

        ``limits`` (default: the table's) lets a circuit whose other end is on another
        relay node take the limits both nodes agreed on. Emits CircuitOpened or
        CircuitRefused; returns whether it opened.
        """
        if relay_id in self._circuits:
            raise ValueError("relay_id already in use")
        refusal = None
        if requester == target:
            refusal = ("self_circuit", "cannot open a circuit to yourself")
        elif self.max_circuits and len(self._circuits) >= self.max_circuits:
            refusal = ("too_many_circuits", "the relay is at its circuit limit")
        elif self.max_circuits_per_pair and (
            self._by_pair.get((requester, target), 0) >= self.max_circuits_per_pair
        ):
            # Checked before the target's cap: one source must not exhaust it.
            refusal = ("too_many_circuits_to_peer", "you have too many circuits to this peer")
        else:
            for peer in (requester, target):
                if self.max_circuits_per_peer and (
                    len(self._by_peer.get(peer, ())) >= self.max_circuits_per_peer
                ):
                    who = "you have" if peer == requester else "the target has"
                    refusal = ("too_many_circuits", f"{who} too many circuits")
                    break
        if refusal is not None:
            self._refused += 1
            self._events.append(CircuitRefused(requester, target, *refusal))
            return False
        if limits is None:  # not given by the other node of a cross-node circuit
            limits = self.limits
            window = self.next_window()
            if window != limits.window:
                limits = dataclasses.replace(limits, window=window)
        c = _Circuit(relay_id, requester, target, limits, now)
        self.windows.committed += 2 * limits.window
        self._circuits[relay_id] = c
        if c.deadline is not None:
            self._note_deadline(c.deadline)
        if self.idle_timeout > 0:
            self._note_deadline(now + self.idle_timeout)
        pair = (requester, target)
        self._by_pair[pair] = self._by_pair.get(pair, 0) + 1
        self._by_peer.setdefault(requester, set()).add(relay_id)
        self._by_peer.setdefault(target, set()).add(relay_id)
        self._opened += 1
        self._events.append(CircuitOpened(relay_id, requester, target, c.limits))
        return True

    def narrow(self, relay_id: bytes, limits: CircuitLimits, now: float) -> Outcome:
        """Replace the limits of a circuit that has carried nothing yet (both balances
        full): the other relay node of a cross-node circuit answered with tighter ones."""
        c = self._circuits.get(relay_id)
        if c is None:
            return Outcome.UNKNOWN_CIRCUIT
        if not 0 < limits.max_data_frame <= limits.window:
            raise ValueError("window and max_data_frame must be positive, window >= frame")
        window = c.limits.window
        if c.carried or c.forward.balance != window or c.backward.balance != window:
            raise ValueError("cannot narrow a circuit that carried data")
        self.windows.committed += 2 * (limits.window - window)
        c.limits = limits
        c.forward.balance = c.backward.balance = limits.window
        c.deadline = now + limits.duration if limits.duration > 0 else None
        if c.deadline is not None:
            self._note_deadline(c.deadline)
        return Outcome.OK

    def send_delay(self, relay_id: bytes, sender: str, size: int, now: float) -> float:
        """Seconds ``sender`` should wait before sending ``size`` bytes (bandwidth limit).

        0 when it may send now (or there is no limit or no such circuit). The driver
        waits this long before :meth:`data` (it stops reading the sender meanwhile),
        which paces a direction to ``limits.bandwidth`` bytes/s with a burst of one
        second's worth (at least one frame).
        """
        c = self._circuits.get(relay_id)
        d = None if c is None else c.direction_from(sender)
        if c is None or d is None or not c.limits.bandwidth:
            return 0.0
        d.refill(c.limits.bandwidth, self._rate_burst(c), now)
        missing = min(size, self._rate_burst(c)) - d.rate_tokens
        return max(0.0, missing / c.limits.bandwidth)

    @staticmethod
    def _rate_burst(c: _Circuit) -> float:
        return float(max(c.limits.bandwidth, c.limits.max_data_frame))

    def data(
        self,
        relay_id: bytes,
        sender: str,
        payload: bytes | memoryview,
        now: float,
        *,
        frame: bytes | None = None,
    ) -> Outcome:
        """``sender`` sends ``payload`` on the circuit (consumes credit, counts to the data limit).

        ``frame`` (optional) is carried unchanged in the :class:`DeliverData` event.

        A frame above ``max_data_frame`` closes with protocol_error, one beyond the credit
        balance with credit_exceeded, one that would pass the data limit with data_limit;
        none of those is delivered.
        """
        c = self._circuits.get(relay_id)
        d = None if c is None else c.direction_from(sender)
        if c is None or d is None:
            return Outcome.UNKNOWN_CIRCUIT
        n = len(payload)
        if n > c.limits.max_data_frame:
            self._close(c, CloseReason.PROTOCOL_ERROR)
        elif n > d.balance:
            self._close(c, CloseReason.CREDIT_EXCEEDED)
        elif c.limits.data and c.carried + n > c.limits.data:
            self._close(c, CloseReason.DATA_LIMIT)
        else:
            d.balance -= n
            c.carried += n
            c.last_data = now  # moves the idle deadline later: the timer re-reads it
            self._bytes += n
            if c.limits.bandwidth:
                d.refill(c.limits.bandwidth, self._rate_burst(c), now)
                d.rate_tokens -= n
            self._events.append(DeliverData(relay_id, sender, d.receiver, payload, frame))
            # Credit the relay withheld goes back as the sender spends: it must never wait
            # for more while the relay holds some (its receiver may batch by the window).
            if d.withheld and d.balance < self.windows.refill_below(c.limits, len(self._circuits)):
                self._pass_on(c, d, d.withheld, now)
            if d.balance < c.limits.max_data_frame and d.blocked_since is None:
                d.blocked_since = now
                if self.stall_timeout > 0:
                    self._note_deadline(now + self.stall_timeout)
        return Outcome.OK

    def credit(self, relay_id: bytes, receiver: str, increment: int, now: float) -> Outcome:
        """``receiver`` (or the relay on its behalf) lets the other end send ``increment`` more.

        The balance never exceeds ``window`` (over-granting is clamped) nor, with a budget,
        the effective window (the rest is withheld, see circuit_windows). Only the
        effective increment is forwarded (nothing when it is 0)."""
        if increment <= 0:
            raise ValueError("credit increment must be positive")
        c = self._circuits.get(relay_id)
        if c is None or c.direction_from(receiver) is None:
            return Outcome.UNKNOWN_CIRCUIT
        d = c.direction_from(c.other(receiver))
        assert d is not None
        self._pass_on(c, d, increment + d.withheld, now)
        return Outcome.OK

    def _pass_on(self, c: _Circuit, d: _Direction, available: int, now: float) -> None:
        """Give ``d``'s sender what of ``available`` its effective window allows; withhold
        the rest (circuit_windows)."""
        effective = self.windows.effective(c.limits, len(self._circuits))
        granted, d.withheld = self.windows.grant(available, d.balance, c.limits.window, effective)
        if granted > 0:
            d.balance += granted
            # Progress: the receiver consumed data; restart (or stop) the stall timer.
            d.blocked_since = now if d.balance < c.limits.max_data_frame else None
            if d.blocked_since is not None and self.stall_timeout > 0:
                self._note_deadline(now + self.stall_timeout)
            self._events.append(DeliverCredit(c.relay_id, d.sender, granted))

    def close(self, relay_id: bytes, peer: str) -> Outcome:
        """``peer`` closes the circuit: it is told ``closed``, the other end ``closed_by_peer``."""
        c = self._circuits.get(relay_id)
        if c is None or c.direction_from(peer) is None:
            return Outcome.UNKNOWN_CIRCUIT
        self._close(c, CloseReason.CLOSED, closer=peer)
        return Outcome.OK

    def close_circuit(self, relay_id: bytes, reason: CloseReason) -> Outcome:
        """The relay closes a circuit itself: both ends are told ``reason``."""
        c = self._circuits.get(relay_id)
        if c is None:
            return Outcome.UNKNOWN_CIRCUIT
        self._close(c, reason)
        return Outcome.OK

    def disconnect(self, peer: str, reason: CloseReason = CloseReason.PEER_DISCONNECTED) -> int:
        """``peer`` is gone: close its circuits, telling only the other ends. Returns how many."""
        ids = sorted(self._by_peer.get(peer, ()))
        for relay_id in ids:
            self._close(self._circuits[relay_id], reason, gone=peer)
        return len(ids)

    def close_all(self, reason: CloseReason) -> int:
        """Close every circuit (e.g. server_shutdown), telling both ends."""
        ids = sorted(self._circuits)
        for relay_id in ids:
            self._close(self._circuits[relay_id], reason)
        return len(ids)

    # -- internals ------------------------------------------------------------------

    def _close(
        self,
        c: _Circuit,
        reason: CloseReason,
        *,
        closer: str | None = None,
        gone: str | None = None,
    ) -> None:
        del self._circuits[c.relay_id]
        self.windows.committed -= 2 * c.limits.window
        pair = (c.requester, c.target)
        left = self._by_pair[pair] - 1
        if left:
            self._by_pair[pair] = left
        else:
            del self._by_pair[pair]
        for peer in (c.requester, c.target):
            ids = self._by_peer.get(peer)
            if ids is not None:
                ids.discard(c.relay_id)
                if not ids:
                    del self._by_peer[peer]
        self._closed += 1
        notify: tuple[tuple[str, str], ...]
        if closer is not None:
            notify = (
                (closer, CloseReason.CLOSED.value),
                (c.other(closer), CloseReason.CLOSED_BY_PEER.value),
            )
        else:
            notify = tuple((p, reason.value) for p in (c.requester, c.target) if p != gone)
        self._events.append(
            CircuitClosed(c.relay_id, reason, notify, c.requester, c.target, c.carried)
        )
