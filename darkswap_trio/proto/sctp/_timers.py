"""The association's timers: T1 (setup), T2 (shutdown), T3 and the sender's others,
the delayed SACK, heartbeats and stream reset, each owned by its part. This is the
part of :class:`~._association.SctpAssociation` that asks them for their deadlines
and fires the due ones.

``poll_timeout`` runs after every packet in and out (the driver moves its wake-up),
so it compares the deadlines one by one rather than through a generator and ``min``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._events import SctpState

if TYPE_CHECKING:
    from ._acks import SackScheduler
    from ._handshake import AssociationSetup
    from ._heartbeat import PathHeartbeat
    from ._reconfig import StreamResetter
    from ._sender import SctpSender
    from ._streams import SctpReceiver
    from ._teardown import AssociationTeardown

__all__ = ["AssociationTimers"]


class AssociationTimers:
    _state: SctpState
    _now: float
    _sender: SctpSender
    _receiver: SctpReceiver | None
    _setup: AssociationSetup
    _teardown: AssociationTeardown
    _acks: SackScheduler
    _heartbeat: PathHeartbeat
    _resetter: StreamResetter
    _control: list[bytes]
    _max_retransmissions: int

    def _terminate(self, reason: str) -> None:
        raise NotImplementedError

    def poll_timeout(self) -> float | None:
        """The earliest deadline at which :meth:`handle_timeout` must be called."""
        if self._state is SctpState.TERMINATED:
            return None
        sender = self._sender
        earliest = sender.t3_deadline
        for deadline in (
            sender.reorder_deadline,
            sender.probe_deadline,
            self._acks.deadline,
            self._heartbeat.deadline,
            self._setup.t1_deadline,
            self._teardown.deadline,
            self._resetter.deadline,
        ):
            if deadline is not None and (earliest is None or deadline < earliest):
                earliest = deadline
        return earliest

    def handle_timeout(self, now: float) -> None:
        """Fire every timer whose deadline is at or before ``now``."""
        self._now = now
        if self._setup.t1_deadline is not None and now >= self._setup.t1_deadline:
            self._on_t1(now)
        if self._teardown.deadline is not None and now >= self._teardown.deadline:
            self._on_t2(now)
        sender = self._sender
        if sender.t3_deadline is not None and now >= sender.t3_deadline:
            sender.handle_t3_timeout(now)
            if sender.consecutive_timeouts > self._max_retransmissions:
                self._terminate("peer unreachable: too many retransmissions")
                return
        if sender.reorder_deadline is not None and now >= sender.reorder_deadline:
            sender.handle_reorder_timeout(now)
        if sender.probe_deadline is not None and now >= sender.probe_deadline:
            sender.handle_probe_timeout(now)
        if self._acks.deadline is not None and now >= self._acks.deadline:
            self._acks.handle_timeout()
        if self._heartbeat.deadline is not None and now >= self._heartbeat.deadline:
            chunk = self._heartbeat.on_timer(now, sender.rtt.rto)
            if chunk is None:
                self._terminate("peer unreachable: heartbeats unanswered")
                return
            self._control.append(chunk)
        if self._resetter.deadline is not None and now >= self._resetter.deadline:
            self._resetter.handle_timeout(now)

    def _on_t1(self, now: float) -> None:
        if not self._setup.on_t1(now, self._sender.rtt.rto_max, self._state):
            self._terminate("association setup timed out")

    def _on_t2(self, now: float) -> None:
        rtt, receiver = self._sender.rtt, self._receiver
        cum_tsn = receiver.cum_tsn if receiver is not None else 0
        if not self._teardown.on_t2(now, self._state, cum_tsn, rtt.rto, rtt.rto_max):
            self._terminate("shutdown timed out")
