"""The SCTP association's state transitions (RFC 9260 4), in one table.

Modelled on h11's ``_state.py``: every legal (state, trigger) pair maps to the next
state, :func:`next_state` applies it and raises :class:`SctpStateError` on anything
else, so a transition the RFC does not have is a bug that shows, not a silent jump.
Whether a chunk is acceptable in the current state is asked of the same table
(:func:`allows`): a chunk whose trigger has no entry is ignored, as RFC 9260 asks.

Triggers are what happened (an application call, a chunk, the sender going idle, a
failure); the association decides what to send on the way.
"""

from __future__ import annotations

import enum

from ._events import SctpState

__all__ = [
    "DATA_STATES",
    "LIVE_STATES",
    "RECEIVE_STATES",
    "SHUTDOWN_WAITING",
    "TRANSITIONS",
    "SctpStateError",
    "Trigger",
    "allows",
    "next_state",
]


class Trigger(enum.Enum):
    CONNECT = "connect"  # the application asked to connect: INIT sent
    INIT_ACK = "init-ack"  # our INIT was answered: COOKIE-ECHO sent
    COOKIE_ECHO = "cookie-echo"  # a valid cookie for this association arrived
    COOKIE_ACK = "cookie-ack"
    SHUTDOWN_CALLED = "shutdown-called"  # graceful close asked, data still queued
    SENDER_IDLE = "sender-idle"  # everything we sent is acknowledged: SHUTDOWN(-ACK) sent
    SHUTDOWN = "shutdown"  # the peer's SHUTDOWN arrived
    SHUTDOWN_ACK = "shutdown-ack"
    SHUTDOWN_COMPLETE = "shutdown-complete"
    ABORT = "abort"  # ABORT either way, timeouts, setup before establishment cut short


_S = SctpState
_T = Trigger

TRANSITIONS: dict[tuple[SctpState, Trigger], SctpState] = {
    (_S.CLOSED, _T.CONNECT): _S.COOKIE_WAIT,
    (_S.COOKIE_WAIT, _T.INIT_ACK): _S.COOKIE_ECHOED,
    # WebRTC peers both send INIT: a cookie may establish us from any setup state.
    (_S.CLOSED, _T.COOKIE_ECHO): _S.ESTABLISHED,
    (_S.COOKIE_WAIT, _T.COOKIE_ECHO): _S.ESTABLISHED,
    (_S.COOKIE_ECHOED, _T.COOKIE_ECHO): _S.ESTABLISHED,
    (_S.COOKIE_ECHOED, _T.COOKIE_ACK): _S.ESTABLISHED,
    (_S.ESTABLISHED, _T.SHUTDOWN_CALLED): _S.SHUTDOWN_PENDING,
    (_S.SHUTDOWN_PENDING, _T.SENDER_IDLE): _S.SHUTDOWN_SENT,
    (_S.SHUTDOWN_RECEIVED, _T.SENDER_IDLE): _S.SHUTDOWN_ACK_SENT,
    (_S.ESTABLISHED, _T.SHUTDOWN): _S.SHUTDOWN_RECEIVED,
    (_S.SHUTDOWN_PENDING, _T.SHUTDOWN): _S.SHUTDOWN_RECEIVED,
    (_S.SHUTDOWN_RECEIVED, _T.SHUTDOWN): _S.SHUTDOWN_RECEIVED,  # a retransmission
    (_S.SHUTDOWN_SENT, _T.SHUTDOWN): _S.SHUTDOWN_ACK_SENT,  # both closed at once (9.2)
    (_S.SHUTDOWN_SENT, _T.SHUTDOWN_ACK): _S.TERMINATED,
    (_S.SHUTDOWN_ACK_SENT, _T.SHUTDOWN_ACK): _S.TERMINATED,  # the crossing SHUTDOWN-ACK
    (_S.SHUTDOWN_ACK_SENT, _T.SHUTDOWN_COMPLETE): _S.TERMINATED,
    **{(state, _T.ABORT): _S.TERMINATED for state in _S if state is not _S.TERMINATED},
}

# Tuples, not sets: membership is then an identity scan (Enum.__hash__ is Python code).
#: DATA may be sent (and SACKs processed).
DATA_STATES = (_S.ESTABLISHED, _S.SHUTDOWN_PENDING, _S.SHUTDOWN_RECEIVED)
#: The peer's DATA is accepted.
RECEIVE_STATES = (_S.ESTABLISHED, _S.COOKIE_ECHOED, _S.SHUTDOWN_PENDING, _S.SHUTDOWN_SENT)
#: The peer is known and the association not closing for good.
LIVE_STATES = (*RECEIVE_STATES, _S.SHUTDOWN_RECEIVED)
#: Waiting for the sender to go idle before SHUTDOWN or SHUTDOWN-ACK.
SHUTDOWN_WAITING = (_S.SHUTDOWN_PENDING, _S.SHUTDOWN_RECEIVED)


class SctpStateError(RuntimeError):
    """A transition the table does not have: a bug in the association, not the peer."""


def allows(state: SctpState, trigger: Trigger) -> bool:
    return (state, trigger) in TRANSITIONS


def next_state(state: SctpState, trigger: Trigger) -> SctpState:
    try:
        return TRANSITIONS[state, trigger]
    except KeyError:
        raise SctpStateError(f"no transition from {state.value} on {trigger.value}") from None
