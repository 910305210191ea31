"""RelaySession: one authenticated signaling session with one relay (SDK side).

``open_relay_session`` connects, runs the handshake of docs/PROTOCOL.md section 2 (the
relay proves its PeerId, we prove ours, optional JWT; ``_handshake``) and keeps its tasks
in its own nursery: the reader (dispatches every frame, here) and the keepalive (pinger
and token refresher, ``_keepalive``). Every frame goes out through one ``SessionWriter``
(``_session_writer``). Circuits are :class:`RelayCircuit` channels.
"""

from __future__ import annotations

import functools
import itertools
import logging
import ssl
import uuid
from collections import deque
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import trio

from .._config import RelayAddress, parse_relay_address
from .._identity import Keypair, PeerId, peer_id_text
from ..proto import signaling as sig
from ..proto.errors import ParseError
from ..websocket._endpoints import WebSocketConnection
from ._circuit import RelayCircuit
from ._errors import CircuitRefused as CircuitRefused
from ._errors import RelayAuthenticationError as RelayAuthenticationError
from ._errors import RelayError as RelayError
from ._handshake import TokenProvider as TokenProvider
from ._handshake import open_connection, register
from ._keepalive import run_keepalive
from ._lazy_channel import LazyChannel
from ._session_writer import SessionWriter, bound_unsent_bytes
from ._turn_credentials import TurnCredentials, TurnCredentialWaiters

log = logging.getLogger("darkswap_trio.relay")

Signal = sig.Offer | sig.Answer | sig.IceCandidate
_DATA_KIND = bytes((sig.FRAME_DATA,))  # a DATA frame is this, the relay_id, the payload
# Up to this frame size a payload is sliced out (one small copy); above, it is a view
# (a sink then reads it without a copy; the buffer copies it once).
_SLICE_LIMIT = 4096


@dataclass(frozen=True)
class RelaySessionStatistics:
    relay: str
    relay_peer_id: str
    latency_ms: float | None
    circuits: int
    frames_received: int
    errors_received: int
    dropped_signals: int
    refused_circuits: int


class RelaySession:
    """A registered session; create with :func:`open_relay_session`."""

    def __init__(
        self,
        ws: WebSocketConnection,
        address: RelayAddress,
        keypair: Keypair,
        registered: sig.Registered,
        *,
        signal_buffer: int,
    ) -> None:
        self.address = address
        self.keypair = keypair
        self.local_peer_id = str(keypair.peer_id)
        self.relay_peer_id = registered.relay_peer_id
        self.auth_mode = registered.auth
        self.server_limits = dict(registered.limits or {})
        self.token_expires_at = registered.token_expires_at
        self.latency_ms: float | None = None
        self.last_pong: float | None = None
        self._ws = ws
        self._circuits: dict[bytes, RelayCircuit] = {}
        self._pending_requests: dict[str, deque[trio.MemorySendChannel[sig.RelayResponse]]] = {}
        self._pending_topics: dict[
            str, deque[trio.MemorySendChannel[list[str]]]
        ] = {}  # register_topic
        # Ping nonce -> its waiter, oldest first (a Pong without a nonce, from a relay
        # that predates them, answers the oldest). A ping() that ends removes its entry.
        self._pending_pings: dict[str, trio.Event] = {}
        self._ping_numbers = itertools.count(1)
        self._turn_waiters = TurnCredentialWaiters()
        self._writer = SessionWriter(ws, address)
        self._send_frame = self._writer.send
        self._refresh_waiters: deque[trio.MemorySendChannel[sig.TokenRefreshed | sig.Error]] = (
            deque()
        )
        self._signals = LazyChannel[Signal](signal_buffer)
        self._incoming = LazyChannel[RelayCircuit](signal_buffer)
        self._errors = LazyChannel[sig.Error](signal_buffer)
        self._closed = trio.Event()
        # Cancels the pinger and refresher when the connection ends, not the user's code.
        self._background_scope = trio.CancelScope()
        self.close_cause: BaseException | None = None
        self.frames_received = 0
        self.errors_received = 0
        self.dropped_signals = 0  # signals dropped because nobody read `signals` in time
        self.refused_circuits = 0  # incoming circuits refused because nobody accepted them

    # -- outbound ----------------------------------------------------------------------

    async def _abort(self, reason: str) -> None:
        """Close the connection (going away): the reader then ends the session."""
        await self._ws.aclose(1001, reason)

    async def send_message(self, msg: sig.Message) -> None:
        await self._send_frame(sig.encode_message(msg), control=True)

    async def send_signal(self, msg: Signal) -> None:
        """Send an Offer/Answer/IceCandidate; the relay forwards it to ``msg.to``."""
        await self.send_message(msg)

    async def ping(self) -> float:
        """Round-trip a Ping; returns the RTT in ms and updates the smoothed latency.

        Safe to cancel: the Pong is matched by the Ping's nonce, so an abandoned ping
        never answers a later one. Raises BrokenResourceError if the session closes.
        """
        nonce = format(next(self._ping_numbers), "x")
        started = trio.current_time()
        done = self._pending_pings[nonce] = trio.Event()
        try:
            await self.send_message(sig.Ping(nonce=nonce))
            await done.wait()
            answered = nonce not in self._pending_pings  # the Pong handler took it out
        finally:
            self._pending_pings.pop(nonce, None)
        if not answered:
            raise trio.BrokenResourceError(
                "relay session closed during a ping"
            ) from self.close_cause
        rtt = (trio.current_time() - started) * 1000
        # Smoothed like TCP's SRTT so one slow Pong doesn't flip relay selection.
        self.latency_ms = rtt if self.latency_ms is None else 0.875 * self.latency_ms + 0.125 * rtt
        return rtt

    async def request_circuit(
        self, peer_id: PeerId | str, *, timeout: float = 30.0
    ) -> RelayCircuit:
        """Ask the relay for a circuit to ``peer_id``; raises :class:`CircuitRefused`."""
        peer_id = peer_id_text(peer_id)
        send, receive = trio.open_memory_channel[sig.RelayResponse](1)
        self._pending_requests.setdefault(peer_id, deque()).append(send)
        try:
            await self.send_message(sig.RelayRequest(from_=self.local_peer_id, to=peer_id))
            with trio.fail_after(timeout):
                response = await receive.receive()
        except trio.EndOfChannel:
            raise trio.BrokenResourceError(
                "relay session closed during the circuit request"
            ) from self.close_cause
        finally:
            waiting = self._pending_requests.get(peer_id)
            if waiting is not None and send in waiting:
                waiting.remove(send)
        if not response.accepted:
            raise CircuitRefused(response.error or "circuit refused", response.code)
        circuit = self._circuits.get(uuid.UUID(response.relay_id).bytes)
        if circuit is None:  # closed before we got to look at it
            raise CircuitRefused("circuit closed immediately", "closed")
        return circuit

    async def register_topic(
        self, topic: str, *, leave: bool = False, timeout: float = 10.0
    ) -> list[str]:
        """Topic rendezvous (docs/PROTOCOL.md 14.6): register interest in ``topic`` (or
        withdraw it with ``leave``). Returns the relay's random sample of other peers
        registered for it; [] after ``leave``, when the relay refuses, or after ``timeout``."""
        if leave:
            await self.send_message(sig.TopicRegister(topic, leave=True))
            return []
        send, receive = trio.open_memory_channel[list[str]](1)
        waiters = self._pending_topics.setdefault(topic, deque())
        waiters.append(send)
        try:
            await self.send_message(sig.TopicRegister(topic))
            with trio.move_on_after(timeout):
                return await receive.receive()
            return []
        finally:
            if send in waiters:
                waiters.remove(send)
            if not waiters:
                self._pending_topics.pop(topic, None)

    async def turn_credentials(self, *, timeout: float = 10.0) -> TurnCredentials:
        """TURN credentials for our peer id from this relay (PROTOCOL.md 13.6); raises
        TurnUnavailable (``.code``) when it has none for us or does not answer in time."""
        return await self._turn_waiters.request(self.send_message, timeout)

    async def accept_circuit(self) -> RelayCircuit:
        """Wait for a circuit another peer opened to us."""
        try:
            return await self._incoming.receiver.receive()
        except trio.EndOfChannel:
            raise trio.BrokenResourceError("relay session closed") from self.close_cause

    async def refresh_token(self, token: str) -> float:
        send, receive = trio.open_memory_channel[sig.TokenRefreshed | sig.Error](1)
        self._refresh_waiters.append(send)
        await self.send_message(sig.RefreshToken(token=token))
        result = await receive.receive()
        if isinstance(result, sig.Error):
            raise RelayError(result.message, result.code)
        self.token_expires_at = result.expires_at
        return result.expires_at

    @property
    def signals(self) -> trio.MemoryReceiveChannel[Signal]:
        """Offers, answers and ICE candidates other peers sent us (dropped when full)."""
        return self._signals.receiver

    @property
    def errors(self) -> trio.MemoryReceiveChannel[sig.Error]:
        """Error frames the relay sent outside a request (dropped when full)."""
        return self._errors.receiver

    @property
    def circuits(self) -> list[RelayCircuit]:
        return list(self._circuits.values())

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def statistics(self) -> RelaySessionStatistics:
        return RelaySessionStatistics(
            relay=str(self.address),
            relay_peer_id=self.relay_peer_id,
            latency_ms=self.latency_ms,
            circuits=len(self._circuits),
            frames_received=self.frames_received,
            errors_received=self.errors_received,
            dropped_signals=self.dropped_signals,
            refused_circuits=self.refused_circuits,
        )

    # -- circuits --------------------------------------------------------------------

    def _new_circuit(
        self, relay_id: str, peer_id: str, limits: sig.CircuitLimits | None, initiator: bool
    ) -> RelayCircuit | None:
        try:
            key = uuid.UUID(relay_id).bytes
        except ValueError:
            log.warning("relay sent a malformed relay_id %r", relay_id)
            return None
        prefix = _DATA_KIND + key  # made once: every DATA frame starts with it
        circuit = RelayCircuit(
            relay_id,
            key,
            peer_id,
            limits or sig.CircuitLimits(window=256 * 1024, max_data_frame=64 * 1024),
            initiator=initiator,
            send_data=functools.partial(self._writer.send_data, prefix),
            try_send_data=functools.partial(self._writer.try_send_data_nowait, prefix),
            flush=self._writer.flush,
            flush_needed=lambda: self._writer.unsent_bytes > 0,
            send_credit=self._send_circuit_credit,
            send_close=self._send_close,
            on_closed=self._forget_circuit,
            blocking=self._writer.sender_blocks,
        )
        self._circuits[key] = circuit
        return circuit

    async def _send_circuit_credit(self, key: bytes, increment: int) -> None:
        await self._send_frame(sig.encode_circuit_credit(key, increment), control=True)

    async def _send_close(self, relay_id: str) -> None:
        await self.send_message(sig.CloseRelay(relay_id=relay_id))

    def _forget_circuit(self, circuit: RelayCircuit) -> None:
        self._circuits.pop(circuit.relay_key, None)

    # -- inbound -----------------------------------------------------------------------

    async def _reader(self) -> None:
        receive = self._ws.receive
        circuits = self._circuits
        header_length = sig.DATA_HEADER_LENGTH
        try:
            while True:
                frame = await receive()
                self.frames_received += 1
                if type(frame) is bytes:
                    # DATA for a known circuit, taken in its window: handled here, with
                    # no coroutine call (the path of every circuit message)
                    if frame[:1] == _DATA_KIND and len(frame) >= header_length:
                        circuit = circuits.get(frame[1:header_length])
                        if circuit is not None and circuit._deliver(
                            memoryview(frame)[header_length:]
                            if len(frame) > _SLICE_LIMIT
                            else frame[header_length:]
                        ):
                            continue
                    await self._on_binary(frame)
                else:
                    try:
                        msg = sig.decode_message_untrusted(frame)
                    except ParseError as exc:
                        log.warning("relay %s sent a bad frame: %s", self.address, exc)
                        continue
                    await self._on_message(msg)
        except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.close_cause = exc
        finally:
            self._shut_down("session_closed")

    async def _on_binary(self, frame: bytes) -> None:
        if frame[:1] == _DATA_KIND and len(frame) >= sig.DATA_HEADER_LENGTH:
            # DATA, parsed here: the payload stays a view of the frame (no copy)
            circuit = self._circuits.get(frame[1 : sig.DATA_HEADER_LENGTH])
            payload: bytes | memoryview = memoryview(frame)[sig.DATA_HEADER_LENGTH :]
        else:
            try:
                item = sig.decode_binary_untrusted(frame)
            except ParseError as exc:
                log.warning("relay %s sent a bad binary frame: %s", self.address, exc)
                return
            circuit = self._circuits.get(item.relay_id)
            if circuit is not None and isinstance(item, sig.CircuitCredit):
                circuit._add_credit(item.increment)
                return
            payload = getattr(item, "payload", b"")
        if circuit is None:
            return  # data racing a close; the protocol says it is dropped
        if not circuit._deliver(payload):
            log.warning("relay %s overran circuit %s's window", self.address, circuit.relay_id)
            circuit._remote_close("protocol_error")
            await self._send_close(circuit.relay_id)

    async def _on_message(self, msg: sig.Message) -> None:
        if isinstance(msg, sig.Ping):
            await self.send_message(sig.Pong(nonce=msg.nonce))
        elif isinstance(msg, sig.Pong):
            # A nonce we don't know answers a ping that was cancelled: nobody waits for it.
            nonce = msg.nonce if msg.nonce is not None else next(iter(self._pending_pings), None)
            done = self._pending_pings.pop(nonce, None) if nonce is not None else None
            if done is not None:
                done.set()
            self.last_pong = trio.current_time()
        elif isinstance(msg, (sig.Offer, sig.Answer, sig.IceCandidate)):
            # Never block the reader on a slow (or absent) signal consumer: any peer
            # could otherwise stall this session, circuits included, with a few Offers.
            try:
                self._signals.send_nowait(msg)
            except trio.WouldBlock:
                self.dropped_signals += 1
                log.warning(
                    "relay %s: signal queue full, dropped %s from %s",
                    self.address,
                    sig.message_type(msg),
                    msg.from_,
                )
        elif isinstance(msg, sig.RelayResponse):
            self._on_relay_response(msg)
        elif isinstance(msg, sig.DataChannel):
            circuit = self._new_circuit(msg.relay_id, msg.peer_id, msg.limits, initiator=False)
            if circuit is not None:
                try:
                    self._incoming.send_nowait(circuit)
                except trio.WouldBlock:  # nobody accepts: refuse rather than stall
                    self.refused_circuits += 1
                    circuit._remote_close("refused")
                    await self._send_close(circuit.relay_id)
        elif isinstance(msg, sig.RelayData):  # only if the relay didn't convert to binary
            try:
                circuit = self._circuits.get(uuid.UUID(msg.relay_id).bytes)
            except ValueError:
                circuit = None
            if circuit is not None:
                circuit._deliver(msg.data)
        elif isinstance(msg, sig.CloseRelay):
            try:
                circuit = self._circuits.get(uuid.UUID(msg.relay_id).bytes)
            except ValueError:
                circuit = None
            if circuit is not None:
                circuit._remote_close(msg.reason or "closed_by_peer")
        elif isinstance(msg, sig.TokenRefreshed):
            if self._refresh_waiters:
                self._refresh_waiters.popleft().send_nowait(msg)
        elif isinstance(msg, sig.TopicPeers):
            if self._pending_topics.get(msg.topic):
                self._pending_topics[msg.topic].popleft().send_nowait(list(msg.peers))
        elif isinstance(msg, sig.TurnCredentials):
            self._turn_waiters.deliver(msg)
        elif isinstance(msg, sig.Error):
            self.errors_received += 1
            if self._turn_waiters.answers(msg):
                return
            if (
                msg.code == "topic_limit"
                and msg.ref is not None
                and self._pending_topics.get(msg.ref)
            ):
                self._pending_topics[msg.ref].popleft().send_nowait([])
            if (
                msg.code in ("invalid_token", "token_expired", "token_peer_mismatch")
                and self._refresh_waiters
            ):
                self._refresh_waiters.popleft().send_nowait(msg)
                return
            log.info("relay %s: error %s: %s", self.address, msg.code, msg.message)
            try:
                self._errors.send_nowait(msg)
            except trio.WouldBlock:
                pass  # nobody is reading errors; they are also logged
        else:
            log.debug("relay %s sent unexpected %s", self.address, sig.message_type(msg))

    def _on_relay_response(self, msg: sig.RelayResponse) -> None:
        target = msg.to
        waiting = self._pending_requests.get(target) if target else None
        if not waiting:  # an original relay that doesn't echo `to`: oldest request wins
            waiting = next((q for q in self._pending_requests.values() if q), None)
            target = next((k for k, q in self._pending_requests.items() if q), None)
        if not waiting or target is None:
            log.debug("unsolicited RelayResponse %s", msg.relay_id)
            return
        if msg.accepted:
            self._new_circuit(msg.relay_id, target, msg.limits, initiator=True)
        waiting.popleft().send_nowait(msg)

    def _shut_down(self, reason: str) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._background_scope.cancel()
        for circuit in list(self._circuits.values()):
            circuit._remote_close(reason)
        for done in self._pending_pings.values():
            done.set()  # unanswered: ping() raises BrokenResourceError
        for queue in self._pending_requests.values():
            for send in queue:
                send.close()
        for waiter in self._refresh_waiters:
            waiter.close()
        self._turn_waiters.close()
        self._signals.close()
        self._incoming.close()
        self._errors.close()


@functools.cache
def _default_ssl_context() -> ssl.SSLContext:
    # Once per process: building one loads the system's CA certificates (milliseconds),
    # and a peer reconnecting to a wss:// relay would pay that on every attempt.
    return ssl.create_default_context()


@asynccontextmanager
async def open_relay_session(
    address: RelayAddress | str,
    keypair: Keypair,
    *,
    token_provider: TokenProvider | None = None,
    connect_timeout: float = 30.0,
    ping_interval: float = 30.0,
    token_refresh_margin: float = 60.0,
    ssl_context: ssl.SSLContext | None = None,
    signal_buffer: int = 64,
) -> AsyncIterator[RelaySession]:
    """Connect to a relay and register; the session lives until the block exits.

    Raises :class:`RelayAuthenticationError` when the relay cannot prove the PeerId in
    its multiaddr or refuses ours, ``OSError``/``trio.TooSlowError`` when unreachable.
    """
    if isinstance(address, str):
        address = parse_relay_address(address)
    if address.secure and ssl_context is None:
        ssl_context = _default_ssl_context()
    async with AsyncExitStack() as stack:
        with trio.fail_after(connect_timeout):  # one deadline: connect and handshake
            ws = await open_connection(stack, address, ssl_context)
            registered, round_trip = await register(ws, address, keypair, token_provider)
        bound_unsent_bytes(ws)
        session = RelaySession(ws, address, keypair, registered, signal_buffer=signal_buffer)
        session.latency_ms = round_trip * 1000  # the first figure, no Ping needed for it
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session._reader)
            nursery.start_soon(
                run_keepalive,
                session,
                session._background_scope,
                ping_interval,
                token_provider,
                token_refresh_margin,
            )
            try:
                yield session
            finally:
                nursery.cancel_scope.cancel()
                session._shut_down("session_closed")
