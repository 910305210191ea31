"""SCTP association setup (RFC 9260 5.1-5.2): INIT, INIT-ACK, COOKIE-ECHO, COOKIE-ACK.

A mixin of :class:`~darkswap_trio.proto.sctp._association.SctpAssociation`, kept apart because
setup is its own small state machine. WebRTC peers may both send INIT; RFC 9260 5.2
resolves it: each side answers the other's INIT with an INIT-ACK carrying its *own*
original tag (5.2.1), both echo cookies, and a COOKIE-ECHO whose tags match the
current association establishes it (5.2.4 actions B/D). Since this end keeps one tag
and initial TSN for life, every cookie we accept names the same local tag.
"""

from __future__ import annotations

from collections import deque

from ._chunks import (
    PARAM_FORWARD_TSN_SUPPORTED,
    PARAM_STATE_COOKIE,
    PARAM_SUPPORTED_EXTENSIONS,
    PARAM_ZERO_CHECKSUM_ACCEPTABLE,
    ZERO_CHECKSUM_DTLS,
    CookieAckChunk,
    CookieEchoChunk,
    InitAckChunk,
    InitChunk,
)
from ._cookie import make_cookie, open_cookie_untrusted
from ._events import Connected, SctpState
from ._heartbeat import PathHeartbeat
from ._reconfig import StreamResetter
from ._sender import SctpSender
from ._streams import SctpReceiver

STREAMS = 65535  # WebRTC asks for the maximum in both directions


class AssociationSetup:
    """Setup half of SctpAssociation; the attributes below are owned by its __init__."""

    _state: SctpState
    _now: float
    _local_tag: int
    _local_tsn: int
    _peer_tag: int
    _secret: bytes
    _window: int
    _mtu: int
    _zero_checksum: bool
    _send_zero_checksum: bool
    _cookie_lifetime: float
    _cookie_echo: bytes
    _rto_initial: float
    _max_init_retransmissions: int
    _t1_deadline: float | None
    _t1_count: int
    _t1_rto: float
    _init_chunk: bytes
    _control: list[bytes]
    _solo: deque[tuple[int, bytes]]
    _events: deque
    _sender: SctpSender
    _receiver: SctpReceiver | None
    _resetter: StreamResetter
    _heartbeat: PathHeartbeat
    outbound_streams: int

    def _terminate(self, reason: str, graceful: bool = False) -> None:
        raise NotImplementedError

    def _extension_params(self) -> list[tuple[int, bytes]]:
        params = [(PARAM_FORWARD_TSN_SUPPORTED, b""), (PARAM_SUPPORTED_EXTENSIONS, bytes([192, 130]))]
        if self._zero_checksum:
            params.append((PARAM_ZERO_CHECKSUM_ACCEPTABLE, ZERO_CHECKSUM_DTLS))
        return params

    def _on_init(self, chunk: InitChunk) -> None:
        if self._state not in (
            SctpState.CLOSED, SctpState.COOKIE_WAIT, SctpState.COOKIE_ECHOED,
        ) and chunk.initiate_tag != self._peer_tag:
            return  # a restarted peer: not supported (see module docstring)
        cookie = make_cookie(self._secret, self._now, self._local_tag, chunk)
        params = [(PARAM_STATE_COOKIE, cookie), *self._extension_params()]
        init_ack = InitAckChunk(
            self._local_tag, self._receiver.a_rwnd if self._receiver else self._window,
            STREAMS, STREAMS, self._local_tsn, params,
        )
        self._solo.append((chunk.initiate_tag, init_ack.encode()))

    def _on_init_ack(self, chunk: InitAckChunk) -> None:
        if self._state is not SctpState.COOKIE_WAIT:
            return
        cookie = chunk.state_cookie
        if cookie is None:
            return
        self._set_peer(chunk.initiate_tag, chunk.initial_tsn, chunk.a_rwnd,
                       chunk.inbound_streams, chunk.forward_tsn_supported,
                       chunk.zero_checksum_dtls)
        self._cookie_echo = CookieEchoChunk(cookie).encode()
        self._control.insert(0, self._cookie_echo)
        self._state = SctpState.COOKIE_ECHOED
        self._t1_count = 0
        self._t1_rto = self._rto_initial  # the peer answered: no reason to stay backed off
        self._t1_deadline = self._now + self._t1_rto

    def _on_cookie_echo(self, chunk: CookieEchoChunk) -> None:
        cookie = open_cookie_untrusted(self._secret, chunk.cookie)
        if cookie is None or cookie.local_tag != self._local_tag:
            return  # not ours
        peer_tag = cookie.peer_tag
        if self._state in (SctpState.CLOSED, SctpState.COOKIE_WAIT, SctpState.COOKIE_ECHOED):
            if not 0 <= self._now - cookie.created <= self._cookie_lifetime and (
                peer_tag != self._peer_tag
            ):
                return  # stale, and not a retransmission for the association we echo
            if peer_tag != self._peer_tag or self._receiver is None:
                self._set_peer(
                    peer_tag, cookie.peer_initial_tsn, cookie.peer_a_rwnd,
                    cookie.peer_inbound_streams, cookie.forward_tsn_supported,
                    cookie.zero_checksum_dtls,
                )
            if self._cookie_echo in self._control:
                self._control.remove(self._cookie_echo)
            self._control.insert(0, CookieAckChunk().encode())
            self._establish()
        elif peer_tag == self._peer_tag:
            self._control.insert(0, CookieAckChunk().encode())  # our COOKIE-ACK was lost

    def _on_cookie_ack(self, chunk: CookieAckChunk) -> None:
        if self._state is SctpState.COOKIE_ECHOED:
            self._establish()

    def _set_peer(
        self, tag: int, initial_tsn: int, a_rwnd: int, inbound_streams: int, forward_tsn: bool,
        zero_checksum: bool = False,
    ) -> None:
        self._peer_tag = tag
        # RFC 9653: both announced it, so our packets may carry a zero checksum.
        self._send_zero_checksum = zero_checksum and self._zero_checksum
        self.outbound_streams = min(STREAMS, inbound_streams)
        self._receiver = SctpReceiver(initial_tsn, self._window, self._events)
        self._resetter.start(self._local_tsn, self._receiver)
        self._sender.peer_rwnd = a_rwnd
        self._sender.ssthresh = max(a_rwnd, 4 * self._mtu)
        self._sender.forward_tsn_supported = forward_tsn

    def _establish(self) -> None:
        self._state = SctpState.ESTABLISHED
        self._t1_deadline = None
        self._t1_rto = self._rto_initial
        self._heartbeat.start(self._now)
        self._events.append(Connected())

    def _on_t1(self, now: float) -> None:
        self._t1_count += 1
        if self._t1_count > self._max_init_retransmissions:
            self._terminate("association setup timed out")
            return
        self._t1_rto = min(self._t1_rto * 2, self._sender.rto_max)
        self._t1_deadline = now + self._t1_rto
        if self._state is SctpState.COOKIE_WAIT:
            self._solo.append((0, self._init_chunk))
        elif self._state is SctpState.COOKIE_ECHOED:
            if self._cookie_echo not in self._control:
                self._control.insert(0, self._cookie_echo)
        else:
            self._t1_deadline = None
