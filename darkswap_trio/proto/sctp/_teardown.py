"""SCTP association teardown (RFC 9260 9.1-9.2): SHUTDOWN, ABORT, ERROR, T2.

A mixin of :class:`~darkswap_trio.proto.sctp._association.SctpAssociation`, kept apart like the
setup half (:mod:`.sctp_handshake`): graceful shutdown waits for the sender to go idle,
then exchanges SHUTDOWN / SHUTDOWN-ACK / SHUTDOWN-COMPLETE under the T2 timer.
"""

from __future__ import annotations

from collections import deque

from ._chunks import (
    AbortChunk,
    ErrorChunk,
    ShutdownAckChunk,
    ShutdownChunk,
    ShutdownCompleteChunk,
    UnknownChunk,
)
from ._events import Closed, SctpState
from ._heartbeat import PathHeartbeat
from ._reconfig import StreamResetter
from ._sender import SctpSender
from ._streams import MASK32, SctpReceiver

_LIVE_STATES = (
    SctpState.ESTABLISHED, SctpState.COOKIE_ECHOED, SctpState.SHUTDOWN_PENDING,
    SctpState.SHUTDOWN_SENT, SctpState.SHUTDOWN_RECEIVED,
)
_SHUTDOWN_WAITING = (SctpState.SHUTDOWN_PENDING, SctpState.SHUTDOWN_RECEIVED)


class AssociationTeardown:
    """Teardown half of SctpAssociation; the attributes below are owned by its __init__."""

    _state: SctpState
    _now: float
    _peer_tag: int
    _max_retransmissions: int
    _t1_deadline: float | None
    _t2_deadline: float | None
    _t2_count: int
    _sack_deadline: float | None
    _control: list[bytes]
    _solo: deque[tuple[int, bytes]]
    _events: deque
    _sender: SctpSender
    _receiver: SctpReceiver | None
    _resetter: StreamResetter
    _heartbeat: PathHeartbeat

    def _check_shutdown(self) -> None:
        if self._state not in _SHUTDOWN_WAITING or not self._sender.idle():
            return
        receiver = self._receiver
        assert receiver is not None
        if self._state is SctpState.SHUTDOWN_PENDING:
            self._state = SctpState.SHUTDOWN_SENT
            self._control.append(ShutdownChunk(receiver.cum_tsn & MASK32).encode())
            self._t2_count = 0
            self._t2_deadline = self._now + self._sender.rto
        elif self._state is SctpState.SHUTDOWN_RECEIVED:
            self._state = SctpState.SHUTDOWN_ACK_SENT
            self._control.append(ShutdownAckChunk().encode())
            self._t2_count = 0
            self._t2_deadline = self._now + self._sender.rto

    def _on_shutdown(self, chunk: ShutdownChunk) -> None:
        if self._state not in _LIVE_STATES or self._state is SctpState.COOKIE_ECHOED:
            return
        sender = self._sender
        sender.handle_sack(chunk.cum_tsn, sender.peer_rwnd + sender.flight, [], self._now)
        if self._state is SctpState.SHUTDOWN_SENT:
            self._state = SctpState.SHUTDOWN_ACK_SENT
            self._control.append(ShutdownAckChunk().encode())
            self._t2_count = 0
            self._t2_deadline = self._now + sender.rto
            return
        self._state = SctpState.SHUTDOWN_RECEIVED
        self._check_shutdown()

    def _on_shutdown_ack(self, chunk: ShutdownAckChunk) -> None:
        if self._state in (SctpState.SHUTDOWN_SENT, SctpState.SHUTDOWN_ACK_SENT):
            self._solo.append((self._peer_tag, ShutdownCompleteChunk().encode()))
            self._terminate("shutdown complete", graceful=True)

    def _on_shutdown_complete(self, chunk: ShutdownCompleteChunk) -> None:
        if self._state is SctpState.SHUTDOWN_ACK_SENT:
            self._terminate("shutdown complete", graceful=True)

    def _on_abort(self, chunk: AbortChunk) -> None:
        reason = ", ".join(
            f"cause {code}: {value.decode('utf-8', 'replace')}" if code == 12 else f"cause {code}"
            for code, value in chunk.causes
        )
        self._terminate(f"aborted by peer ({reason})" if reason else "aborted by peer")

    def _on_error(self, chunk: ErrorChunk) -> None:
        """Operation errors (unrecognized chunk/parameter, stale cookie) are not fatal."""

    def _on_unknown(self, chunk: UnknownChunk) -> bool:
        """RFC 9260 3.2: the top two bits of the type say skip or stop, report or not."""
        action = chunk.chunk_type >> 6
        if action in (1, 3):
            cause = (6, chunk.encode())
            self._control.append(ErrorChunk([cause]).encode())
        return action >= 2

    def _terminate(self, reason: str, graceful: bool = False) -> None:
        if self._state is SctpState.TERMINATED:
            return
        self._state = SctpState.TERMINATED
        self._t1_deadline = self._t2_deadline = self._sack_deadline = None
        self._heartbeat.deadline = None
        sender = self._sender
        sender.t3_deadline = sender.reorder_deadline = sender.probe_deadline = None
        self._resetter.deadline = None
        self._events.append(Closed(reason, graceful))

    def _on_t2(self, now: float) -> None:
        self._t2_count += 1
        if self._t2_count > self._max_retransmissions:
            self._terminate("shutdown timed out")
            return
        self._t2_deadline = now + min(self._sender.rto * 2**self._t2_count, self._sender.rto_max)
        receiver = self._receiver
        if self._state is SctpState.SHUTDOWN_SENT and receiver is not None:
            self._control.append(ShutdownChunk(receiver.cum_tsn & MASK32).encode())
        elif self._state is SctpState.SHUTDOWN_ACK_SENT:
            self._control.append(ShutdownAckChunk().encode())
