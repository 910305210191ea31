"""SCTP association setup (RFC 9260 5.1-5.2): tags, the state cookie and the T1 timer.

:class:`AssociationSetup` is the part of an association that knows how to start one:
it owns our verification tag, initial TSN and cookie secret, answers INIT, INIT-ACK
and COOKIE-ECHO (queueing its chunks on the association's ``control`` and ``solo``
queues) and runs T1. It reports what it learned (:class:`PeerParams`) and the
association applies the state transitions (:mod:`._state`).

WebRTC peers may both send INIT; RFC 9260 5.2 resolves it: each side answers the
other's INIT with an INIT-ACK carrying its *own* original tag (5.2.1), both echo
cookies, and a COOKIE-ECHO whose tags match the current association establishes it
(5.2.4 actions B/D). Since this end keeps one tag and initial TSN for life, every
cookie we accept names the same local tag.
"""

from __future__ import annotations

import random
from collections import deque
from typing import NamedTuple

from ._chunks import (
    PARAM_FORWARD_TSN_SUPPORTED,
    PARAM_STATE_COOKIE,
    PARAM_SUPPORTED_EXTENSIONS,
    PARAM_ZERO_CHECKSUM_ACCEPTABLE,
    ZERO_CHECKSUM_DTLS,
    AbortChunk,
    Chunk,
    CookieAckChunk,
    CookieEchoChunk,
    InitAckChunk,
    InitChunk,
    ShutdownCompleteChunk,
)
from ._cookie import make_cookie, open_cookie_untrusted
from ._events import SctpState

STREAMS = 65535  # WebRTC asks for the maximum in both directions


class PeerParams(NamedTuple):
    """What the peer's INIT or INIT-ACK (or the cookie holding it) told us."""

    tag: int
    initial_tsn: int
    a_rwnd: int
    inbound_streams: int
    forward_tsn: bool
    zero_checksum: bool


class CookieEchoed(NamedTuple):
    """A COOKIE-ECHO for this association: establish, learning ``peer`` if not None."""

    peer: PeerParams | None


class AssociationSetup:
    """Our side of the setup handshake: identity (tag, TSN, secret), chunks, T1."""

    def __init__(
        self,
        control: list[bytes],
        solo: deque[tuple[int, bytes]],
        rng: random.Random,
        window: int,
        zero_checksum: bool,
        initial_tsn: int | None,
        rto_initial: float,
        max_init_retransmissions: int,
        cookie_lifetime: float,
    ) -> None:
        self._control = control  # chunks for the next bundle
        self._solo = solo  # (vtag, chunk) sent alone
        self.local_tag = rng.randrange(1, 1 << 32)
        self.local_tsn = rng.randrange(0, 1 << 32) if initial_tsn is None else initial_tsn
        self._secret = rng.getrandbits(256).to_bytes(32, "big")
        self._window = window
        self._zero_checksum = zero_checksum
        self._rto_initial = rto_initial
        self._max_init_retransmissions = max_init_retransmissions
        self._cookie_lifetime = cookie_lifetime
        self.init_chunk = InitChunk(
            self.local_tag,
            window,
            STREAMS,
            STREAMS,
            self.local_tsn,
            self._extension_params(),
        ).encode()
        self.cookie_echo = b""  # encoded, once our INIT was answered
        self.t1_deadline: float | None = None
        self._t1_count = 0
        self._t1_rto = rto_initial
        # When the INIT or COOKIE-ECHO now waiting for its answer was sent, None once T1
        # resent it (Karn: an answer to which copy?) or once answered.
        self._asked_at: float | None = None

    def _extension_params(self) -> list[tuple[int, bytes]]:
        params = [
            (PARAM_FORWARD_TSN_SUPPORTED, b""),
            (PARAM_SUPPORTED_EXTENSIONS, bytes([192, 130])),
        ]
        if self._zero_checksum:
            params.append((PARAM_ZERO_CHECKSUM_ACCEPTABLE, ZERO_CHECKSUM_DTLS))
        return params

    def start(self, now: float) -> None:
        """Send INIT; T1 runs."""
        self.t1_deadline = now + self._t1_rto
        self._solo.append((0, self.init_chunk))
        self._asked_at = now

    def on_init(self, init: InitChunk, now: float, a_rwnd: int) -> None:
        """Answer ``init`` with an INIT-ACK holding a cookie; keeps no state (5.1.3)."""
        cookie = make_cookie(self._secret, now, self.local_tag, init)
        params = [(PARAM_STATE_COOKIE, cookie), *self._extension_params()]
        init_ack = InitAckChunk(self.local_tag, a_rwnd, STREAMS, STREAMS, self.local_tsn, params)
        self._solo.append((init.initiate_tag, init_ack.encode()))

    def answered(self, now: float) -> float | None:
        """The INIT or COOKIE-ECHO we sent once was answered (INIT-ACK, COOKIE-ACK):
        the round trip, an RTT sample (None if T1 resent it, or for a second answer).

        Without it a new association's first DATA waits out RTO.Initial (1 s), twice
        that after a second loss, and has no RTT for the tail loss probe or time-based
        loss detection: its first message could take 3 s to arrive at 10% loss."""
        asked, self._asked_at = self._asked_at, None
        return None if asked is None or now < asked else now - asked

    def on_init_ack(self, init_ack: InitAckChunk, now: float) -> PeerParams | None:
        """Echo the cookie of ``init_ack`` (T1 restarts); the peer it names, if any."""
        cookie = init_ack.state_cookie
        if cookie is None:
            return None
        self.cookie_echo = CookieEchoChunk(cookie).encode()
        self._control.insert(0, self.cookie_echo)
        self._t1_count = 0
        self._t1_rto = self._rto_initial  # the peer answered: no reason to stay backed off
        self.t1_deadline = now + self._t1_rto
        self._asked_at = now  # the COOKIE-ECHO's round trip starts
        return PeerParams(
            init_ack.initiate_tag,
            init_ack.initial_tsn,
            init_ack.a_rwnd,
            init_ack.inbound_streams,
            init_ack.forward_tsn_supported,
            init_ack.zero_checksum_dtls,
        )

    def on_cookie_echo(
        self, chunk: CookieEchoChunk, now: float, setting_up: bool, peer_tag: int | None
    ) -> CookieEchoed | None:
        """A COOKIE-ECHO; ``setting_up``: the state allows it to establish us;
        ``peer_tag``: the peer's, once known.

        Answers COOKIE-ACK to a valid cookie (again, if ours was lost once established).
        """
        cookie = open_cookie_untrusted(self._secret, chunk.cookie)
        if cookie is None or cookie.local_tag != self.local_tag:
            return None  # not ours
        if not setting_up:
            if cookie.peer_tag == peer_tag:
                self._control.insert(0, CookieAckChunk().encode())  # our COOKIE-ACK was lost
            return None
        fresh = 0 <= now - cookie.created <= self._cookie_lifetime
        if not fresh and cookie.peer_tag != peer_tag:
            return None  # stale, and not a retransmission for the association we echo
        if self.cookie_echo in self._control:
            self._control.remove(self.cookie_echo)
        self._control.insert(0, CookieAckChunk().encode())
        if cookie.peer_tag == peer_tag:
            return CookieEchoed(None)
        return CookieEchoed(
            PeerParams(
                cookie.peer_tag,
                cookie.peer_initial_tsn,
                cookie.peer_a_rwnd,
                cookie.peer_inbound_streams,
                cookie.forward_tsn_supported,
                cookie.zero_checksum_dtls,
            )
        )

    def tag_ok(self, vtag: int, chunks: list[Chunk], peer_tag: int) -> bool:
        """RFC 9260 8.5: whether a packet with these chunks may carry ``vtag``."""
        first = chunks[0]
        if type(first) is InitChunk:
            return vtag == 0 and len(chunks) == 1
        if isinstance(first, (AbortChunk, ShutdownCompleteChunk)) and first.t_bit:
            return vtag == peer_tag and vtag != 0
        return vtag == self.local_tag

    def established(self) -> None:
        self.t1_deadline = None
        self._t1_rto = self._rto_initial

    def on_t1(self, now: float, rto_max: float, state: SctpState) -> bool:
        """T1 fired: resend what ``state`` waits an answer for and back off, or return
        False to give up."""
        self._t1_count += 1
        if self._t1_count > self._max_init_retransmissions:
            return False
        self._t1_rto = min(self._t1_rto * 2, rto_max)
        self.t1_deadline = now + self._t1_rto
        self._asked_at = None  # resent: its answer is no RTT sample
        if state is SctpState.COOKIE_WAIT:
            self._solo.append((0, self.init_chunk))
        elif state is SctpState.COOKIE_ECHOED:
            if self.cookie_echo not in self._control:
                self._control.insert(0, self.cookie_echo)
        else:
            self.t1_deadline = None
        return True
