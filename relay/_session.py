"""One signaling session: handshake, limits, routing, and a bounded send path.

A :class:`SignalingSession` runs two tasks in its own nursery (a child of the server's
session nursery): the *reader* (handshake per docs/PROTOCOL.md section 2, then routing
by :mod:`relay._routing`, with the handshake / idle / token-expiry deadline as one cancel
scope per idle period) and the *writer* (:mod:`relay._session_writer`). A frame
addressed to the session is written at once by the task that produced it when nothing
waits before it (the usual relay hop), else it goes through one FIFO drained by the
writer, so order is preserved either way: a circuit's announcement
(``DataChannel``, or a legacy session's ``RelayRequest`` + ``RelayResponse``) before its
first data, ``CloseRelay`` after its last data. The FIFO is bounded:
circuit data by the credit windows, control frames by :data:`MAX_CONTROL_QUEUE` frames
and :data:`MAX_CONTROL_QUEUE_BYTES` bytes (:mod:`relay._outbox`): a peer that stops
reading while others keep signalling it is closed as stalled instead of growing it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import trio

from darkswap_trio.proto.circuits import CloseReason
from darkswap_trio.proto.errors import SignalingParseError
from darkswap_trio.proto.signaling import (
    CloseRelay,
    Error,
    Message,
    Ping,
    Pong,
    TokenRefreshed,
    decode_message_untrusted,
    encode_circuit_credit,
    encode_circuit_data,
    message_type,
)
from darkswap_trio.websocket import WebSocketConnection

from . import _legacy
from ._handshake import (
    HandshakeAccepted,
    HandshakeRefusal,
    HandshakeReply,
    RegistrationHandshake,
)
from ._limits import TokenBucket
from ._router import RelayRouter
from ._routing import route_binary, route_message
from ._session_handle import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_TOKEN_EXPIRED,
)
from ._session_writer import SessionWriter

if TYPE_CHECKING:
    from ._auth import JwtValidator

logger = logging.getLogger("relay.session")

MAX_CONTROL_QUEUE = 512  # control frames waiting for a peer that does not read
MAX_CONTROL_QUEUE_BYTES = 1 << 20  # ... and their bytes (at least one max-size frame fits)
# CLOSE_TIMEOUT (relay._session_writer) for a session closed for abuse: waiting for its
# close echo means parsing its flood.
ABUSE_CLOSE_TIMEOUT = 0.02
RATE_LIMIT_STRIKES = 64  # consecutive shed messages before the session is closed (1008)
# Text frames a session may send before it is registered: a handshake takes two (Register,
# Authenticate), a few Pings or retried Registers may come along; beyond, it is closed.
MAX_HANDSHAKE_FRAMES = 32

_CONNECTION_GONE = (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError)


class SignalingSession:
    """A WebSocket signaling session of one peer (see the module docstring).

    The router holds it as a :class:`~relay._session_handle.SessionHandle`; it uses
    the router's methods and shared services (``config``, ``keypair``, ``metrics``,
    ``abuse``, ``buffered``), never the router's state.
    """

    __slots__ = (
        "router", "ws", "remote_ip", "peer_id", "registered", "has_libp2p_id", "_jwt",
        "_limits", "_mode", "_handshake_deadline", "_last_activity", "_activity", "_token_deadline", "_handshake",
        "_messages", "_bytes", "_strikes", "_handshake_frames", "_guard", "_share", "_writer",
        "_credit_wakeup", "_read_scope", "_stopped", "_on_registered",
    )  # fmt: skip

    def __init__(
        self,
        router: RelayRouter,
        ws: WebSocketConnection,
        remote_ip: str,
        jwt_validator: JwtValidator | None = None,
        *,
        accepted_at: float | None = None,  # TCP accept: the handshake deadline runs from it
        server_nonce: bytes | None = None,  # announced in the upgrade response (1-RTT)
        on_registered: Callable[[], object] | None = None,  # admission: no longer pending
    ) -> None:
        self.router = router
        self.ws = ws
        self.remote_ip = remote_ip
        self.peer_id: str | None = None
        self.registered = False
        self.has_libp2p_id = False  # see relay._legacy.incompatible
        self._jwt = jwt_validator
        cfg = router.config
        self._limits = cfg.limits
        self._mode = cfg.auth.mode
        now = trio.current_time()
        handshake = self._limits.handshake_timeout
        start = now if accepted_at is None else accepted_at
        self._handshake_deadline = start + handshake if handshake > 0 else math.inf
        self._last_activity = now
        self._activity: trio.Event | None = None  # set by inbound frames; see probe_alive()
        self._token_deadline = math.inf
        self._handshake = RegistrationHandshake(
            self._mode, router.keypair, jwt_validator, server_nonce
        )
        self._messages = TokenBucket(
            self._limits.messages_per_peer_rate, self._limits.messages_per_peer_burst
        )
        self._bytes = TokenBucket(
            self._limits.bytes_per_peer_rate, self._limits.bytes_per_peer_burst
        )
        self._strikes = 0  # consecutive frames shed by a message budget
        self._handshake_frames = 0  # text frames received before registration
        self._guard = router.abuse
        self._share = self._guard.new_share()  # its fair share when the relay is overloaded
        self._writer = SessionWriter(
            ws,
            router.buffered,
            router.metrics,
            max_control_frames=MAX_CONTROL_QUEUE,
            max_control_bytes=max(MAX_CONTROL_QUEUE_BYTES, 2 * self._limits.max_frame_size),
            on_broken=self._stop_reading,
            on_legacy_written=self._legacy_written,
        )
        self._credit_wakeup: trio.Event | None = None  # a legacy sender waits for credit
        self._read_scope = trio.CancelScope()  # the one the reader is in (see _read_loop)
        self._stopped = False
        self._on_registered = on_registered

    @property
    def extended(self) -> bool:
        """Whether the peer speaks darkswap-relay/1 (binary circuit frames)."""
        return self._handshake.extended

    @property
    def close_state(self) -> tuple[int | None, str]:
        """(WebSocket close code, reason) once closing, else (None, "")."""
        return self._writer.close_code, self._writer.close_reason

    # -- lifecycle ------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the session until it closes; never raises for peer misbehaviour."""
        router = self.router
        accepting = router.session_opened(self)
        router.metrics.sessions.inc()
        router.metrics.sessions_active.inc()
        reason = CloseReason.PEER_DISCONNECTED
        if not accepting:
            self.close(CLOSE_GOING_AWAY, Error("the server is stopping", "server_shutdown"))
        try:
            async with trio.open_nursery() as nursery:
                self._writer.open(nursery)
                try:
                    reason = await self._read_loop()
                except Exception:
                    logger.exception("session %s crashed", self.peer_id)
                    self.close(CLOSE_INTERNAL, Error("internal server error", "internal_error"))
                if self._writer.close_code is None:
                    self._writer.close_code = CLOSE_NORMAL
                router.release_peer(self, reason)
                await self._writer.finish()
                nursery.cancel_scope.cancel()
        finally:
            router.metrics.sessions_active.dec()
            router.session_ended(self, reason)
            self._writer.out.clear()

    def close(self, code: int, error: Error | None = None, reason: str = "") -> None:
        """Send ``error`` (if any), then close with ``code``. Idempotent; never blocks."""
        if self._writer.close_code is not None:
            return
        self._writer.close(code, error, reason)
        if error is not None:
            self.router.metrics.error_sent(error.code or "none")
        self._stop_reading()

    def abort(self, why: str) -> None:
        """Close without flushing (the peer does not read what we already queued)."""
        if self._writer.close_code is None:
            logger.info("closing session %s: %s", self.peer_id, why)
            self._writer.out.clear()
            self.close(CLOSE_POLICY, reason=why)

    # -- outbound (never blocks; the writing is in relay._session_writer) --------------

    def send_control(self, msg: Message) -> None:
        if self._writer.close_code is None and not self._writer.send_control(msg):
            self.router.metrics.limit_hit("send_queue")
            self.abort("stalled: control queue full")

    def send_error(self, code: str, message: str, ref: str | None = None) -> None:
        self.router.metrics.error_sent(code)
        self.send_control(Error(message, code, ref))

    def send_circuit_data(
        self, relay_id: bytes, sender: str, payload: bytes | memoryview, frame: bytes | None = None
    ) -> None:
        """Queue (or write at once) circuit data; ``frame``: the sender's DATA frame of
        ``payload``, forwarded as is (the same bytes on both sides of the relay)."""
        writer = self._writer
        if writer.close_code is not None:
            return
        if self.extended:
            writer.send_data(
                relay_id, encode_circuit_data(relay_id, payload) if frame is None else frame
            )
        else:
            # Encoded (base64 JSON) only when written: the queue holds payload bytes, so
            # a legacy receiver costs the relay a window, not 4/3 of one.
            writer.out.push_data(relay_id, bytes(payload), legacy_sender=sender)

    def credit_granted(self, relay_id: bytes, increment: int) -> None:
        if self.extended and self._writer.close_code is None:
            self._writer.send_data(relay_id, encode_circuit_credit(relay_id, increment))
        if self._credit_wakeup is not None:  # a legacy reader may be waiting for credit
            self._credit_wakeup.set()

    def circuit_closed(self, relay_id: bytes, text: str, reason: str) -> None:
        # Data queued before the close is still delivered (CloseRelay follows it), except
        # on a stall: this peer does not read, so drop what it would never get to.
        if reason == "stalled":
            self._writer.out.purge(relay_id)
        self.send_control(CloseRelay(relay_id=text, reason=reason))
        if self._credit_wakeup is not None:
            self._credit_wakeup.set()

    def _legacy_written(self, relay_id: bytes, size: int) -> None:
        # A legacy receiver cannot send CREDIT: the relay grants it once written.
        if self.peer_id is not None:
            self.router.credit(relay_id, self.peer_id, size, trio.current_time())

    # -- inbound: handled synchronously when that needs no waiting; the handlers return
    # a coroutine for what may block (throttled by a rate limit, waiting for credit,
    # probing a stale holder of a peer id), awaited outside the read deadline.

    def _deadline(self) -> tuple[float, str]:
        if not self.registered:
            return self._handshake_deadline, "handshake_timeout"
        idle = self._limits.idle_timeout
        idle_deadline = self._last_activity + idle if idle > 0 else math.inf
        if self._token_deadline < idle_deadline:
            return self._token_deadline, "token_expired"
        return idle_deadline, "idle_timeout"

    def _stop_reading(self) -> None:
        self._stopped = True
        self._read_scope.cancel()

    async def _read_loop(self) -> CloseReason:
        ws = self.ws
        while not self._stopped:
            # One scope per idle period, not per frame (cancelled by _stop_reading()): when
            # its deadline passes, the deadline is computed again (activity may move it).
            blocking: Coroutine[Any, Any, None] | None = None
            self._read_scope = scope = trio.CancelScope(deadline=self._deadline()[0])
            with scope:
                # _stopped: a close (such as an abusive session's) drops what is buffered.
                while blocking is None and not self._stopped:
                    try:
                        frame = await ws.receive()
                    except _CONNECTION_GONE:
                        return CloseReason.PEER_DISCONNECTED
                    blocking = self._on_frame(frame)
            if blocking is not None:  # may block: no read deadline, still stoppable
                self._read_scope = scope = trio.CancelScope()
                with scope:
                    if self._stopped:
                        scope.cancel()
                    await blocking
            elif not self._stopped:
                deadline, what = self._deadline()
                if scope.cancelled_caught and trio.current_time() >= deadline:
                    return self._deadline_passed(what)
        return CloseReason.PEER_DISCONNECTED

    def _on_frame(self, frame: str | bytes) -> Coroutine[Any, Any, None] | None:
        now = trio.current_time()
        self._last_activity = now
        if self._activity is not None:
            self._activity.set()
        size = len(frame)
        if size > self._limits.max_frame_size:
            self.router.metrics.limit_hit("frame_size")
            self.send_error(
                "frame_too_large",
                f"frame of {size} bytes exceeds {self._limits.max_frame_size}",
            )
            return None
        # Message budgets, on the raw frame: a shed frame is never decoded.
        if type(frame) is str:
            shed = self._over_budget(now)
            if shed is not None:
                return self._shed(shed, now)
        # Per-peer inbound byte rate: throttle (stop reading) rather than drop data.
        amount = min(size, self._bytes.burst)
        if not self._bytes.try_take(amount, now):
            self.router.metrics.limit_hit("bytes_per_peer")
            return self._throttled(frame, amount, now)
        return self._handle_frame(frame, now)

    async def _throttled(self, frame: str | bytes, amount: float, now: float) -> None:
        await trio.sleep(self._bytes.time_until(amount, now))
        now = trio.current_time()
        self._bytes.try_take(amount, now)
        blocking = self._handle_frame(frame, now)
        if blocking is not None:
            await blocking

    def _handle_frame(self, frame: str | bytes, now: float) -> Coroutine[Any, Any, None] | None:
        self._share.streak = 0  # a frame passed: not a pure flood (see _shed)
        if type(frame) is str:
            return self._handle_text(frame, now)
        return route_binary(self.router, self, frame, now)  # type: ignore[arg-type]

    def _deadline_passed(self, what: str) -> CloseReason:
        self.router.metrics.limit_hit(what)
        if what == "token_expired":
            self.close(CLOSE_TOKEN_EXPIRED, Error("token expired", "token_expired"))
            return CloseReason.TOKEN_EXPIRED
        if what == "idle_timeout":
            # A normal close: the peer may simply reconnect when it needs the relay again.
            self.close(CLOSE_NORMAL, Error("idle timeout", what))
        else:
            self.close(CLOSE_POLICY, Error("handshake timeout", what))
        return CloseReason.PEER_DISCONNECTED

    def _over_budget(self, now: float) -> str | None:
        """Charge a text frame to its budgets: None, or the limit it exceeds."""
        if not self.registered:
            self._handshake_frames += 1
            if self._handshake_frames == 1:  # a registration starts: the address pays
                shed = self._guard.handshake_allowed(self.remote_ip, now)
                if shed is not None:
                    return shed
            elif self._handshake_frames > MAX_HANDSHAKE_FRAMES:
                return "handshake_frames"
        if not self._messages.try_take(1, now):
            return "messages_per_peer"
        if not self.registered:
            return None
        return self._guard.message_allowed(self.remote_ip, now, self._share)

    def _shed(self, limit: str, now: float) -> Coroutine[Any, Any, None] | None:
        """Drop a frame undecoded; the first of a streak is answered, a long one closes."""
        self._guard.frames_shed += 1
        self.router.metrics.limit_hit(limit)
        if limit == "messages_total" and self.registered:
            # The relay is overloaded, the peer not abusive: no strike; a pure text flood
            # is not read for a while (TCP holds it, at no CPU cost).
            if self._share.streak == 0 and not self._share.pauses:
                self.send_error("rate_limited", "the relay is busy (messages_total)")
            pause = self._guard.overload_pause(self._share)
            if pause and not self.router.carries_circuits(self.peer_id or ""):
                return trio.sleep(pause)  # never a session carrying circuits: its data waits
            return None
        self._strikes += 1
        if not self.registered or self._strikes >= RATE_LIMIT_STRIKES:
            self._guard.penalize(self.remote_ip, now)
            self._writer.close_timeout = ABUSE_CLOSE_TIMEOUT
            logger.info("closing session of %s: %s exceeded", self.remote_ip, limit)
            self.close(CLOSE_POLICY, Error(f"{limit} budget exceeded", "rate_limited"))
        elif self._strikes == 1:  # one answer per streak: errors cost more than the drop
            self.send_error("rate_limited", f"message rate limit exceeded ({limit})")
        return None

    def _handle_text(self, text: str, now: float) -> Coroutine[Any, Any, None] | None:
        self._strikes = 0
        try:
            msg = decode_message_untrusted(text)
        except SignalingParseError as exc:
            self.send_error(exc.code, str(exc))
            return None
        self.router.metrics.frame_received(message_type(msg))
        if isinstance(msg, Ping):
            self.send_control(Pong(nonce=msg.nonce))  # echoed: the SDK matches Pongs by nonce
        elif isinstance(msg, Pong):
            pass
        elif not self.registered:
            return self._handle_handshake(msg)
        else:
            return route_message(self.router, self, msg, now)
        return None

    # -- handshake (PROTOCOL.md section 2) -------------------------------------------

    def _refuse(self, code: str, message: str, close_code: int = CLOSE_POLICY) -> None:
        mode = "legacy" if not self.extended else self._mode
        self.router.metrics.registration(mode, code)
        self.close(close_code, Error(message, code))

    def _handle_handshake(self, msg: Message) -> Coroutine[Any, Any, None] | None:
        step = self._handshake.handle(msg, time.time())
        if isinstance(step, HandshakeReply):
            if isinstance(step.message, Error):
                self.router.metrics.error_sent(step.message.code or "none")
            self.send_control(step.message)
        elif isinstance(step, HandshakeRefusal):
            self._refuse(step.code, step.message, step.close_code)
        elif self.router.cluster is not None:
            return self._register_in_cluster(step)
        elif self.router.register(self, step.peer_id):
            self._complete(step)
        else:
            return self._register_contended(step)
        return None

    def _set_token_deadline(self, expires_at: float) -> None:
        # The token's wall-clock expiry as a deadline on trio's clock, with the same
        # leeway the validator grants (else a token accepted thanks to the leeway would
        # close the session at once).
        leeway = self._jwt.leeway if self._jwt is not None else 0.0
        remaining = expires_at + leeway - time.time()
        self._token_deadline = trio.current_time() + max(0.0, remaining)

    async def probe_alive(self, timeout: float) -> bool:
        """Ping this session; True if any frame arrives from it within ``timeout``."""
        if self._writer.close_code is not None:
            return False
        self._activity = activity = trio.Event()
        self.send_control(Ping())
        try:
            with trio.move_on_after(timeout):
                await activity.wait()
                return True
            return False
        finally:
            if self._activity is activity:
                self._activity = None

    async def _register_contended(self, accepted: HandshakeAccepted) -> None:
        """The peer id is held by another session: replace it if stale, else refuse."""
        code = await self.router.register_contended(self, accepted.peer_id)
        if code is None:
            self._complete(accepted)
            return
        self._refuse(
            code,
            f"peer id {accepted.peer_id} is already registered"
            if code == "peer_id_in_use"
            else "the server is stopping",
        )

    async def _register_in_cluster(self, accepted: HandshakeAccepted) -> None:
        """Claim the peer id across the cluster (relay.cluster), then register it here."""
        cluster = self.router.cluster
        assert cluster is not None
        try:
            code = await cluster.claim(accepted.peer_id)
            if code is not None:
                self._refuse(
                    code, f"peer id {accepted.peer_id} is registered on another relay node"
                )
            elif self.router.register(self, accepted.peer_id):
                self._complete(accepted)
            else:
                await self._register_contended(accepted)
        finally:
            if not self.registered:  # a claim that landed must not outlive this attempt
                cluster.peer_released(accepted.peer_id)

    def _complete(self, accepted: HandshakeAccepted) -> None:
        """The peer id is registered to this session: answer Registered."""
        self.peer_id = accepted.peer_id
        self.registered = True
        if self._on_registered is not None:
            self._on_registered()
        self.has_libp2p_id = self.extended or _legacy.is_libp2p_peer_id(accepted.peer_id)
        if accepted.expires_at is not None:
            self._set_token_deadline(accepted.expires_at)
        self._last_activity = trio.current_time()
        scope = self._read_scope
        if scope.deadline != math.inf:  # the reading scope, not a blocking step's (_read_loop)
            # It ran to the handshake deadline: move it to the idle one now, else every
            # registered session wakes once at its handshake deadline only to find that
            # the deadline moved (10,000 wake-ups 10 s into a restart storm).
            scope.deadline = self._deadline()[0]
        self.router.metrics.registration(self._mode if self.extended else "legacy", "ok")
        self.send_control(self._handshake.registered(accepted, self.router.announced_limits()))

    # -- registered: routing lives in relay._routing -------------------------------

    def refresh_token(self, token: str) -> None:
        """RefreshToken: on failure the old token stays in force and the session goes on."""
        assert self.peer_id is not None
        result = self._handshake.validate_token(token, self.peer_id, time.time())
        if isinstance(result, HandshakeRefusal):
            self.send_error(result.code, result.message)
        else:
            self._set_token_deadline(result)
            self.send_control(TokenRefreshed(expires_at=result))

    async def wait_for_credit(self) -> None:
        """Wait until credit arrives for this peer or one of its circuits closes."""
        self._credit_wakeup = trio.Event()
        await self._credit_wakeup.wait()
