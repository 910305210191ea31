"""One signaling session: handshake, limits, routing, and a bounded send path.

A :class:`SignalingSession` runs two tasks in its own nursery (a child of the server's
session nursery): the *reader* (handshake per docs/PROTOCOL.md section 2, then routing,
with the handshake / idle / token-expiry deadline as a cancel scope) and the *writer*,
the only task that sends on the WebSocket. Everything addressed to the session goes
through one FIFO so that order is preserved: ``DataChannel`` before the first data of a
circuit, ``CloseRelay`` after its last data. The FIFO is bounded: circuit data by the
credit windows, control frames by :data:`MAX_CONTROL_QUEUE` frames and
:data:`MAX_CONTROL_QUEUE_BYTES` bytes (:mod:`relay._outbox`): a peer that stops reading
while others keep signalling it is closed as stalled instead of growing the queue.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

import trio

from darkswap_trio.proto.errors import SignalingParseError
from darkswap_trio.proto.relay import CloseReason, Outcome
from darkswap_trio.proto.signaling import (
    PROTOCOL_VERSION,
    Answer,
    Authenticate,
    CircuitCredit,
    CircuitData,
    CloseRelay,
    Error,
    IceCandidate,
    Message,
    Offer,
    Ping,
    Pong,
    RefreshToken,
    Register,
    Registered,
    RelayData,
    RelayRequest,
    TokenRefreshed,
    decode_binary_untrusted,
    decode_message_untrusted,
    encode_circuit_credit,
    encode_circuit_data,
    encode_message,
    message_type,
)

from ._handshake import (
    HandshakeAccepted,
    HandshakeRefusal,
    HandshakeReply,
    RegistrationHandshake,
)
from ._limits import TokenBucket
from ._outbox import LEGACY_DATA, SessionOutbox
from ._router import RelayRouter, parse_relay_id, relay_id_text

if TYPE_CHECKING:
    from ._auth import JwtValidator

logger = logging.getLogger("relay.session")

MAX_CONTROL_QUEUE = 512  # control frames waiting for a peer that does not read
MAX_CONTROL_QUEUE_BYTES = 1 << 20  # ... and their bytes (at least one max-size frame fits)
CLOSE_TIMEOUT = 2.0  # bound on flushing the last frames and the closing handshake
RATE_LIMIT_STRIKES = 64  # consecutive rate-limited messages before the session is closed

# WebSocket close codes (PROTOCOL.md section 6).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
CLOSE_TOKEN_EXPIRED = 4001

_FORWARDED = (Offer, Answer, IceCandidate)


class SignalingSession:
    """A WebSocket signaling session of one peer (see the module docstring)."""

    def __init__(
        self,
        router: RelayRouter,
        ws: Any,
        remote_ip: str,
        jwt_validator: JwtValidator | None = None,
    ) -> None:
        self.router = router
        self.ws = ws
        self.remote_ip = remote_ip
        self.peer_id: str | None = None
        self.registered = False
        self._jwt = jwt_validator
        cfg = router.config
        self._limits = cfg.limits
        self._mode = cfg.auth.mode
        now = trio.current_time()
        handshake = self._limits.handshake_timeout
        self._handshake_deadline = now + handshake if handshake > 0 else math.inf
        self._last_activity = now
        self._activity = trio.Event()  # set by every inbound frame; see probe_alive()
        self._token_deadline = math.inf
        self._handshake = RegistrationHandshake(self._mode, router.keypair, jwt_validator)
        self._messages = TokenBucket(
            self._limits.messages_per_peer_rate, self._limits.messages_per_peer_burst
        )
        self._bytes = TokenBucket(
            self._limits.bytes_per_peer_rate, self._limits.bytes_per_peer_burst
        )
        self._strikes = 0
        self._out = SessionOutbox(
            router,
            max_control_frames=MAX_CONTROL_QUEUE,
            max_control_bytes=max(MAX_CONTROL_QUEUE_BYTES, 2 * self._limits.max_frame_size),
        )
        self._credit_wakeup = trio.Event()
        self._close_code: int | None = None
        self._close_reason = ""
        self._read_scope = trio.CancelScope()
        self._writer_done = trio.Event()
        self._reader_done = trio.Event()

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
                nursery.start_soon(self._write_loop)
                try:
                    reason = await self._read_loop()
                except Exception:
                    logger.exception("session %s crashed", self.peer_id)
                    self.close(CLOSE_INTERNAL, Error("internal server error", "internal_error"))
                if self._close_code is None:
                    self._close_code = CLOSE_NORMAL
                router.release_peer(self, reason)
                self._reader_done.set()
                self._out.wake()
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
            self.router.metrics.errors_sent.labels(code=error.code or "none").inc()
        self._close_code = code
        self._close_reason = reason
        self._read_scope.cancel()
        self._out.wake()

    def abort(self, why: str) -> None:
        """Close without flushing (the peer does not read what we already queued)."""
        if self._close_code is None:
            logger.info("closing session %s: %s", self.peer_id, why)
            self._out.clear()
            self.close(CLOSE_POLICY, reason=why)

    # -- outbound (never blocks) ----------------------------------------------------

    def _encode(self, msg: Message) -> str:
        self.router.metrics.frames_sent.labels(kind=message_type(msg)).inc()
        return encode_message(msg)

    def send_control(self, msg: Message) -> None:
        if self._close_code is not None:
            return
        if not self._out.push_control(self._encode(msg)):
            self.router.metrics.limit_hits.labels(limit="send_queue").inc()
            self.abort("stalled: control queue full")

    def send_error(self, code: str, message: str, ref: str | None = None) -> None:
        self.router.metrics.errors_sent.labels(code=code).inc()
        self.send_control(Error(message, code, ref))

    def send_circuit_data(self, relay_id: bytes, sender: str, payload: bytes) -> None:
        if self._close_code is not None:
            return
        if self.extended:
            self._out.push_data(relay_id, encode_circuit_data(relay_id, payload))
        else:
            # Encoded (base64 JSON) only when written: the queue holds payload bytes, so
            # a legacy receiver costs the relay a window, not 4/3 of one.
            self._out.push_data(relay_id, payload, legacy_sender=sender)

    def credit_granted(self, relay_id: bytes, increment: int) -> None:
        if self.extended and self._close_code is None:
            self._out.push_data(relay_id, encode_circuit_credit(relay_id, increment))
        self._credit_wakeup.set()  # a legacy reader may be waiting for this credit

    def circuit_closed(self, relay_id: bytes, text: str, reason: str) -> None:
        # Data queued before the close is still delivered (CloseRelay follows it), except
        # on a stall: this peer does not read, so drop what it would never get to.
        if reason == "stalled":
            self._out.purge(relay_id)
        self.send_control(CloseRelay(relay_id=text, reason=reason))
        self._credit_wakeup.set()

    async def _write_loop(self) -> None:
        router = self.router
        ws = self.ws
        try:
            while True:
                item = self._out.pop()
                if item is None:
                    # Close only once the reader is out of receive(): the closing handshake
                    # reads the peer's echo itself.
                    if self._close_code is not None and self._reader_done.is_set():
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
                    await ws.send(frame)
                finally:
                    self._out.written(item)
                if item.kind == LEGACY_DATA and item.size and self.peer_id is not None:
                    # A legacy receiver cannot send CREDIT: grant it once written.
                    assert item.relay_id is not None
                    now = trio.current_time()
                    if (
                        router.table.credit(item.relay_id, self.peer_id, item.size, now)
                        is Outcome.OK
                    ):
                        router.dispatch()
            with trio.move_on_after(CLOSE_TIMEOUT):
                await ws.aclose(self._close_code or CLOSE_NORMAL, self._close_reason)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._read_scope.cancel()  # the connection is gone; stop reading too
        finally:
            self._writer_done.set()

    # -- inbound --------------------------------------------------------------------

    def _deadline(self) -> tuple[float, str]:
        if not self.registered:
            return self._handshake_deadline, "handshake_timeout"
        idle = self._limits.idle_timeout
        idle_deadline = self._last_activity + idle if idle > 0 else math.inf
        if self._token_deadline < idle_deadline:
            return self._token_deadline, "token_expired"
        return idle_deadline, "idle_timeout"

    async def _read_loop(self) -> CloseReason:
        ws = self.ws
        with self._read_scope:
            while True:
                deadline, what = self._deadline()
                with trio.move_on_at(deadline) as timer:
                    try:
                        frame = await ws.receive()
                    except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError):
                        return CloseReason.PEER_DISCONNECTED
                if timer.cancelled_caught:
                    self._deadline_passed(what)
                    return (
                        CloseReason.TOKEN_EXPIRED
                        if what == "token_expired"
                        else CloseReason.PEER_DISCONNECTED
                    )
                now = trio.current_time()
                self._last_activity = now
                self._activity.set()
                size = len(frame)
                if size > self._limits.max_frame_size:
                    self.router.metrics.limit_hits.labels(limit="frame_size").inc()
                    self.send_error(
                        "frame_too_large",
                        f"frame of {size} bytes exceeds {self._limits.max_frame_size}",
                    )
                    continue
                await self._take_bytes(size, now)
                if isinstance(frame, str):
                    await self._handle_text(frame, now)
                else:
                    await self._handle_binary(frame, now)
        return CloseReason.PEER_DISCONNECTED

    def _deadline_passed(self, what: str) -> None:
        self.router.metrics.limit_hits.labels(limit=what).inc()
        if what == "token_expired":
            self.close(CLOSE_TOKEN_EXPIRED, Error("token expired", "token_expired"))
        elif what == "idle_timeout":
            # A normal close: the peer may simply reconnect when it needs the relay again.
            self.close(CLOSE_NORMAL, Error("idle timeout", what))
        else:
            self.close(CLOSE_POLICY, Error("handshake timeout", what))

    async def _take_bytes(self, size: int, now: float) -> None:
        """Per-peer inbound byte rate: throttle (stop reading) rather than drop data."""
        amount = min(size, self._bytes.burst)
        if not self._bytes.try_take(amount, now):
            self.router.metrics.limit_hits.labels(limit="bytes_per_peer").inc()
            await trio.sleep(self._bytes.time_until(amount, now))
            self._bytes.try_take(amount, trio.current_time())

    async def _handle_text(self, text: str, now: float) -> None:
        if not self._messages.try_take(1, now):
            self.router.metrics.limit_hits.labels(limit="messages_per_peer").inc()
            self._strikes += 1
            if self._strikes >= RATE_LIMIT_STRIKES:
                self.close(CLOSE_POLICY, Error("message rate exceeded repeatedly", "rate_limited"))
            else:
                self.send_error("rate_limited", "message rate limit exceeded")
            return
        self._strikes = 0
        try:
            msg = decode_message_untrusted(text)
        except SignalingParseError as exc:
            self.send_error(exc.code, str(exc))
            return
        self.router.metrics.frames_received.labels(kind=message_type(msg)).inc()
        if isinstance(msg, Ping):
            self.send_control(Pong())
        elif isinstance(msg, Pong):
            pass
        elif not self.registered:
            await self._handle_handshake(msg)
        else:
            await self._route(msg, now)

    # -- handshake (PROTOCOL.md section 2) -------------------------------------------

    def _refuse(self, code: str, message: str, close_code: int = CLOSE_POLICY) -> None:
        mode = "legacy" if not self.extended else self._mode
        self.router.metrics.registrations.labels(mode=mode, result=code).inc()
        self.close(close_code, Error(message, code))

    async def _handle_handshake(self, msg: Message) -> None:
        step = self._handshake.handle(msg, time.time())
        if isinstance(step, HandshakeReply):
            if isinstance(step.message, Error):
                self.router.metrics.errors_sent.labels(code=step.message.code or "none").inc()
            self.send_control(step.message)
        elif isinstance(step, HandshakeRefusal):
            self._refuse(step.code, step.message, step.close_code)
        else:
            await self._complete(step)

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
        self._activity = trio.Event()
        self.send_control(Ping())
        with trio.move_on_after(timeout):
            await self._activity.wait()
            return True
        return False

    async def _replace_stale_holder(self, peer_id: str) -> bool:
        """A proven owner of ``peer_id`` may replace a holder that no longer answers.

        Without this, a peer whose connection died silently (NAT rebinding, a laptop
        waking up) could not register again until the idle timeout. In open mode there
        is no proof of ownership, so replacing would be a hijack: never done there.
        """
        router = self.router
        holder = router.lookup(peer_id)
        if holder is None or self._mode == "open" or router.shutting_down:
            return False
        if await holder.probe_alive(self._limits.duplicate_probe_timeout):
            return False
        logger.info("peer %s re-registered; replacing its silent session", peer_id)
        router.metrics.limit_hits.labels(limit="session_replaced").inc()
        holder.close(CLOSE_NORMAL, Error("a new session of this peer replaced this one",
                                         "session_replaced"))
        router.release_peer(holder, CloseReason.PEER_DISCONNECTED)
        return router.register(self, peer_id)

    async def _complete(self, accepted: HandshakeAccepted) -> None:
        router = self.router
        peer_id = accepted.peer_id
        if not router.register(self, peer_id) and not await self._replace_stale_holder(peer_id):
            code = "server_shutdown" if router.shutting_down else "peer_id_in_use"
            self._refuse(
                code,
                f"peer id {peer_id} is already registered"
                if code == "peer_id_in_use"
                else "the server is stopping",
            )
            return
        self.peer_id = peer_id
        self.registered = True
        if accepted.expires_at is not None:
            self._set_token_deadline(accepted.expires_at)
        self._last_activity = trio.current_time()
        mode = self._mode if self.extended else "legacy"
        router.metrics.registrations.labels(mode=mode, result="ok").inc()
        lim = self._limits
        limits = {
            "max_frame_size": lim.max_frame_size,
            "max_circuits_per_peer": lim.max_circuits_per_peer,
            "messages_per_second": lim.messages_per_peer_rate,
            "idle_timeout": lim.idle_timeout,
        }
        self.send_control(
            Registered(
                peer_id=peer_id,
                relay_peer_id=router.relay_peer_id,
                auth=self._mode,
                protocol=PROTOCOL_VERSION if self.extended else None,
                signature=accepted.proof,
                token_expires_at=accepted.expires_at,
                limits=limits,
            )
        )

    # -- routing (registered) --------------------------------------------------------

    async def _route(self, msg: Message, now: float) -> None:
        me = self.peer_id
        assert me is not None
        router = self.router
        sender = getattr(msg, "from_", me)
        if sender != me:
            self.send_error("spoofed_from", f"'from' must be your peer id {me}", sender[:128])
            return
        if isinstance(msg, _FORWARDED):
            target = router.lookup(msg.to)
            if target is None:
                self.send_error("unknown_peer", f"peer {msg.to} is not connected", msg.to)
            else:
                target.send_control(msg)
        elif isinstance(msg, RelayRequest):
            router.request_circuit(me, msg.to)
        elif isinstance(msg, RelayData):
            relay_id = parse_relay_id(msg.relay_id)
            if relay_id is None or relay_id not in router.table.circuits_of(me):
                self.send_error("unknown_circuit", "no such circuit", msg.relay_id)
                return
            await self._circuit_data(relay_id, msg.data, now, wait_for_credit=not self.extended)
        elif isinstance(msg, CloseRelay):
            relay_id = parse_relay_id(msg.relay_id)
            if relay_id is None or router.table.close(relay_id, me) is not Outcome.OK:
                self.send_error("unknown_circuit", "no such circuit", msg.relay_id)
                return
            router.dispatch()
        elif isinstance(msg, RefreshToken):
            # On failure the old token stays in force and the session goes on.
            result = self._handshake.validate_token(msg.token, me, time.time())
            if isinstance(result, HandshakeRefusal):
                self.send_error(result.code, result.message)
            else:
                self._set_token_deadline(result)
                self.send_control(TokenRefreshed(expires_at=result))
        elif isinstance(msg, (Register, Authenticate)):
            self.send_error("already_registered", "this session is already registered")
        else:
            self.send_error("bad_frame", f"{message_type(msg)} is not a client message")

    async def _handle_binary(self, frame: bytes, now: float) -> None:
        if not self.registered:
            self.send_error("not_registered", "binary frame before registration")
            return
        if not self.extended:
            self.send_error("bad_frame", "binary frames need darkswap-relay/1")
            return
        try:
            parsed = decode_binary_untrusted(frame)
        except SignalingParseError as exc:
            self.send_error(exc.code, str(exc))
            return
        router = self.router
        assert self.peer_id is not None
        if isinstance(parsed, CircuitData):
            await self._circuit_data(parsed.relay_id, parsed.payload, now, wait_for_credit=False)
        elif isinstance(parsed, CircuitCredit):
            if (
                router.table.credit(parsed.relay_id, self.peer_id, parsed.increment, now)
                is not Outcome.OK
            ):
                self.send_error(
                    "unknown_circuit", "no such circuit", relay_id_text(parsed.relay_id)
                )
                return
            router.dispatch()

    async def _circuit_data(
        self, relay_id: bytes, payload: bytes, now: float, *, wait_for_credit: bool
    ) -> None:
        router = self.router
        me = self.peer_id
        assert me is not None
        if wait_for_credit:
            # A legacy sender knows nothing of credit: stop reading until it returns.
            need = min(len(payload), router.circuit_limits.max_data_frame)
            held = False
            try:
                while (
                    balance := router.table.balance(relay_id, me)
                ) is not None and balance < need:
                    if not held:
                        router.queued_bytes += len(payload)
                        held = True
                    self._credit_wakeup = trio.Event()
                    await self._credit_wakeup.wait()
            finally:
                if held:
                    router.queued_bytes -= len(payload)
            now = trio.current_time()
        delay = router.table.send_delay(relay_id, me, len(payload), now)
        if delay > 0:
            # Bandwidth limit: pace this sender (stop reading it) instead of dropping data.
            router.metrics.limit_hits.labels(limit="circuit_bandwidth").inc()
            router.queued_bytes += len(payload)
            try:
                await trio.sleep(delay)
            finally:
                router.queued_bytes -= len(payload)
            now = trio.current_time()
        if router.table.data(relay_id, me, payload, now) is not Outcome.OK:
            self.send_error("unknown_circuit", "no such circuit", relay_id_text(relay_id))
            return
        router.dispatch()
