"""One signaling session: handshake, limits, routing, and a bounded send path.

A :class:`SignalingSession` runs two tasks in its own nursery (a child of the server's
session nursery): the *reader* (handshake per docs/PROTOCOL.md section 2, then routing
by :mod:`relay._routing`, with the handshake / idle / token-expiry deadline as one cancel
scope per idle period) and the *writer*. A frame addressed to the session is written at once by the task that
produced it when nothing waits before it (the usual relay hop), else it goes through one
FIFO drained by the writer, so order is preserved either way: a circuit's announcement
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
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import trio

from darkswap_trio.proto.errors import SignalingParseError
from darkswap_trio.proto.relay import CloseReason
from darkswap_trio.proto.signaling import (
    CloseRelay,
    Error,
    Message,
    Ping,
    Pong,
    RelayData,
    TokenRefreshed,
    decode_message_untrusted,
    encode_circuit_credit,
    encode_circuit_data,
    encode_message,
    message_type,
)

from . import _legacy
from ._handshake import (
    HandshakeAccepted,
    HandshakeRefusal,
    HandshakeReply,
    RegistrationHandshake,
)
from ._limits import TokenBucket
from ._outbox import LEGACY_DATA, SessionOutbox
from ._router import RelayRouter, relay_id_text
from ._routing import route_binary, route_message

if TYPE_CHECKING:
    from ._auth import JwtValidator

logger = logging.getLogger("relay.session")

MAX_CONTROL_QUEUE = 512  # control frames waiting for a peer that does not read
MAX_CONTROL_QUEUE_BYTES = 1 << 20  # ... and their bytes (at least one max-size frame fits)
CLOSE_TIMEOUT = 2.0  # bound on flushing the last frames and the closing handshake
# ... for a session closed for abuse: waiting for its close echo means parsing its flood.
ABUSE_CLOSE_TIMEOUT = 0.02
RATE_LIMIT_STRIKES = 64  # consecutive shed messages before the session is closed (1008)
# Text frames a session may send before it is registered: a handshake takes two (Register,
# Authenticate), a few Pings or retried Registers may come along; beyond, it is closed.
MAX_HANDSHAKE_FRAMES = 32

# WebSocket close codes (PROTOCOL.md section 6).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
CLOSE_TOKEN_EXPIRED = 4001

_CONNECTION_GONE = (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError)


class SignalingSession:
    """A WebSocket signaling session of one peer (see the module docstring)."""

    __slots__ = (
        "router", "ws", "remote_ip", "peer_id", "registered", "has_libp2p_id", "_jwt",
        "_limits", "_mode", "_handshake_deadline", "_last_activity", "_activity", "_token_deadline", "_handshake",
        "_messages", "_bytes", "_strikes", "_handshake_frames", "_guard", "_share", "_out", "_credit_wakeup", "_close_code",
        "_close_reason", "_close_timeout", "_read_scope", "_stopped", "_nursery", "_writer_done", "_reader_done",
    )  # fmt: skip

    def __init__(
        self,
        router: RelayRouter,
        ws: Any,
        remote_ip: str,
        jwt_validator: JwtValidator | None = None,
        *,
        accepted_at: float | None = None,  # TCP accept: the handshake deadline runs from it
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
        self._handshake = RegistrationHandshake(self._mode, router.keypair, jwt_validator)
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
        self._out = SessionOutbox(
            router,
            ws,
            max_control_frames=MAX_CONTROL_QUEUE,
            max_control_bytes=max(MAX_CONTROL_QUEUE_BYTES, 2 * self._limits.max_frame_size),
            on_pending=self._start_writer,
        )
        self._credit_wakeup: trio.Event | None = None  # a legacy sender waits for credit
        self._close_code: int | None = None
        self._close_reason = ""
        self._close_timeout = CLOSE_TIMEOUT
        self._read_scope = trio.CancelScope()  # the one the reader is in (see _read_loop)
        self._stopped = False
        # The writer task starts when a frame first has to wait (or to close): a frame
        # written at once needs none, so an idle session holds one task, not two.
        self._nursery: trio.Nursery | None = None
        self._writer_done: trio.Event | None = None
        self._reader_done = False

    @property
    def extended(self) -> bool:
        """Whether the peer speaks darkswap-relay/1 (binary circuit frames)."""
        return self._handshake.extended

    # -- lifecycle ------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the session until it closes; never raises for peer misbehaviour."""
        router = self.router
        router.sessions.add(self)
        router.metrics.sessions.inc()
        router.metrics.sessions_active.inc()
        reason = CloseReason.PEER_DISCONNECTED
        if router.shutting_down:
            self.close(CLOSE_GOING_AWAY, Error("the server is stopping", "server_shutdown"))
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self._out or self._close_code is not None:
                    self._start_writer()
                try:
                    reason = await self._read_loop()
                except Exception:
                    logger.exception("session %s crashed", self.peer_id)
                    self.close(CLOSE_INTERNAL, Error("internal server error", "internal_error"))
                if self._close_code is None:
                    self._close_code = CLOSE_NORMAL
                router.release_peer(self, reason)
                self._reader_done = True
                self._out.wake()  # starts the writer if needed: it sends the close
                assert self._writer_done is not None
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await self._writer_done.wait()
                nursery.cancel_scope.cancel()
        finally:
            router.metrics.sessions_active.dec()
            router.unregister(self, reason)
            self._out.clear()

    def close(self, code: int, error: Error | None = None, reason: str = "") -> None:
        """Send ``error`` (if any), then close with ``code``. Idempotent; never blocks."""
        if self._close_code is not None:
            return
        if error is not None:
            self._out.push_control(self._encode(error), force=True)
            self.router.metrics.error_sent(error.code or "none")
        self._close_code = code
        self._close_reason = reason
        self._stop_reading()
        self._out.wake()

    def abort(self, why: str) -> None:
        """Close without flushing (the peer does not read what we already queued)."""
        if self._close_code is None:
            logger.info("closing session %s: %s", self.peer_id, why)
            self._out.clear()
            self.close(CLOSE_POLICY, reason=why)

    # -- outbound (never blocks) ----------------------------------------------------

    def _encode(self, msg: Message) -> str:
        self.router.metrics.frame_sent(message_type(msg))
        return encode_message(msg)

    def _write_now(self, frame: str | bytes) -> bool:
        """Write ``frame`` at once if nothing waits before it (see SessionOutbox.write_now)."""
        if self._close_code is not None:
            return False
        try:
            return self._out.write_now(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # The connection is gone: what the writer does on a failed send.
            self._stop_reading()
            self._out.wake()
            return True

    def send_control(self, msg: Message) -> None:
        if self._close_code is not None:
            return
        frame = self._encode(msg)
        if self._write_now(frame):
            return
        if not self._out.push_control(frame):
            self.router.metrics.limit_hit("send_queue")
            self.abort("stalled: control queue full")

    def send_error(self, code: str, message: str, ref: str | None = None) -> None:
        self.router.metrics.error_sent(code)
        self.send_control(Error(message, code, ref))

    def send_circuit_data(
        self, relay_id: bytes, sender: str, payload: bytes, frame: bytes | None = None
    ) -> None:
        """Queue (or write at once) circuit data; ``frame``: the sender's DATA frame of
        ``payload``, forwarded as is (the same bytes on both sides of the relay)."""
        if self._close_code is not None:
            return
        if self.extended:
            if frame is None:
                frame = encode_circuit_data(relay_id, payload)
            if not self._write_now(frame):
                self._out.push_data(relay_id, frame)
        else:
            # Encoded (base64 JSON) only when written: the queue holds payload bytes, so
            # a legacy receiver costs the relay a window, not 4/3 of one.
            self._out.push_data(relay_id, bytes(payload), legacy_sender=sender)

    def credit_granted(self, relay_id: bytes, increment: int) -> None:
        if self.extended and self._close_code is None:
            frame = encode_circuit_credit(relay_id, increment)
            if not self._write_now(frame):
                self._out.push_data(relay_id, frame)
        if self._credit_wakeup is not None:  # a legacy reader may be waiting for credit
            self._credit_wakeup.set()

    def circuit_closed(self, relay_id: bytes, text: str, reason: str) -> None:
        # Data queued before the close is still delivered (CloseRelay follows it), except
        # on a stall: this peer does not read, so drop what it would never get to.
        if reason == "stalled":
            self._out.purge(relay_id)
        self.send_control(CloseRelay(relay_id=text, reason=reason))
        if self._credit_wakeup is not None:
            self._credit_wakeup.set()

    def _start_writer(self) -> None:
        if self._writer_done is None and self._nursery is not None:
            self._writer_done = trio.Event()
            self._nursery.start_soon(self._write_loop)

    async def _write_loop(self) -> None:
        router = self.router
        ws = self.ws
        try:
            while True:
                await self._out.flush_tail()
                item = self._out.pop()
                if item is None:
                    # Close only once the reader is out of receive(): the closing handshake
                    # reads the peer's echo itself.
                    if self._close_code is not None and self._reader_done:
                        break
                    await self._out.wait()
                    continue
                frame = item.frame
                if item.kind == LEGACY_DATA:
                    assert item.relay_id is not None and isinstance(frame, bytes)
                    frame = self._encode(
                        RelayData(
                            from_=item.sender, relay_id=relay_id_text(item.relay_id), data=frame
                        )
                    )
                try:
                    # Legacy frames (base64, 4/3 of their payload) take the plain path: a
                    # tail of one would count more than the payload the window bounds.
                    if item.kind == LEGACY_DATA or not self._out.try_write(frame):
                        await ws.send(frame)
                finally:
                    self._out.written(item)
                if item.kind == LEGACY_DATA and item.size and self.peer_id is not None:
                    # A legacy receiver cannot send CREDIT: grant it once written.
                    assert item.relay_id is not None
                    router.credit(item.relay_id, self.peer_id, item.size, trio.current_time())
            with trio.move_on_after(self._close_timeout):
                await ws.aclose(self._close_code or CLOSE_NORMAL, self._close_reason)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._stop_reading()  # the connection is gone; stop reading too
        finally:
            self._out.release_tail()
            assert self._writer_done is not None
            self._writer_done.set()

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

    async def _throttled(self, frame: str | bytes, amount: int, now: float) -> None:
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
        return route_binary(self, frame, now)  # type: ignore[arg-type]

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
            if pause and not self.router.table.circuits_of(self.peer_id or ""):
                return trio.sleep(pause)  # never a session carrying circuits: its data waits
            return None
        self._strikes += 1
        if not self.registered or self._strikes >= RATE_LIMIT_STRIKES:
            self._guard.penalize(self.remote_ip, now)
            self._close_timeout = ABUSE_CLOSE_TIMEOUT
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
            return route_message(self, msg, now)
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
        if self._close_code is not None:
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

    def replaced(self) -> None:
        """A new session of the same peer took over (RelayRouter.replace_stale_holder)."""
        self.close(
            CLOSE_NORMAL,
            Error("a new session of this peer replaced this one", "session_replaced"),
        )

    async def _register_contended(self, accepted: HandshakeAccepted) -> None:
        """The peer id is held by another session: replace it if stale, else refuse."""
        if await self.router.replace_stale_holder(self, accepted.peer_id):
            self._complete(accepted)
            return
        code = "server_shutdown" if self.router.shutting_down else "peer_id_in_use"
        self._refuse(
            code,
            f"peer id {accepted.peer_id} is already registered"
            if code == "peer_id_in_use"
            else "the server is stopping",
        )

    def _complete(self, accepted: HandshakeAccepted) -> None:
        """The peer id is registered to this session: answer Registered."""
        self.peer_id = accepted.peer_id
        self.registered = True
        self.has_libp2p_id = self.extended or _legacy.is_libp2p_peer_id(accepted.peer_id)
        if accepted.expires_at is not None:
            self._set_token_deadline(accepted.expires_at)
        self._last_activity = trio.current_time()
        self.router.metrics.registration(self._mode if self.extended else "legacy", "ok")
        self.send_control(self._handshake.registered(accepted, self.router.announced_limits))

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
