"""WebRtcTransport: direct data channels to peers by PeerId, signaled through a relay.

The relay session carries Offer / Answer / IceCandidate (trickle) between the two
peers; everything else is a :class:`PeerConnection`. Each connection lives in its own
task in the transport's nursery and ends when its :class:`DirectConnection` is closed.

Glare (both peers offering at once) is resolved the "perfect negotiation" way: the
peer whose PeerId sorts lower is polite — it drops its own offer and answers.

Answering is what anyone registered on the relay can make us do, so it is bounded
(issue #10, defect 3): an answer that has not connected within ``answer_timeout`` is
abandoned (ICE alone would wait for an end-of-candidates that a flooder never sends),
each remote peer has at most one attempt, and at most ``max_half_open`` answers are
half-open at once, apart from established connections. When that table is full the
oldest half-open answer is evicted for the newcomer rather than the newcomer refused:
refusing would let 16 offers per ``answer_timeout`` lock every honest peer out of the
direct path, while evicting means a flooder must out-offer the honest handshake itself
(tens of milliseconds on a good path), and only the flooder's own oldest attempts are
lost otherwise. A peer whose answer was evicted or timed out is not answered again for
``answer_timeout``, so a sustained flood needs rate x ``answer_timeout`` identities
registered on the relay at once (which limits sessions per address), not 17 reused.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import trio

from .._identity import PeerId, peer_id_text
from .._relay_client._session import RelayError, RelaySession, Signal
from .._service import NotStarted, TaskOwner
from ..proto import signaling as sig
from ..proto.errors import ParseError
from ..webrtc._datachannel import DataChannel
from ..webrtc._peer_connection import PeerConnection, PeerConnectionConfig, open_peer_connection
from ._relay_turn import RelayTurnServers

log = logging.getLogger("darkswap_trio.webrtc")

CHANNEL_LABEL = "darkswap"
_Inbox = tuple[trio.MemorySendChannel[Signal], trio.MemoryReceiveChannel[Signal]]
_INBOX_SIZE = 128  # signals queued per peer; more than that is a misbehaving peer
# Trickled candidates that arrive before the peer's Offer (the relay does not promise
# that a peer's signals overtake nothing, and a peer may trickle before it offers) wait,
# as browsers let them wait, for the Offer: a bounded number per peer, for a bounded
# number of peers (the oldest peer's are dropped first), for a bounded time (a late
# candidate of a finished session must not reach the next one).
_EARLY_CANDIDATES_PER_PEER = 32
_EARLY_CANDIDATE_PEERS = 64
_EARLY_CANDIDATE_TTL = 10.0
# Refused or evicted offers are logged at WARNING at most this often (with totals),
# not once per offer: a flood must not become a log flood too.
_FLOOD_WARNING_INTERVAL = 30.0
# Peers whose answer was abandoned, remembered (for answer_timeout) up to this many.
_COOLING_PEERS = 4096


# What ends one direct attempt (the transport goes on): the peer connection or the
# signaling session failing, or a malformed description from the peer.
_FAILURES = (trio.BrokenResourceError, trio.ClosedResourceError, ParseError, OSError, RelayError)


def _first_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


@dataclass
class DirectConnection:
    """A direct WebRTC connection to ``peer_id`` and its data channel (a trio Channel)."""

    peer_id: str
    peer_connection: PeerConnection
    channel: DataChannel
    _done: trio.Event = field(default_factory=trio.Event, repr=False)

    async def aclose(self) -> None:
        """Close the channel and the peer connection (the far end sees the close)."""
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            await self.channel.aclose()
        self._done.set()


@dataclass
class _Attempt:
    peer_id: str
    result: trio.MemorySendChannel[DirectConnection | BaseException]
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    offering: bool = True
    evicted: bool = False


@dataclass(frozen=True)
class WebRtcTransportStatistics:
    """A snapshot of a :class:`WebRtcTransport` (``transport.statistics()``).

    ``connections``: established direct connections. ``half_open_answers``: answers to
    unsolicited offers not yet connected (each holds a UDP socket; at most
    ``max_half_open``). ``offers_refused``: offers not answered (``max_connections``
    established, the peer already has an attempt or a connection, or its last answer
    was abandoned less than ``answer_timeout`` ago).
    ``offers_evicted``: half-open answers abandoned for a newer offer.
    ``answers_timed_out``: answers that did not connect within ``answer_timeout``.
    """

    connections: int
    half_open_answers: int
    offers_refused: int
    offers_evicted: int
    answers_timed_out: int
    early_candidates: int
    dropped_signals: int


class WebRtcSignalingClient:
    """WebRTC signaling with peers by PeerId over a registered relay session.

    Sends Offer / Answer / IceCandidate through the relay (which stamps our
    authenticated id as ``from``) and yields what other peers send us, in order.
    """

    def __init__(self, session: RelaySession) -> None:
        self.session = session
        self.local_peer_id = session.local_peer_id

    async def send_offer(self, peer_id: str, sdp: str) -> None:
        await self.session.send_signal(sig.Offer(from_=self.local_peer_id, to=peer_id, sdp=sdp))

    async def send_answer(self, peer_id: str, sdp: str) -> None:
        await self.session.send_signal(sig.Answer(from_=self.local_peer_id, to=peer_id, sdp=sdp))

    async def send_candidate(self, peer_id: str, candidate: str | None) -> None:
        """Trickle one candidate; None sends the W3C end-of-candidates (empty string)."""
        await self.session.send_signal(
            sig.IceCandidate(
                from_=self.local_peer_id,
                to=peer_id,
                candidate=candidate or "",
                sdp_mid="0",
                sdp_mline_index=0,
            )
        )

    async def receive(self) -> sig.Offer | sig.Answer | sig.IceCandidate:
        """The next signal another peer sent us; EndOfChannel when the session ends."""
        return await self.session.signals.receive()

    def __aiter__(self) -> WebRtcSignalingClient:
        return self

    async def __anext__(self) -> sig.Offer | sig.Answer | sig.IceCandidate:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None


class WebRtcTransport(TaskOwner):
    """Direct connections negotiated over ``session`` (a registered RelaySession).

    ``session`` is a RelaySession (or a WebRtcSignalingClient over one).
    ``await transport.connect(peer_id)`` offers; offers from other peers are answered
    and their connections come out of ``await transport.accept()``. Run it with
    ``async with`` or ``await nursery.start(transport.run)``.

    ``max_connections`` bounds established connections; ``max_half_open`` bounds
    answers to other peers' offers that have not connected yet (the oldest is evicted
    for a new offer), and ``answer_timeout`` (seconds) ends such an answer that does
    not connect in time. See :meth:`statistics`.
    """

    def __init__(
        self,
        session: RelaySession | WebRtcSignalingClient,
        config: PeerConnectionConfig | None = None,
        *,
        max_connections: int = 64,
        max_half_open: int = 16,
        answer_timeout: float = 10.0,
        turn_from_relay: bool = False,
        relay_only: bool = False,
    ) -> None:
        if max_connections < 1 or max_half_open < 1:
            raise ValueError("max_connections and max_half_open must be at least 1")
        if not 0 < answer_timeout < math.inf:
            raise ValueError(
                f"answer_timeout must be a positive number of seconds, not {answer_timeout!r}"
            )
        self.signaling = (
            session
            if isinstance(session, WebRtcSignalingClient)
            else WebRtcSignalingClient(session)
        )
        self.config = config or PeerConnectionConfig()
        # The relay's TURN servers, asked for per attempt (P2PConfig.turn_from_relay).
        self._relay_turn = (
            RelayTurnServers(self.signaling.session, relay_only) if turn_from_relay else None
        )
        self.local_peer_id = self.signaling.local_peer_id
        self.max_connections = max_connections
        self.max_half_open = max_half_open
        self.answer_timeout = answer_timeout
        self._half_open: OrderedDict[str, _Attempt] = OrderedDict()  # oldest first
        self._connected = 0
        self.offers_refused = 0
        self.offers_evicted = 0
        self.answers_timed_out = 0
        self._last_flood_warning = -math.inf
        self._cooling: OrderedDict[str, float] = OrderedDict()  # peer -> refused until
        self._inboxes: dict[str, trio.MemorySendChannel[Signal]] = {}
        self._attempts: dict[str, _Attempt] = {}
        self._accepted_send, self._accepted = trio.open_memory_channel[DirectConnection](
            max_connections
        )
        self._nursery: trio.Nursery | None = None
        self._idle = trio.Event()  # set whenever no connection task is running
        self._idle.set()
        self._early: OrderedDict[str, deque[tuple[float, sig.IceCandidate]]] = OrderedDict()
        self.dropped_signals = 0

    async def run(
        self, *, task_status: trio.TaskStatus[WebRtcTransport] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._dispatch_signals)
            task_status.started(self)
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None
                nursery.cancel_scope.cancel()

    async def stop(self) -> None:
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        await trio.lowlevel.checkpoint()

    # -- public -------------------------------------------------------------------------

    async def connect(self, peer_id: PeerId | str, *, timeout: float = 30.0) -> DirectConnection:
        """Open a direct connection to ``peer_id``; BrokenResourceError if it fails."""
        peer_id = peer_id_text(peer_id)
        nursery = self._require_running()
        if peer_id in self._attempts:
            raise trio.BusyResourceError(f"a connection to {peer_id} is already being set up")
        send, receive = trio.open_memory_channel[DirectConnection | BaseException](1)
        attempt = _Attempt(peer_id, send)
        self._attempts[peer_id] = attempt
        nursery.start_soon(self._run_connection, attempt, None, self._open_inbox(peer_id))
        started = trio.current_time()
        try:
            with trio.fail_after(timeout):
                outcome = await receive.receive()
        except trio.TooSlowError:
            attempt.scope.cancel()
            log.info("direct attempt to %s ended after %.3f s: timed out", peer_id, timeout)
            raise trio.BrokenResourceError(f"direct connection to {peer_id} timed out") from None
        except BaseException:
            # Cancelled by our caller: end the attempt too (the one now running for
            # this caller, if a polite switch replaced ours), or it would outlive us.
            current = self._attempts.get(peer_id)
            (current if current is not None and current.result is send else attempt).scope.cancel()
            raise
        finally:
            if self._attempts.get(peer_id) is attempt:
                del self._attempts[peer_id]
        if isinstance(outcome, BaseException):
            log.info(
                "direct attempt to %s ended after %.3f s: %r",
                peer_id,
                trio.current_time() - started,
                outcome,
            )
            raise trio.BrokenResourceError(f"direct connection to {peer_id} failed") from outcome
        return outcome

    async def wait_idle(self) -> None:
        """Wait until no direct connection of this transport is alive."""
        while self._inboxes:
            await self._idle.wait()

    async def accept(self) -> DirectConnection:
        """The next connection another peer opened to us."""
        return await self._accepted.receive()

    def statistics(self) -> WebRtcTransportStatistics:
        """A snapshot of connection counts and of what the offer bounds refused."""
        return WebRtcTransportStatistics(
            connections=self._connected,
            half_open_answers=len(self._half_open),
            offers_refused=self.offers_refused,
            offers_evicted=self.offers_evicted,
            answers_timed_out=self.answers_timed_out,
            early_candidates=self.early_candidates,
            dropped_signals=self.dropped_signals,
        )

    # -- signaling -----------------------------------------------------------------------

    def _require_running(self) -> trio.Nursery:
        if self._nursery is None:
            raise NotStarted("WebRtcTransport is not running; use 'async with' or nursery.start")
        return self._nursery

    async def _dispatch_signals(self) -> None:
        async for msg in self.signaling:
            peer = msg.from_
            if isinstance(msg, sig.Offer):
                self._on_offer(msg)
            inbox = self._inboxes.get(peer)
            if inbox is None:
                if isinstance(msg, sig.IceCandidate):
                    self._keep_early_candidate(msg)  # its Offer may still be on the way
                continue  # otherwise a stale answer: no connection with that peer
            self._deliver_signal(inbox, msg)

    def _deliver_signal(self, inbox: trio.MemorySendChannel[Signal], msg: Signal) -> None:
        try:
            inbox.send_nowait(msg)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self.dropped_signals += 1

    def _keep_early_candidate(self, msg: sig.IceCandidate) -> None:
        peer = msg.from_
        queue = self._early.get(peer)
        if queue is None:
            if len(self._early) >= _EARLY_CANDIDATE_PEERS:
                _, evicted = self._early.popitem(last=False)
                self.dropped_signals += len(evicted)
            queue = self._early[peer] = deque()
        if len(queue) >= _EARLY_CANDIDATES_PER_PEER:
            self.dropped_signals += 1
            return
        queue.append((trio.current_time(), msg))

    @property
    def early_candidates(self) -> int:
        """Candidates held for peers whose Offer has not arrived (bounded)."""
        return sum(len(queue) for queue in self._early.values())

    def _on_offer(self, offer: sig.Offer) -> None:
        peer = offer.from_
        nursery = self._require_running()
        attempt = self._attempts.get(peer)
        if attempt is not None and attempt.offering:
            if self.local_peer_id > peer:
                return  # impolite: our offer stands; theirs is ignored
            # Polite: abandon our offer and answer theirs, for the same caller.
            attempt.scope.cancel()
            self._inboxes.pop(peer, None)
            answering = _Attempt(peer, attempt.result, offering=False)
            self._attempts[peer] = answering
            nursery.start_soon(self._run_connection, answering, offer, self._open_inbox(peer))
            return
        if peer in self._inboxes:
            self.offers_refused += 1  # one attempt per peer; renegotiation is not supported
            return
        if self._connected >= self.max_connections:
            self.offers_refused += 1
            self._warn_flood(f"{self.max_connections} connections established")
            return
        if self._cooling.get(peer, -math.inf) > trio.current_time():
            self.offers_refused += 1
            self._warn_flood("offers again within answer_timeout of an abandoned answer")
            return
        self._cooling.pop(peer, None)
        if len(self._half_open) >= self.max_half_open:
            _, oldest = self._half_open.popitem(last=False)
            oldest.evicted = True
            oldest.scope.cancel()
            self._cool_down(oldest.peer_id)
            self.offers_evicted += 1
            self._warn_flood(f"{self.max_half_open} answers half-open, evicting the oldest")
        send, _ = trio.open_memory_channel[DirectConnection | BaseException](0)
        answering = _Attempt(peer, send, offering=False)
        answering.scope.deadline = trio.current_time() + self.answer_timeout
        self._half_open[peer] = answering
        nursery.start_soon(self._run_connection, answering, offer, self._open_inbox(peer))

    def _cool_down(self, peer: str) -> None:
        self._cooling[peer] = trio.current_time() + self.answer_timeout
        self._cooling.move_to_end(peer)
        while len(self._cooling) > _COOLING_PEERS:
            self._cooling.popitem(last=False)

    def _warn_flood(self, reason: str) -> None:
        now = trio.current_time()
        if now - self._last_flood_warning >= _FLOOD_WARNING_INTERVAL:
            self._last_flood_warning = now
            log.warning(
                "offers beyond the direct-path bounds (%s): %d refused, %d evicted, "
                "%d timed out so far; next report in %.0f s at the earliest",
                reason,
                self.offers_refused,
                self.offers_evicted,
                self.answers_timed_out,
                _FLOOD_WARNING_INTERVAL,
            )

    def _open_inbox(self, peer: str) -> _Inbox:
        # Registered before the connection task starts, so no signal that follows an
        # offer (trickled candidates) can slip past while the task is being scheduled.
        # Candidates that came before it are queued first, in arrival order.
        send, receive = trio.open_memory_channel[Signal](_INBOX_SIZE)
        self._inboxes[peer] = send
        self._idle = trio.Event()
        oldest = trio.current_time() - _EARLY_CANDIDATE_TTL
        for arrived, msg in self._early.pop(peer, ()):
            if arrived >= oldest:
                self._deliver_signal(send, msg)
            else:
                self.dropped_signals += 1
        return send, receive

    async def _run_connection(
        self, attempt: _Attempt, offer: sig.Offer | None, inbox_pair: _Inbox
    ) -> None:
        peer = attempt.peer_id
        inbox_send, inbox = inbox_pair
        connection: DirectConnection | None = None
        failure: BaseException | None = None
        try:
            with attempt.scope:
                config = self.config
                if self._relay_turn is not None:
                    config = await self._relay_turn.config(config)
                async with open_peer_connection(config) as pc, trio.open_nursery() as nursery:
                    nursery.start_soon(self._apply_signals, pc, inbox)
                    if offer is None:
                        await self.signaling.send_offer(peer, await pc.create_offer())
                    else:
                        await pc.set_remote_description(offer.sdp, "offer")
                        await self.signaling.send_answer(peer, await pc.create_answer())
                    # Trickle only once the description is out, so our candidates
                    # follow it on the (ordered) signaling session.
                    nursery.start_soon(self._trickle_out, pc, peer)
                    await pc.wait_connected()
                    if offer is None:
                        channel = await pc.create_data_channel(CHANNEL_LABEL)
                    else:
                        channel = await pc.accept_data_channel()
                    connection = DirectConnection(peer, pc, channel)
                    attempt.scope.deadline = math.inf  # answered in time: no longer half-open
                    self._connected += 1
                    if self._half_open.get(peer) is attempt:
                        del self._half_open[peer]
                    if attempt.offering or self._attempts.get(peer) is attempt:
                        attempt.result.send_nowait(connection)
                    else:
                        await self._accepted_send.send(connection)
                    await connection._done.wait()
                    nursery.cancel_scope.cancel()
        except* _FAILURES as group:
            # The peer connection's nursery wraps its failures in an ExceptionGroup;
            # one failed direct attempt must never escape into the transport (and
            # from there take down the network and every relayed link with it).
            failure = _first_leaf(group)
        finally:
            if connection is not None:
                self._connected -= 1
            if self._half_open.get(peer) is attempt:
                del self._half_open[peer]
            if self._inboxes.get(peer) is inbox_send:
                del self._inboxes[peer]
            if not self._inboxes:
                self._idle.set()
        if (
            connection is None
            and attempt.scope.cancelled_caught
            and not attempt.evicted
            and not attempt.offering
            and trio.current_time() >= attempt.scope.deadline
        ):
            self.answers_timed_out += 1
            self._cool_down(peer)
            log.info(
                "answer to %s abandoned: not connected within %.1f s", peer, self.answer_timeout
            )
        if failure is not None:
            log.info("direct connection with %s failed: %r", peer, failure)
            if connection is None:
                try:
                    attempt.result.send_nowait(failure)
                except (trio.WouldBlock, trio.BrokenResourceError):
                    pass

    async def _trickle_out(self, pc: PeerConnection, peer: str) -> None:
        async for candidate in pc.local_candidates():
            await self.signaling.send_candidate(peer, candidate)

    async def _apply_signals(
        self, pc: PeerConnection, inbox: trio.MemoryReceiveChannel[Signal]
    ) -> None:
        async for msg in inbox:
            try:
                if isinstance(msg, sig.Answer):
                    await pc.set_remote_description(msg.sdp, "answer")
                elif isinstance(msg, sig.IceCandidate):
                    pc.add_ice_candidate(msg.candidate or None, msg.sdp_mid, msg.sdp_mline_index)
            except ParseError as exc:
                log.warning("bad signal from %s: %s", msg.from_, exc)
