"""RelayManager: sessions with every configured relay, kept alive, and circuits over them.

One task per relay runs connect -> register -> serve -> backoff in a loop: status moves
Unknown -> Connecting -> Connected -> Disconnected, and to Failed after
``max_reconnect_attempts`` consecutive failures, or at once on a permanent refusal
(the relay cannot prove the PeerId in its multiaddr, refuses our token or lack of one,
or its TLS certificate is not trusted): retrying those with backoff cannot help. A relay
that answers ``relay_busy`` (a restart storm) is waited for as its ``Retry-After`` asks,
plus up to 1 s of jitter, and that attempt is not a failure; a *full* relay
(``too_many_sessions``) is.
``retry()`` starts a Failed relay again. ``wait_connected`` raises NoRelayAvailable as
soon as no configured relay can still connect. Circuits go through the connected relay
with the lowest smoothed latency and fail over to the next when refused or down.
"""

from __future__ import annotations

import enum
import logging
import math
import random
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio

from .._config import RelayAddress, RelayManagerConfig, parse_relay_address
from .._identity import Keypair, PeerId, peer_id_text
from .._service import NotStarted, TaskOwner
from ._circuit import RelayCircuit
from ._incoming import receive_or_idle
from ._refusals import busy_wait, describe, is_permanent, real_cause, sole_leaf
from ._session import (
    CircuitRefused,
    RelayError,
    RelaySession,
    TokenProvider,
    open_relay_session,
)
from ._turn_credentials import TurnCredentials, TurnUnavailable

log = logging.getLogger("darkswap_trio.relay_manager")


class RelayServerStatus(enum.Enum):
    UNKNOWN = "unknown"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    FAILED = "failed"


@dataclass
class RelayServerState:
    """What the manager knows of one relay (a live record, not a snapshot).

    Not to be confused with ``relay.RelayServer``, the running server.
    """

    id: str  # the relay's PeerId
    url: str
    address: RelayAddress
    status: RelayServerStatus = RelayServerStatus.UNKNOWN
    last_ping: float | None = None  # trio time of the last Pong (None before the first)
    latency_ms: float | None = None
    failures: int = 0
    last_error: str | None = None  # what went wrong last, for people
    last_exception: BaseException | None = field(default=None, repr=False)  # ... for code
    session: RelaySession | None = field(default=None, repr=False)


# -- events -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerConnected:
    server_id: str


@dataclass(frozen=True)
class ServerDisconnected:
    server_id: str
    cause: str


@dataclass(frozen=True)
class ServerFailed:
    server_id: str
    cause: str


@dataclass(frozen=True)
class CircuitCreated:
    relay_id: str
    peer_id: str
    server_id: str
    initiator: bool


@dataclass(frozen=True)
class CircuitEnded:
    """A circuit closed (``reason`` as the relay or the closing side gave it).

    An event; the exception a closed circuit raises is :class:`CircuitClosedError`.
    """

    relay_id: str
    peer_id: str
    reason: str


@dataclass(frozen=True)
class DataReceived:
    """A message from ``peer_id`` (``from_`` is the guide's name for it)."""

    peer_id: str
    relay_id: str
    data: bytes

    @property
    def from_(self) -> str:
        return self.peer_id


RelayEvent = (
    ServerConnected
    | ServerDisconnected
    | ServerFailed
    | CircuitCreated
    | CircuitEnded
    | DataReceived
)

# -- errors -------------------------------------------------------------------------------


class NoRelayAvailable(RelayError):
    """No configured relay is connected (or, from ``wait_connected``, none can still be).

    ``causes`` maps each relay's multiaddr to its last exception (None if it has none);
    ``__cause__`` is the first of them, e.g. the ssl.SSLCertVerificationError.
    """

    def __init__(
        self,
        message: str,
        code: str | None = "no_relay",
        causes: dict[str, BaseException | None] | None = None,
    ) -> None:
        super().__init__(message, code)
        self.causes = dict(causes or {})


class PeerNotFound(RelayError):
    """No connected relay knows the peer."""


class UnknownCircuit(KeyError):
    """No open circuit has this relay_id."""


class RelayManager(TaskOwner):
    """Keeps sessions with ``relay_servers`` and opens circuits through them.

    Run it with ``async with RelayManager(...) as manager:`` or
    ``await nursery.start(manager.run)``. Events arrive on ``manager.events`` (bounded:
    a consumer that stops reading slows circuit delivery down, it never grows memory).
    """

    def __init__(
        self,
        keypair: Keypair,
        relay_servers: Sequence[str | RelayAddress],
        config: RelayManagerConfig | None = None,
        *,
        token_provider: TokenProvider | None = None,
        ssl_context: ssl.SSLContext | None = None,
        event_buffer: int = 256,
        deliver_incoming: bool = True,
        on_status: Callable[[RelayEvent, bool], None] | None = None,
    ) -> None:
        self.keypair = keypair
        self.local_peer_id = str(keypair.peer_id)
        self.config = (config or RelayManagerConfig()).validate()
        self._token_provider = token_provider
        self._ssl_context = ssl_context
        self._deliver_incoming = deliver_incoming
        # Told synchronously of every event but DataReceived, with whether it was
        # queued on ``events``: an owner (P2PNetwork) keeps its books here, so they
        # never depend on someone reading events.
        self._on_status = on_status
        self._servers: dict[str, RelayServerState] = {}
        for entry in relay_servers:
            address = entry if isinstance(entry, RelayAddress) else parse_relay_address(entry)
            server_id = str(address.peer_id)
            self._servers[server_id] = RelayServerState(server_id, address.url, address)
        self._retry_events = {sid: trio.Event() for sid in self._servers}
        self._event_send, self.events = trio.open_memory_channel[RelayEvent](event_buffer)
        self._incoming_send, self._incoming = trio.open_memory_channel[RelayCircuit](event_buffer)
        self._circuits: dict[str, tuple[RelayCircuit, str]] = {}
        self._nursery: trio.Nursery | None = None
        self._rng = random.Random()
        self._connected_changed = trio.Event()
        self.dropped_status_events = 0

    # -- lifecycle ----------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[RelayManager] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for server in self._servers.values():
                nursery.start_soon(self._maintain, server)
            task_status.started(self)
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None
                nursery.cancel_scope.cancel()

    async def stop(self) -> None:
        """Close every circuit and session; idempotent."""
        for circuit, _ in list(self._circuits.values()):
            with trio.move_on_after(1):
                await circuit.aclose()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        await trio.lowlevel.checkpoint()

    def _require_running(self) -> trio.Nursery:
        if self._nursery is None:
            raise NotStarted(
                "RelayManager is not running; use 'async with' or nursery.start(manager.run)"
            )
        return self._nursery

    # -- status -------------------------------------------------------------------------

    @property
    def servers(self) -> list[RelayServerState]:
        return list(self._servers.values())

    def server(self, server_id: str) -> RelayServerState:
        return self._servers[server_id]

    def connected_servers(self) -> list[RelayServerState]:
        """Connected relays, lowest latency first (unknown latency last)."""
        live = [
            s
            for s in self._servers.values()
            if s.status is RelayServerStatus.CONNECTED and s.session
        ]
        return sorted(
            live, key=lambda s: s.latency_ms if s.latency_ms is not None else float("inf")
        )

    async def wait_connected(self, count: int = 1, *, timeout: float | None = None) -> None:
        """Wait until at least ``count`` relays are connected.

        Raises :class:`NoRelayAvailable` as soon as fewer than ``count`` relays can
        still connect (the others are Failed: refused for good, or out of retries),
        or once ``timeout`` seconds have passed. Its message names each relay with its
        status and last error, and ``__cause__`` is the real exception.
        """
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be a positive int, got {count!r}")
        if timeout is not None and not timeout >= 0:
            raise ValueError(f"timeout must be None or >= 0 seconds, got {timeout!r}")
        with trio.move_on_after(math.inf if timeout is None else timeout):
            while True:
                changed = self._connected_changed
                if len(self.connected_servers()) >= count:
                    return
                hopeful = [
                    s for s in self._servers.values() if s.status is not RelayServerStatus.FAILED
                ]
                if len(hopeful) < count:
                    wanted = (
                        "no configured relay"
                        if count == 1
                        else f"fewer than {count} configured relays"
                    )
                    raise self._unavailable(f"{wanted} can still connect")
                await changed.wait()
        wanted = "no relay" if count == 1 else f"fewer than {count} relays"
        raise self._unavailable(f"{wanted} connected within {timeout:.3g}s", "relay_timeout")

    def _unavailable(self, summary: str, code: str = "no_relay") -> NoRelayAvailable:
        causes = {str(s.address): s.last_exception for s in self._servers.values()}
        details = (
            "; ".join(
                f"{s.address} {s.status.value}" + (f" ({s.last_error})" if s.last_error else "")
                for s in self._servers.values()
            )
            or "no relay is configured"
        )
        error = NoRelayAvailable(f"{summary}: {details}", code, causes)
        error.__cause__ = next((exc for exc in causes.values() if exc is not None), None)
        return error

    def retry(self, server_id: str | None = None) -> None:
        """Start Failed relays (or one) connecting again."""
        for sid, server in self._servers.items():
            if server_id in (None, sid) and server.status is RelayServerStatus.FAILED:
                self._retry_events[sid].set()

    async def _emit_data(self, event: DataReceived | CircuitEnded) -> None:
        # A circuit's data waits for the consumer: that is the backpressure, and only
        # this circuit's pump waits. Its CircuitEnded follows the data in order.
        if self._on_status is not None and isinstance(event, CircuitEnded):
            self._on_status(event, True)
        await self._event_send.send(event)

    def _emit_status(self, event: RelayEvent) -> None:
        # Status and CircuitCreated events never wait: a consumer that stopped reading
        # must not stall reconnection, accepts or dials. Dropped ones are counted;
        # ``servers`` and the circuits always have the truth.
        try:
            self._event_send.send_nowait(event)
            queued = True
        except trio.WouldBlock:
            self.dropped_status_events += 1
            queued = False
        if self._on_status is not None:
            self._on_status(event, queued)

    def _set_status(self, server: RelayServerState, status: RelayServerStatus) -> None:
        server.status = status
        # Swap before setting, so every waiter (not only the latest) wakes up.
        changed, self._connected_changed = self._connected_changed, trio.Event()
        changed.set()

    async def _maintain(self, server: RelayServerState) -> None:
        cfg = self.config
        while True:
            self._set_status(server, RelayServerStatus.CONNECTING)
            try:
                async with open_relay_session(
                    server.address,
                    self.keypair,
                    token_provider=self._token_provider,
                    connect_timeout=cfg.connection_timeout,
                    ping_interval=cfg.ping_interval,
                    token_refresh_margin=cfg.token_refresh_margin,
                    ssl_context=self._ssl_context,
                ) as session:
                    await self._serve_session(server, session)
                error: BaseException | None = session.close_cause
                cause, fatal = f"session ended: {session.close_cause!r}", False
            except (OSError, trio.TooSlowError, trio.BrokenResourceError, RelayError) as exc:
                error = real_cause(exc)
                cause, fatal = describe(error), is_permanent(error)
            except Exception as exc:  # noqa: BLE001 - one session's failure never ends the manager
                error = real_cause(sole_leaf(exc))
                cause, fatal = describe(error), is_permanent(error)
                log.warning("relay %s session failed: %s", server.address, cause, exc_info=exc)
            server.session = None
            server.last_error = cause
            server.last_exception = error
            was_connected = server.status is RelayServerStatus.CONNECTED
            busy = None if error is None else busy_wait(error)
            if busy is not None and not was_connected:
                # Alive but swamped: wait our turn, and this attempt is no failure.
                log.info("relay %s is busy, retrying in %.0f s", server.address, busy)
                self._set_status(server, RelayServerStatus.DISCONNECTED)
                await trio.sleep(busy + self._rng.uniform(0.0, 1.0))
                continue
            server.failures += 1
            if was_connected:
                server.failures = 1
                self._emit_status(ServerDisconnected(server.id, cause))
            if fatal or server.failures > cfg.max_reconnect_attempts:
                why = "refused for good" if fatal else f"failed {server.failures} times in a row"
                log.warning(
                    "relay %s %s, not retrying until retry(): %s", server.address, why, cause
                )
                self._set_status(server, RelayServerStatus.FAILED)
                self._emit_status(ServerFailed(server.id, cause))
                self._retry_events[server.id] = trio.Event()
                await self._retry_events[server.id].wait()
                server.failures = 0
                continue
            log.info("relay %s: %s (attempt %d, retrying)", server.address, cause, server.failures)
            self._set_status(server, RelayServerStatus.DISCONNECTED)
            # Jittered exponential backoff, so a relay restart isn't met by a stampede.
            base = min(
                cfg.reconnect_interval * 2 ** (server.failures - 1), cfg.max_reconnect_interval
            )
            # The first retry after a lost session spreads over [0.2, 1] x base rather than
            # [0.5, 1]: a restarted relay sees the same peers over a window 1.6x as long
            # that also starts earlier, so re-registration is spread without being delayed.
            low = 0.2 if was_connected else 0.5
            await trio.sleep(base * self._rng.uniform(low, 1.0))

    async def _serve_session(self, server: RelayServerState, session: RelaySession) -> None:
        server.session = session
        server.failures = 0
        server.last_error = None
        server.last_exception = None
        # The first latency figure for relay selection is the registration's round trip
        # (relay_client._handshake.register), not a Ping: after a relay restart every
        # peer's first Ping was one more message for the relay to answer and one more
        # round trip before the peer counted as connected.
        server.latency_ms = session.latency_ms
        server.last_ping = session.last_pong
        self._set_status(server, RelayServerStatus.CONNECTED)
        self._emit_status(ServerConnected(server.id))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._accept_incoming, server, session)
            # The latency is copied here every ping_interval, not by a task of its own:
            # one task less to start and to cancel per session (a relay restart ends and
            # starts thousands of sessions at once).
            while True:
                with trio.move_on_after(self.config.ping_interval) as waited:
                    await session.wait_closed()
                if not waited.cancelled_caught:
                    break
                server.latency_ms = session.latency_ms
                server.last_ping = session.last_pong
            nursery.cancel_scope.cancel()

    async def _accept_incoming(self, server: RelayServerState, session: RelaySession) -> None:
        while True:
            try:
                circuit = await session.accept_circuit()
            except trio.BrokenResourceError:
                return
            self._adopt(circuit, server.id)
            self._emit_status(CircuitCreated(circuit.relay_id, circuit.peer_id, server.id, False))
            if self._deliver_incoming:
                self._require_running().start_soon(self._pump, circuit)
            else:
                await self._incoming_send.send(circuit)

    def _adopt(self, circuit: RelayCircuit, server_id: str) -> None:
        self._circuits[circuit.relay_id] = (circuit, server_id)

    async def _pump(self, circuit: RelayCircuit, idle_timeout: float | None = None) -> None:
        """Deliver a circuit's messages as DataReceived events, then its CircuitEnded.

        With ``idle_timeout`` the circuit is closed (reason ``idle``) after that long
        without a message either way.
        """
        try:
            while True:
                data = await receive_or_idle(circuit, idle_timeout)
                await self._emit_data(DataReceived(circuit.peer_id, circuit.relay_id, data))
        except (trio.ClosedResourceError, trio.BrokenResourceError, trio.EndOfChannel):
            pass
        self._circuits.pop(circuit.relay_id, None)
        await self._emit_data(
            CircuitEnded(circuit.relay_id, circuit.peer_id, circuit.close_reason or "closed")
        )

    # -- circuits -----------------------------------------------------------------------

    async def open_circuit(self, peer_id: PeerId | str, *, deliver: bool = False) -> RelayCircuit:
        """A circuit to ``peer_id`` as a trio channel, through the best relay that knows it.

        With ``deliver=True`` the manager reads it and emits DataReceived events instead.
        Raises PeerNotFound (code ``unknown_peer``) when no connected relay knows the peer.
        """
        peer_id = peer_id_text(peer_id)
        nursery = self._require_running()
        candidates = self.connected_servers()
        if not candidates:
            raise NoRelayAvailable("no relay is connected", "no_relay")
        errors: list[str] = []
        refusal: CircuitRefused | None = None
        for server in candidates:
            session = server.session
            if session is None:
                continue
            try:
                circuit = await session.request_circuit(
                    peer_id, timeout=self.config.connection_timeout
                )
            except CircuitRefused as exc:
                errors.append(f"{server.id}: {exc}")
                if exc.code != "unknown_peer" and refusal is None:
                    refusal = exc
                continue
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError) as exc:
                errors.append(f"{server.id}: {type(exc).__name__}")
                continue
            self._adopt(circuit, server.id)
            self._emit_status(CircuitCreated(circuit.relay_id, peer_id, server.id, True))
            if deliver:
                nursery.start_soon(self._pump, circuit)
            return circuit
        if refusal is not None:
            raise CircuitRefused(f"circuit to {peer_id} refused: {'; '.join(errors)}", refusal.code)
        raise PeerNotFound(
            f"peer {peer_id} is not connected to any relay ({'; '.join(errors)})", "unknown_peer"
        )

    async def turn_credentials(self, relay: str | None = None) -> TurnCredentials:
        """TURN credentials from relay ``relay`` (a server id), or from the first connected
        relay that has some, lowest latency first. Raises NoRelayAvailable or
        TurnUnavailable (the first relay's refusal)."""
        servers = [self.server(relay)] if relay is not None else self.connected_servers()
        refusal: TurnUnavailable | None = None
        for server in servers:
            if server.session is None or server.status is not RelayServerStatus.CONNECTED:
                continue
            try:
                return await server.session.turn_credentials(timeout=self.config.connection_timeout)
            except TurnUnavailable as exc:
                refusal = refusal or exc
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                continue
        if refusal is not None:
            raise refusal
        raise NoRelayAvailable("no relay is connected", "no_relay")

    async def accept_circuit(self) -> RelayCircuit:
        """The next incoming circuit (only with ``deliver_incoming=False``)."""
        return await self._incoming.receive()

    async def connect_to_peer(self, peer_id: PeerId | str) -> str:
        """Open a circuit whose data arrives as DataReceived events; returns its relay_id."""
        circuit = await self.open_circuit(peer_id, deliver=True)
        return circuit.relay_id

    async def deliver_as_events(
        self,
        circuit: RelayCircuit,
        first: bytes | None = None,
        *,
        idle_timeout: float | None = None,
    ) -> None:
        """Read ``circuit`` into DataReceived events (``first``: a message already taken
        from it), then emit its CircuitEnded. For circuits taken with accept_circuit().
        ``idle_timeout``: close it (reason ``idle``) after that long with no message."""
        if first is not None:
            await self._emit_data(DataReceived(circuit.peer_id, circuit.relay_id, first))
        await self._pump(circuit, idle_timeout)

    def circuit_server(self, relay_id: str) -> str | None:
        """The id of the relay that carries circuit ``relay_id``, if it is open."""
        entry = self._circuits.get(relay_id)
        return entry[1] if entry else None

    def forget_circuit(self, relay_id: str) -> bool:
        """Stop tracking a circuit its owner closed; False if it was not tracked."""
        return self._circuits.pop(relay_id, None) is not None

    def circuit(self, relay_id: str) -> RelayCircuit:
        try:
            return self._circuits[relay_id][0]
        except KeyError:
            raise UnknownCircuit(f"no open relay circuit {relay_id}") from None

    async def send_data(self, peer_id: PeerId | str, relay_id: str, data: bytes) -> None:
        """Send on circuit ``relay_id``; raises UnknownCircuit, CircuitClosedError or ClosedResourceError."""
        peer_id = peer_id_text(peer_id)
        _check_data(data)
        circuit = self.circuit(relay_id)
        if circuit.peer_id != peer_id:
            raise ValueError(f"circuit {relay_id} leads to {circuit.peer_id}, not {peer_id}")
        await circuit.send(data)

    async def close_relay(self, relay_id: str) -> None:
        circuit = self.circuit(relay_id)
        self._circuits.pop(relay_id, None)
        await circuit.aclose()


def _check_data(data: object) -> None:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes-like, not {type(data).__name__}")
