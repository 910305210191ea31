"""DTLS on a peer connection before ICE has selected a pair: :class:`EarlyDtls`.

A peer whose ICE finishes first starts DTLS at once: a browser that is the controlled
agent sends its ClientHello as soon as its own check succeeded, before our nomination
selects a pair, and sometimes before its answer has reached us at all. Dropping that
ClientHello or our reply costs a DTLS retransmission timer (1 s), so:

* the peer's DTLS that comes before we have a DTLS endpoint is kept (one flight) and
  replayed once the endpoint starts;
* ours goes back to the validated address the peer's DTLS came from (RFC 8445 section
  12.1 allows data on a valid pair before selection), or waits, a bounded number of
  datagrams, until ICE has a path. What is dropped for want of a pair is counted.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from .. import dtls as dtls_mod
from ..dtls import DtlsEndpoint, DtlsParseError
from ..ice import IceAgent, IceState

__all__ = ["EarlyDtls"]

MAX_HELD = 32  # our datagrams waiting for a path (DTLS retransmits whole flights)
MAX_EARLY_RECEIVED = 8  # the peer's first flight is one or two datagrams


class EarlyDtls:
    """The state a :class:`~._core.PeerCore` keeps for the above."""

    def __init__(self) -> None:
        self.peer_addr: tuple[str, int] | None = None  # where the peer's DTLS came from
        self.held: deque[bytes] = deque()  # ours, no path yet
        self.received: deque[bytes] = deque(maxlen=MAX_EARLY_RECEIVED)  # theirs, no endpoint

    def replay(self, dtls: DtlsEndpoint, now: float) -> int:
        """Feed what came before ``dtls`` existed; returns how many did not parse."""
        bad = 0
        received = self.received
        while received and dtls.state is not dtls_mod.DtlsState.FAILED:
            try:
                dtls.receive(received.popleft(), now)
            except DtlsParseError:
                bad += 1
        received.clear()
        return bad

    def send_held(self, ice: IceAgent, send: Callable[[bytes, tuple[str, int]], None]) -> int:
        """Send held datagrams in order while ICE has a path for them; returns how many
        were dropped (ICE failed or closed, or more than MAX_HELD waiting)."""
        held, reply_to = self.held, self.peer_addr
        while held:
            transmit = ice.send_data(held[0], reply_to)
            if transmit is None:
                break
            held.popleft()
            send(transmit.data, transmit.addr)
        dropped = 0
        if held and ice.state in (IceState.FAILED, IceState.CLOSED):
            dropped = len(held)
            held.clear()
        while len(held) > MAX_HELD:
            held.popleft()  # the oldest first: a newer flight supersedes it
            dropped += 1
        return dropped
