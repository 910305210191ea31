"""P2PNetwork: the peer-facing API (the guide's P2PNetwork), relay and direct paths.

It owns a RelayManager and turns its events into peer-level ones: a peer is connected
while a circuit to it is open or a :class:`PeerLink` to it is live. On every connected
relay session it runs a WebRtcTransport (the network is the one consumer of that
session's signals), so peers can open direct data channels to each other.
``connect_to_peer`` dials both paths at once and returns a PeerLink as soon as one is
ready; a relayed link upgrades to direct when the direct attempt succeeds later (see
``_peer_link`` for how the switch keeps the stream exact).
"""

from __future__ import annotations

import logging
import math
import ssl

import trio

from .._config import Config, P2PConfig
from .._identity import Keypair, PeerId, load_or_create_keypair, peer_id_text
from .._relay_client._circuit import RelayCircuit
from .._relay_client._incoming import IncomingCircuitPolicy
from .._relay_client._manager import (
    CircuitCreated,
    CircuitEnded,
    DataReceived,
    NoRelayAvailable,
    PeerNotFound,
    RelayEvent,
    RelayManager,
    ServerConnected,
    ServerDisconnected,
    _check_data,
)
from .._relay_client._session import RelayError, TokenProvider
from .._service import NotStarted, TaskOwner
from ..proto import signaling as sig
from ..proto.link import RESET, parse_hello_untrusted
from ..webrtc._peer_connection import PeerConnectionConfig
from ._dial_race import DialRace, PeerUnreachable
from ._direct import DirectConnection, WebRtcTransport
from ._direct_config import direct_path_config
from ._direct_transports import DirectTransports
from ._link_recovery import LinkRecovery
from ._metrics import ConnectionMetrics
from ._network_events import ConnectionUpgraded, NetworkEvent, PeerConnected, PeerDisconnected
from ._peer_link import LinkSettings, PeerLink
from ._pool import ConnectionPool
from ._topics import TopicsMixin

log = logging.getLogger("darkswap_trio.network")
LINK_RESET = bytes([RESET])


class P2PNetwork(TopicsMixin, TaskOwner):
    """A peer on the DarkSwap network.

    ``async with P2PNetwork(config) as network:`` (or ``await nursery.start(network.run)``)
    connects to the configured relays; ``network.events`` yields PeerConnected,
    PeerDisconnected and DataReceived (plus the relay manager's server events).
    """

    def __init__(
        self,
        config: Config | P2PConfig | None = None,
        *,
        keypair: Keypair | None = None,
        token_provider: TokenProvider | None = None,
        ssl_context: ssl.SSLContext | None = None,
        peer_connection_config: PeerConnectionConfig | None = None,
    ) -> None:
        if config is None:
            config = Config()
        if isinstance(config, P2PConfig):
            config = Config(p2p=config)
        self.config = config.validate()
        if keypair is None:
            path = self.config.p2p.key_file
            keypair = load_or_create_keypair(path) if path else Keypair.generate()
        self.keypair = keypair
        self.local_peer_id = str(keypair.peer_id)
        self.relay_manager = RelayManager(
            keypair,
            self.config.p2p.relay_addresses(),
            self.config.relay_manager,
            token_provider=token_provider,
            ssl_context=ssl_context,
            event_buffer=self.config.p2p.event_buffer,
            deliver_incoming=False,
            on_status=self._on_relay_status,
        )
        self.peer_connection_config = direct_path_config(self.config.p2p, peer_connection_config)
        p2p = self.config.p2p
        self._event_send, self.events = trio.open_memory_channel[NetworkEvent](p2p.event_buffer)
        self._peer_circuits: dict[str, set[str]] = {}
        # PeerConnected/PeerDisconnected decided when a circuit opened or closed, sent
        # right after that event when the event reaches network.events.
        self._follow_ups: dict[RelayEvent, NetworkEvent] = {}
        self._dials: dict[str, DialRace] = {}  # connect_to_peer races in progress
        self._running = False
        self._scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self.pool = ConnectionPool(
            p2p.max_connections, p2p.connection_idle_timeout, self.topic_layer
        )
        self._dialing: dict[str, PeerLink] = {}  # links not yet ready (not pooled yet)
        self._transports = DirectTransports(
            self.relay_manager,
            p2p,
            self.peer_connection_config,
            on_connection=self._accept_direct,
            on_relay_error=self._direct_relay_error,
        )
        # Independent of the event queue (and as deep as the pool), so unread events
        # never cost an accept and a reader of accept_peer() never loses a link.
        self._incoming_send, self._incoming = trio.open_memory_channel[PeerLink](
            p2p.max_connections
        )
        self.dropped_incoming_links = 0
        self.dropped_events = 0  # events dropped because nobody read network.events
        self._link_recovery = LinkRecovery(self)
        self.incoming_circuits = IncomingCircuitPolicy.from_config(p2p)  # README, "Unsolicited..."
        self._link_settings = LinkSettings(
            max_message_size=p2p.link_max_message_size,
            window=p2p.link_window,
            ping_interval=p2p.link_ping_interval,
            path_timeout=p2p.link_path_timeout,
            recovery_timeout=p2p.link_recovery_timeout,
        )

    @property
    def dropped_link_events(self) -> int:
        """Former name of :attr:`dropped_events`."""
        return self.dropped_events

    # -- lifecycle ----------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[P2PNetwork] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with trio.CancelScope() as self._scope:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.relay_manager.run)
                await nursery.start(self.topic_layer.run)
                nursery.start_soon(self._translate_events)
                nursery.start_soon(self._accept_circuits)
                nursery.start_soon(self._prune_idle)
                self._running = True
                try:
                    task_status.started(self)
                    await trio.sleep_forever()
                finally:
                    self._running = False
                    with trio.CancelScope(shield=True), trio.move_on_after(2):
                        for link in [*self.pool.links(), *self._dialing.values()]:
                            await link.aclose()
                        await self.relay_manager.stop()
                    nursery.cancel_scope.cancel()

    async def stop(self) -> None:
        """Close every circuit and relay session; idempotent."""
        if self._scope is not None:
            self._scope.cancel()
        await trio.lowlevel.checkpoint()

    def _require_running(self) -> None:
        if not self._running:
            raise NotStarted(
                "P2PNetwork is not running; use 'async with' or nursery.start(network.run)"
            )

    # -- relay API ------------------------------------------------------------------------

    @property
    def connected_peers(self) -> list[str]:
        peers = {peer for peer, circuits in self._peer_circuits.items() if circuits}
        return sorted(peers | {link.peer_id for link in self.pool.links()})

    async def wait_relay_connected(self, count: int = 1, *, timeout: float | None = None) -> None:
        """Wait until ``count`` relays are connected (and, with direct enabled, serve offers).

        Raises NoRelayAvailable (the relays' addresses and last errors in its message,
        the real exception as ``__cause__``) as soon as fewer than ``count`` configured
        relays can still connect, or after ``timeout`` seconds.
        """
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        while True:
            remaining = None if timeout is None else max(deadline - trio.current_time(), 0.0)
            await self.relay_manager.wait_connected(count, timeout=remaining)
            if not self.config.p2p.enable_direct or len(self._transports) >= count:
                return
            if trio.current_time() >= deadline:
                raise NoRelayAvailable(
                    f"relays connected, but the direct path's signaling did not "
                    f"start within {timeout}s",
                    "relay_timeout",
                )
            with trio.move_on_at(deadline):
                await self._transports.wait_changed()

    async def connect_via_relay(self, peer_id: PeerId | str) -> str:
        """Open a relay circuit to ``peer_id``; its data arrives as DataReceived events."""
        peer_id = peer_id_text(peer_id)
        self._require_running()
        return await self.relay_manager.connect_to_peer(peer_id)

    async def send_via_relay(self, peer_id: PeerId | str, relay_id: str, data: bytes) -> None:
        peer_id = peer_id_text(peer_id)
        _check_data(data)
        self._require_running()
        await self.relay_manager.send_data(peer_id, relay_id, data)

    async def close_relay(self, relay_id: str) -> None:
        self._require_running()
        await self.relay_manager.close_relay(relay_id)

    # -- events ---------------------------------------------------------------------------

    def _on_relay_status(self, event: RelayEvent, queued: bool) -> None:
        """The relay manager's news, synchronously: the books and the direct path's
        transports follow it here, whether or not anyone reads events."""
        follow_up: NetworkEvent | None = None
        if isinstance(event, CircuitCreated):
            circuits = self._peer_circuits.setdefault(event.peer_id, set())
            if not circuits and self.pool.get(event.peer_id) is None:
                follow_up = PeerConnected(event.peer_id, "relay", event.relay_id)
            circuits.add(event.relay_id)
        elif isinstance(event, CircuitEnded):
            circuits = self._peer_circuits.get(event.peer_id, set())
            circuits.discard(event.relay_id)
            if not circuits:
                self._peer_circuits.pop(event.peer_id, None)
                if self.pool.get(event.peer_id) is None and event.peer_id not in self._dialing:
                    follow_up = PeerDisconnected(event.peer_id, event.reason)
        elif isinstance(event, ServerConnected):
            if self._nursery is not None:
                self._transports.start(event.server_id, self._nursery)
        elif isinstance(event, ServerDisconnected):
            self._transports.stop(event.server_id)
        if follow_up is not None:
            if queued:
                self._follow_ups[event] = follow_up
            else:
                self.dropped_events += 1

    async def _translate_events(self) -> None:
        # Only DataReceived waits for the reader (backpressure on that circuit's data);
        # every other event is passed on without waiting, or dropped and counted.
        async for event in self.relay_manager.events:
            if isinstance(event, DataReceived):
                await self._event_send.send(event)
                continue
            self._emit_nowait(event)
            follow_up = self._follow_ups.pop(event, None)
            if follow_up is not None:
                self._emit_nowait(follow_up)

    # -- direct path (DirectTransports: one WebRtcTransport per relay session) ----------

    def _direct_relay_error(self, error: sig.Error) -> None:
        """End a direct attempt whose Offer the relay could not deliver (``unknown_peer``):
        without this it would wait for its full timeout."""
        dial = self._dials.get(error.ref or "") if error.code == "unknown_peer" else None
        if dial is not None:
            # Only that relay does not know the peer: the relay attempt may still win.
            dial.failed("direct", PeerNotFound(error.message, error.code), unknown_peer=True)

    def _accept_direct(self, connection: DirectConnection) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(self._link_recovery.accept_direct, connection)

    def _best_transport(self) -> WebRtcTransport | None:
        return self._transports.best()

    # -- incoming relay circuits: link circuits or plain DataReceived ones ---------------

    async def _accept_circuits(self) -> None:
        assert self._nursery is not None
        while True:
            circuit = await self.relay_manager.accept_circuit()
            self._nursery.start_soon(self._classify_circuit, circuit)

    async def _classify_circuit(self, circuit: RelayCircuit) -> None:
        manager, policy = self.relay_manager, self.incoming_circuits
        first = await policy.first_message(circuit)  # None: closed (maybe here: idle, too many)
        hello = parse_hello_untrusted(first)
        if hello is not None and self.config.p2p.enable_relay:
            link = self._link_for_incoming(circuit.peer_id, *hello)
            if link is not None and self._bind_relay(link, circuit):
                await self._pool_incoming(link, "relay", circuit.relay_id)
                return
            if hello[1] is not None and link is None:
                try:
                    await circuit.send(LINK_RESET)  # the link it would restore is gone here
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            await circuit.aclose()
            await manager.deliver_as_events(circuit)  # only its CircuitEnded is left
            return
        # A plain connect_via_relay circuit: the guide's DataReceived events, if accepted.
        first = await policy.admit_plain(circuit, first)
        await manager.deliver_as_events(circuit, first, idle_timeout=policy.idle_timeout)

    # -- links ------------------------------------------------------------------------

    def _new_link(self, peer_id: str) -> PeerLink:
        assert self._nursery is not None
        return PeerLink(
            peer_id,
            self._nursery,
            self._link_recovery,
            local_peer_id=self.local_peer_id,
            settings=self._link_settings,
        )

    def _link_for_incoming(
        self, peer_id: str, sender_id: bytes, receiver_id: bytes | None
    ) -> PeerLink | None:
        """The link an incoming path belongs to, by its HELLO (docs/PROTOCOL.md 11.1).

        A HELLO naming our link (``receiver_id``) joins only that live link. One that
        does not know our link yet joins the link to that peer unless that link already
        knows another far-side link: then the far side started a new link, ours is
        stale and is replaced.
        """
        link = self.pool.get(peer_id) or self._dialing.get(peer_id)
        known: PeerLink | None = None
        if link is not None and not link.closed and link.remote_link_id in (None, sender_id):
            known = link
        if receiver_id is not None and (known is None or known.link_id != receiver_id):
            return None
        if known is not None:
            known.remote_link_id = sender_id
            return known
        if link is not None and not link.closed:
            # The far side opened a new link: ours is a stale incarnation.
            self.pool.discard(link)
            if self._dialing.get(peer_id) is link:
                del self._dialing[peer_id]
            assert self._nursery is not None  # a live link runs in it
            self._nursery.start_soon(link.aclose)
            link = None
        if link is None and self._running:
            link = self._new_link(peer_id)
            link.remote_link_id = sender_id
            self._dialing[peer_id] = link
        return link

    def _bind_relay(self, link: PeerLink, circuit: RelayCircuit) -> bool:
        server_id = self.relay_manager.circuit_server(circuit.relay_id)

        def relay_rtt_ms() -> float | None:
            if server_id is None:
                return None
            server = self.relay_manager.server(server_id)
            return server.session.latency_ms if server.session else server.latency_ms

        if not link.attach_relay(circuit):
            return False
        link.relay_rtt_ms = relay_rtt_ms
        return True

    async def _pool_incoming(self, link: PeerLink, kind: str, relay_id: str | None) -> None:
        if self._dialing.get(link.peer_id) is not link:
            return  # already pooled (a second path joined it), or dialed by us
        del self._dialing[link.peer_id]
        kept = await self.pool.add(link)
        if kept is not link:
            return
        try:
            self._incoming_send.send_nowait(link)
        except trio.WouldBlock:  # max_connections links nobody accepted
            self.dropped_incoming_links += 1
            log.warning("accept queue full: link from %s not handed to accept_peer()", link.peer_id)
        if not self._peer_circuits.get(link.peer_id) or kind == "direct":
            self._emit_nowait(PeerConnected(link.peer_id, kind, relay_id))

    def _link_upgraded(self, link: PeerLink) -> None:
        self._emit_nowait(ConnectionUpgraded(link.peer_id))

    def _link_circuit_closed(self, link: PeerLink, circuit: RelayCircuit) -> None:
        if not self.relay_manager.forget_circuit(circuit.relay_id):
            return  # already accounted for
        circuits = self._peer_circuits.get(circuit.peer_id, set())
        circuits.discard(circuit.relay_id)
        if not circuits:
            self._peer_circuits.pop(circuit.peer_id, None)
        self._emit_nowait(
            CircuitEnded(circuit.relay_id, circuit.peer_id, circuit.close_reason or "closed")
        )

    def _link_closed(self, link: PeerLink, reason: str = "link closed") -> None:
        self.pool.discard(link)
        if self._dialing.get(link.peer_id) is link:
            del self._dialing[link.peer_id]
        if not self._peer_circuits.get(link.peer_id):
            self._emit_nowait(PeerDisconnected(link.peer_id, reason))

    def _emit_nowait(self, event: NetworkEvent) -> None:
        # Link status events never wait (they come from sync callbacks and from
        # connect_to_peer, which must not hang on an unread event channel); dropped
        # ones are counted, and the pool and links always have the truth.
        try:
            self._event_send.send_nowait(event)
        except trio.WouldBlock:
            self.dropped_events += 1
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    async def _prune_idle(self) -> None:
        interval = min(self.config.p2p.connection_idle_timeout / 4, 30.0)
        while True:
            await trio.sleep(interval)
            await self.pool.prune_idle(trio.current_time())

    # -- peer API ---------------------------------------------------------------------

    async def connect_to_peer(self, peer_id: PeerId | str) -> PeerLink:
        """A link to ``peer_id``: direct and relay dialed at once, the first ready wins.

        Returns an existing live link if there is one. When the relay wins, the direct
        attempt goes on in the background and upgrades the link when it succeeds
        (a ConnectionUpgraded event). Raises PeerUnreachable if both attempts fail, at
        once (code ``unknown_peer``) when a relay says the peer is not connected to it.
        TypeError/ValueError for a ``peer_id`` that is not a PeerId or peer id string.
        """
        peer_id = peer_id_text(peer_id)
        if peer_id == self.local_peer_id:
            raise ValueError("connect_to_peer: that is this peer's own id")
        self._require_running()
        existing = self.pool.get(peer_id) or self._dialing.get(peer_id)
        if existing is not None:
            await existing.wait_ready()
            if not existing.closed:
                return existing
        p2p = self.config.p2p
        use_direct = p2p.enable_direct and self._best_transport() is not None
        use_relay = p2p.enable_relay
        if not use_direct and not use_relay:
            raise PeerUnreachable(
                f"no path to {peer_id}: direct and relay are unavailable", "no_path"
            )
        link = self._new_link(peer_id)
        self._dialing[peer_id] = link
        dial = DialRace(*["direct"] * use_direct, *["relay"] * use_relay)
        self._dials[peer_id] = dial
        assert self._nursery is not None
        if use_direct:
            self._nursery.start_soon(self._dial_direct, link, dial)
        if use_relay:
            self._nursery.start_soon(self._dial_relay, link, dial)
        try:
            async with trio.open_nursery() as waiters:

                async def ready() -> None:
                    await link.wait_ready()
                    waiters.cancel_scope.cancel()

                async def all_failed() -> None:
                    await dial.done.wait()
                    waiters.cancel_scope.cancel()

                waiters.start_soon(ready)
                waiters.start_soon(all_failed)
        except BaseException:
            dial.abandon()
            await link.aclose()
            raise
        finally:
            if self._dials.get(peer_id) is dial:
                del self._dials[peer_id]
        if link.closed or not link._path_ready.is_set():
            dial.abandon()
            await link.aclose()
            code = "unknown_peer" if dial.unknown_peer else "unreachable"
            raise PeerUnreachable(f"cannot reach {peer_id}: {'; '.join(dial.errors)}", code)
        if self._dialing.get(peer_id) is link:
            del self._dialing[peer_id]
        kept = await self.pool.add(link)
        if not self._peer_circuits.get(peer_id) or link.connection_type == "direct":
            self._emit_nowait(PeerConnected(peer_id, link.connection_type))
        return kept

    async def upgrade_to_direct(self, peer_id: PeerId | str) -> bool:
        """Try the direct path for the existing link to ``peer_id`` now; True if it switched."""
        link = self.link(peer_id)
        if link.has_direct:
            await link.wait_direct()
            return True
        dial = DialRace("direct")
        await self._dial_direct(link, dial, delay=False)
        if dial.errors or link.closed:
            return False
        await link.wait_direct()
        return True

    async def _dial_direct(self, link: PeerLink, dial: DialRace, *, delay: bool = True) -> None:
        with dial.scopes["direct"]:
            await self._dial_direct_attempt(link, dial, delay)

    async def _dial_direct_attempt(self, link: PeerLink, dial: DialRace, delay: bool) -> None:
        p2p = self.config.p2p
        try:
            if p2p.direct_delay and delay:
                await trio.sleep(p2p.direct_delay)
            transport = self._best_transport()
            if transport is None:
                raise NoRelayAvailable("no relay session to signal through", "no_relay")
            connection: DirectConnection = await transport.connect(
                link.peer_id, timeout=p2p.direct_connect_timeout
            )
        except (trio.BrokenResourceError, trio.BusyResourceError, RuntimeError, RelayError) as exc:
            dial.failed("direct", exc)
            return
        try:
            await connection.channel.send(link.hello)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            dial.failed("direct", exc)
            await connection.aclose()
            return
        if not link.attach_direct(connection):
            await connection.aclose()

    async def _dial_relay(self, link: PeerLink, dial: DialRace) -> None:
        circuit: RelayCircuit | None = None
        with dial.scopes["relay"] as scope:
            try:
                circuit = await self.relay_manager.open_circuit(link.peer_id)
                await circuit.send(link.hello)
            except PeerNotFound as exc:
                dial.peer_unknown(exc)
                return
            except (
                RelayError,
                ValueError,
                RuntimeError,
                trio.BrokenResourceError,
                trio.ClosedResourceError,
            ) as exc:
                dial.failed("relay", exc)
                return
        if circuit is None:
            return  # abandoned before a circuit opened
        if scope.cancelled_caught or not self._bind_relay(link, circuit):
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await circuit.aclose()
            self._link_circuit_closed(link, circuit)

    async def accept_peer(self) -> PeerLink:
        """The next link another peer opened to us (by either path)."""
        return await self._incoming.receive()

    def link(self, peer_id: PeerId | str) -> PeerLink:
        """The live link to ``peer_id``; KeyError if there is none."""
        peer_id = peer_id_text(peer_id)
        link = self.pool.get(peer_id)
        if link is None:
            raise KeyError(f"no link to {peer_id}")
        return link

    async def send_to_peer(self, peer_id: PeerId | str, data: bytes) -> None:
        """Send on the link to ``peer_id``, connecting first if there is none."""
        peer_id = peer_id_text(peer_id)
        _check_data(data)
        link = self.pool.get(peer_id)
        if link is None:
            link = await self.connect_to_peer(peer_id)
        await link.send(data)

    def metrics(self, peer_id: PeerId | str) -> ConnectionMetrics:
        return self.link(peer_id).metrics()
