"""SCTP association teardown (RFC 9260 9.1-9.2, 3.2): the T2 timer, ABORT and unknown chunks.

Graceful shutdown waits for the sender to go idle, then exchanges SHUTDOWN /
SHUTDOWN-ACK / SHUTDOWN-COMPLETE; the association applies those transitions
(:mod:`._state`) and :class:`AssociationTeardown` sends the chunks and runs T2.
"""

from __future__ import annotations

from ._chunks import (
    AbortChunk,
    ErrorChunk,
    ShutdownAckChunk,
    ShutdownChunk,
    UnknownChunk,
)
from ._events import SctpState
from ._streams import MASK32


class AssociationTeardown:
    """SHUTDOWN / SHUTDOWN-ACK on the association's ``control`` queue, and T2-shutdown."""

    def __init__(self, control: list[bytes], max_retransmissions: int) -> None:
        self._control = control
        self.deadline: float | None = None  # T2
        self._count = 0
        self._max = max_retransmissions

    def send(self, state: SctpState, cum_tsn: int, now: float, rto: float) -> None:
        """Send what ``state`` owes the peer (SHUTDOWN or SHUTDOWN-ACK); T2 starts."""
        self._count = 0
        self.deadline = now + rto
        self._queue(state, cum_tsn)

    def on_t2(self, now: float, state: SctpState, cum_tsn: int, rto: float, rto_max: float) -> bool:
        """T2 fired: back off and resend, or return False to give up."""
        self._count += 1
        if self._count > self._max:
            return False
        self.deadline = now + min(rto * 2**self._count, rto_max)
        self._queue(state, cum_tsn)
        return True

    def _queue(self, state: SctpState, cum_tsn: int) -> None:
        if state is SctpState.SHUTDOWN_SENT:
            self._control.append(ShutdownChunk(cum_tsn & MASK32).encode())
        elif state is SctpState.SHUTDOWN_ACK_SENT:
            self._control.append(ShutdownAckChunk().encode())


def abort_reason(chunk: AbortChunk) -> str:
    """What the peer's ABORT says, for :class:`~._events.Closed`."""
    reason = ", ".join(
        f"cause {code}: {value.decode('utf-8', 'replace')}" if code == 12 else f"cause {code}"
        for code, value in chunk.causes
    )
    return f"aborted by peer ({reason})" if reason else "aborted by peer"


def unknown_chunk_action(chunk: UnknownChunk) -> tuple[bytes | None, bool]:
    """RFC 9260 3.2: the top two bits of the type say skip or stop, report or not.

    Returns the ERROR chunk to send (or None) and whether to go on with the packet.
    """
    action = chunk.chunk_type >> 6
    report = ErrorChunk([(6, chunk.encode())]).encode() if action in (1, 3) else None
    return report, action >= 2
