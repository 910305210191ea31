"""The relay's routing table: registered sessions and the circuit core, glued together.

:class:`RelayRouter` knows which session is registered under which peer id, owns the
sans-IO :class:`~darkswap_trio.proto.circuits.CircuitTable`, and turns the table's events into
frames queued on the right session (:meth:`RelayRouter.dispatch`). Everything here is
synchronous except :meth:`RelayRouter.run_circuit_timer`, the one task of the circuit
nursery, which sleeps until the table's next deadline (duration / stall) and applies it.

Sessions and the router talk one way: the router sees a session only as a
:class:`~relay._session_handle.SessionHandle` (queue a frame, close), and sessions change
the router's state only through its methods (:meth:`~RelayRouter.session_opened`,
:meth:`~RelayRouter.register`, :meth:`~RelayRouter.deliver`, ...). This module imports
no session code.

Queuing on a session never blocks: circuit data is bounded by the credit windows, control
frames by the session's bounded control queue (a session that lets it fill is closed as
stalled). That keeps one slow reader from blocking anyone else.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import uuid
from typing import TYPE_CHECKING

import trio

from darkswap_trio import Keypair
from darkswap_trio.proto.circuits import (
    CircuitClosed,
    CircuitOpened,
    CircuitRefused,
    CircuitTable,
    CloseReason,
    DeliverCredit,
    DeliverData,
    Outcome,
)
from darkswap_trio.proto.signaling import CircuitLimits, Error, RelayResponse

from ._abuse import AbuseGuard
from ._config import RelayConfig
from ._legacy import INCOMPATIBLE_PEER, circuit_announcement, incompatible, incompatible_reason
from ._logging import session_context
from ._metrics import RelayMetrics
from ._outbox import ByteCount
from ._rendezvous import TopicLimit, TopicRendezvous
from ._session_handle import CLOSE_GOING_AWAY, CLOSE_NORMAL
from ._turn_credentials import TurnCredentialIssuer
from .cluster._mesh_ends import CrossNodeEnds, CrossNodeOpener, RemoteEnd

if TYPE_CHECKING:
    from collections.abc import Set

    from ._cluster_port import ClusterPort
    from ._session_handle import SessionHandle

logger = logging.getLogger("relay.router")
circuit_logger = logging.getLogger("relay.circuits")


def relay_id_text(relay_id: bytes) -> str:
    """The canonical lowercase UUID text of a 16-byte relay id."""
    return str(uuid.UUID(bytes=relay_id))


def parse_relay_id(text: str) -> bytes | None:
    """16 bytes of a relay id given as UUID text, or None if it is not one."""
    try:
        return uuid.UUID(text).bytes
    except ValueError:
        return None


def limits_from_config(config: RelayConfig) -> CircuitLimits:
    lim = config.limits
    return CircuitLimits(
        duration=float(lim.circuit_duration),
        data=int(lim.circuit_bytes),
        bandwidth=int(lim.circuit_bandwidth),
        window=int(lim.circuit_window),
        max_data_frame=int(lim.circuit_max_data_frame),
    )


class RelayRouter:
    """Registered sessions by peer id, the circuit table, and the server-wide counters.

    The public attributes are the server-wide services sessions share, set once here:
    ``config`` (its limits change in place on reload), ``keypair``, ``metrics``,
    ``abuse`` (per-IP and relay-wide message budgets) and ``buffered`` (bytes inside the
    relay: frames waiting in session send queues or being written, plus legacy frames
    held by a reader waiting for credit). Its state is private: use the methods.
    """

    def __init__(self, config: RelayConfig, keypair: Keypair, metrics: RelayMetrics) -> None:
        self.config = config
        self.keypair = keypair
        self.relay_peer_id = str(keypair.peer_id)
        # The PeerId this node proves on mesh links: the relay's, except for a worker
        # of ``--workers`` (workers share the relay key; relay._worker_slot).
        self.node_peer_id = self.relay_peer_id
        self.metrics = metrics
        lim = config.limits
        self.abuse = AbuseGuard(lim)
        self.buffered = ByteCount()
        self._rendezvous = TopicRendezvous(  # docs/PROTOCOL.md 14.6
            ttl=lim.topic_ttl,
            sample=lim.topic_sample,
            max_topics_per_peer=lim.max_topics_per_peer,
            max_peers_per_topic=lim.max_peers_per_topic,
            max_topics=lim.max_topics,
        )
        # Set by serve_relay once TURN is bound (its URIs name the bound ports).
        self.turn_issuer: TurnCredentialIssuer | None = None
        self._circuit_limits = limits_from_config(config)
        self._table = CircuitTable(
            limits=self._circuit_limits,
            max_circuits=lim.max_circuits,
            max_circuits_per_peer=lim.max_circuits_per_peer,
            stall_timeout=lim.circuit_stall_timeout,
            max_circuits_per_pair=lim.max_circuits_per_pair,
            idle_timeout=lim.circuit_idle_timeout,
            window_budget=lim.circuit_window_budget,
            min_window=lim.circuit_window_min,
        )
        self._registered: dict[str, SessionHandle] = {}
        # This relay as a node of a cluster (relay.cluster); None: a single relay.
        self.cluster: ClusterPort | None = None
        self._sessions: set[SessionHandle] = set()
        self._shutting_down = False
        self._timer_wakeup = trio.Event()
        self._timer_deadline = math.inf
        self._sessions_closed = trio.Event()
        self._opened_at: dict[bytes, float] = {}  # relay id -> trio time (histogram, log)
        # Relay cluster (relay.cluster): the far ends of cross-node circuits, by relay id,
        # and who opens circuits to peers registered on other nodes (None: single node).
        self.mesh_ends = CrossNodeEnds(self, self._table, self._registered)
        self.remote_ends: dict[bytes, RemoteEnd] = self.mesh_ends.by_id
        self.cross_node: CrossNodeOpener | None = None
        # The limits every Registered message announces (built once, not per peer).
        self._announced_limits = {
            "max_frame_size": lim.max_frame_size,
            "max_circuits_per_peer": lim.max_circuits_per_peer,
            "max_circuits_per_pair": lim.max_circuits_per_pair,
            "circuit_idle_timeout": lim.circuit_idle_timeout,
            "messages_per_second": lim.messages_per_peer_rate,
            "idle_timeout": lim.idle_timeout,
        }

    # -- for the server ---------------------------------------------------------------

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    @property
    def sessions(self) -> Set[SessionHandle]:
        """The open sessions, registered or not (read-only)."""
        return self._sessions

    @property
    def queued_bytes(self) -> int:
        return self.buffered.value

    def counts(self) -> tuple[int, int, int]:
        """(open sessions, registered peers, open circuits)."""
        return len(self._sessions), len(self._registered), len(self._table)

    def begin_shutdown(self) -> None:
        """Refuse new sessions and registrations, close every circuit and tell every
        session ``server_shutdown`` (idempotent)."""
        if self._shutting_down:
            return
        self._shutting_down = True
        self._table.close_all(CloseReason.SERVER_SHUTDOWN)
        self.dispatch()
        for session in list(self._sessions):
            session.close(CLOSE_GOING_AWAY, Error("the server is stopping", "server_shutdown"))

    async def wait_sessions_closed(self) -> None:
        """Return once no session is open (sessions opened meanwhile are waited for too)."""
        while self._sessions:
            self._sessions_closed = trio.Event()
            await self._sessions_closed.wait()

    # -- session lifecycle and registration ------------------------------------------

    def session_opened(self, session: SessionHandle) -> bool:
        """A session starts; False if the server is stopping (then it must close)."""
        self._sessions.add(session)
        return not self._shutting_down

    def session_ended(self, session: SessionHandle, reason: CloseReason) -> None:
        """The session is gone (its task is ending)."""
        self.release_peer(session, reason)
        self._sessions.discard(session)
        if not self._sessions:
            self._sessions_closed.set()

    def register(self, session: SessionHandle, peer_id: str) -> bool:
        """Bind ``peer_id`` to ``session``; False if another live session holds it."""
        if peer_id in self._registered or self._shutting_down:
            return False
        self._registered[peer_id] = session
        context = session_context.get()
        if context is not None:
            self.metrics.registration_seconds.observe(trio.current_time() - context.accepted_at)
        return True

    def apply_limits(self) -> None:
        """``config.limits`` changed (reload): take it for new circuits and checks."""
        lim = self.config.limits
        # window, max_data_frame and bandwidth stay: existing circuits depend on them.
        self._circuit_limits = dataclasses.replace(
            self._circuit_limits, duration=float(lim.circuit_duration), data=int(lim.circuit_bytes)
        )
        table = self._table
        table.limits = self._circuit_limits
        table.max_circuits = lim.max_circuits
        table.max_circuits_per_peer = lim.max_circuits_per_peer
        table.windows.budget = lim.circuit_window_budget
        table.windows.min_window = lim.circuit_window_min
        table.max_circuits_per_pair = lim.max_circuits_per_pair
        table.stall_timeout = lim.circuit_stall_timeout
        table.idle_timeout = lim.circuit_idle_timeout
        rendezvous = self._rendezvous
        rendezvous.ttl = lim.topic_ttl
        rendezvous.sample = lim.topic_sample
        rendezvous.max_topics_per_peer = lim.max_topics_per_peer
        rendezvous.max_peers_per_topic = lim.max_peers_per_topic
        rendezvous.max_topics = lim.max_topics
        self._announced_limits.update(
            max_circuits_per_peer=lim.max_circuits_per_peer,
            max_circuits_per_pair=lim.max_circuits_per_pair,
            circuit_idle_timeout=lim.circuit_idle_timeout,
            messages_per_second=lim.messages_per_peer_rate,
            idle_timeout=lim.idle_timeout,
        )
        self._timer_wakeup.set()  # deadlines may have moved

    def release_peer(self, session: SessionHandle, reason: CloseReason) -> None:
        """The session stopped reading: free its peer id and close its circuits
        (the other ends are told ``reason``). Idempotent."""
        peer_id = session.peer_id
        if peer_id is not None and self._registered.get(peer_id) is session:
            del self._registered[peer_id]
            if self.cluster is not None:
                self.cluster.peer_released(peer_id)
            self._rendezvous.drop_peer(peer_id)
            self._count_topics()
            self._table.disconnect(peer_id, reason)
            self.dispatch()

    def lookup(self, peer_id: str) -> SessionHandle | None:
        return self._registered.get(peer_id)

    def registered_peer_ids(self) -> Set[str]:
        """The peer ids registered here (a live read-only view)."""
        return self._registered.keys()

    async def register_contended(self, session: SessionHandle, peer_id: str) -> str | None:
        """:meth:`register` refused ``peer_id``: None if ``session`` now holds it after
        all, else the refusal's error code (``peer_id_in_use``, ``server_shutdown``).

        A proven owner of ``peer_id`` may replace a holder that no longer answers.
        Without this, a peer whose connection died silently (NAT rebinding, a laptop
        waking up) could not register again until the idle timeout. In open mode there
        is no proof of ownership, so replacing would be a hijack: never done there.
        """
        if await self._replace_stale_holder(session, peer_id):
            return None
        return "server_shutdown" if self._shutting_down else "peer_id_in_use"

    async def _replace_stale_holder(self, session: SessionHandle, peer_id: str) -> bool:
        holder = self.lookup(peer_id)
        if holder is None or self.config.auth.mode == "open" or self._shutting_down:
            return False
        if await holder.probe_alive(self.config.limits.duplicate_probe_timeout):
            return False
        logger.info("peer %s re-registered; replacing its silent session", peer_id)
        self.metrics.limit_hit("session_replaced")
        holder.close(
            CLOSE_NORMAL,
            Error("a new session of this peer replaced this one", "session_replaced"),
        )
        self.release_peer(holder, CloseReason.PEER_DISCONNECTED)
        return self.register(session, peer_id)

    # -- what sessions may ask ---------------------------------------------------------

    def circuit_limits(self) -> CircuitLimits:
        """The limits of new circuits (window, max_data_frame and bandwidth never change)."""
        return self._circuit_limits

    def announced_limits(self) -> dict[str, int | float]:
        """The limits a Registered message announces (do not modify)."""
        return self._announced_limits

    def has_circuit(self, relay_id: bytes, peer_id: str) -> bool:
        return relay_id in self._table.circuits_of(peer_id)

    @property
    def registered_count(self) -> int:
        return len(self._registered)

    def register_topic(
        self, peer_id: str, topic: str, now: float, *, bounded: bool = True
    ) -> list[str]:
        """Record ``peer_id``'s interest in ``topic``; a sample of other live subscribers
        here (raises TopicLimit when a rendezvous bound is hit, counted on ``limit_hits``).
        In a cluster the shared store checks the bounds and this keeps a local copy
        (``bounded=False``): the gauges, and the answer while Redis is unreachable."""
        try:
            return self._rendezvous.register(
                peer_id, topic, now, live=lambda p: p in self._registered, bounded=bounded
            )
        except TopicLimit as exc:
            self.metrics.limit_hit(exc.limit)
            raise
        finally:
            self._count_topics()

    def unregister_topic(self, peer_id: str, topic: str) -> None:
        self._rendezvous.unregister(peer_id, topic)
        self._count_topics()

    def _count_topics(self) -> None:
        self.metrics.topics.set(len(self._rendezvous))
        self.metrics.topic_registrations.set(self._rendezvous.registrations)

    def topic_registrations(self) -> list[tuple[str, str]]:
        """(peer id, topic) of every registration of this node's peers."""
        return self._rendezvous.entries()

    def topics_of(self, peer_id: str) -> list[str]:
        """The topics ``peer_id`` is registered for (for operators and tests)."""
        return list(self._rendezvous.topics_of(peer_id))

    def carries_circuits(self, peer_id: str) -> bool:
        """Whether ``peer_id`` is an end of any open circuit."""
        return bool(self._table.circuits_of(peer_id))

    def circuit_ends(self, relay_id: bytes) -> tuple[str, str] | None:
        """(requester, target) of an open circuit, or None."""
        return self._table.ends(relay_id)

    def credit_balance(self, relay_id: bytes, peer_id: str) -> int | None:
        """The credit ``peer_id`` has to send on ``relay_id`` (None: no such circuit)."""
        return self._table.balance(relay_id, peer_id)

    def send_delay(self, relay_id: bytes, peer_id: str, size: int, now: float) -> float:
        """Seconds ``peer_id`` must wait before sending ``size`` bytes (bandwidth limit)."""
        return self._table.send_delay(relay_id, peer_id, size, now)

    # -- circuits -------------------------------------------------------------------

    def request_circuit(self, requester: str, target: str) -> None:
        """Handle a RelayRequest whose ``from`` is already checked."""
        target_session = self._registered.get(target)
        requester_session = self._registered.get(requester)
        if target != requester and target_session is None:
            if self.cross_node is not None and requester_session is not None:
                self.cross_node.request(requester, target)  # maybe on another node
                return
            self.refuse_circuit(
                requester, target, "unknown_peer", f"peer {target} is not connected"
            )
        elif (
            target_session is not None
            and requester_session is not None
            and incompatible(requester_session, target_session)
        ):
            self.refuse_circuit(requester, target, INCOMPATIBLE_PEER, incompatible_reason(target))
        else:
            self._table.request(requester, target, uuid.uuid4().bytes, trio.current_time())
            self.dispatch()

    def refuse_circuit(self, requester: str, target: str, code: str, message: str) -> None:
        """A refusal decided before the circuit table (which refuses the rest)."""
        self.metrics.circuits_refused.labels(reason=code).inc()
        session = self._registered.get(requester)
        if session is not None:
            session.send_control(
                RelayResponse(relay_id="", accepted=False, error=message, code=code, to=target)
            )

    def credit(self, relay_id: bytes, receiver: str, increment: int, now: float) -> bool:
        """``receiver`` (or the relay for a legacy one) grants credit; False if the
        circuit is unknown to it."""
        if self._table.credit(relay_id, receiver, increment, now) is not Outcome.OK:
            return False
        self.dispatch()
        return True

    def deliver(
        self,
        sender: str,
        relay_id: bytes,
        payload: bytes | memoryview,
        now: float,
        frame: bytes | None = None,
    ) -> bool:
        """Send ``payload`` on a circuit of ``sender``; False if it has no such circuit.

        ``frame``: the sender's DATA frame of ``payload``, forwarded as is.
        """
        if self._table.data(relay_id, sender, payload, now, frame=frame) is not Outcome.OK:
            return False
        self.dispatch()
        return True

    def close_circuit(self, relay_id: bytes, peer_id: str) -> bool:
        """CloseRelay from ``peer_id``; False if it has no such circuit."""
        if self._table.close(relay_id, peer_id) is not Outcome.OK:
            return False
        self.dispatch()
        return True

    def dispatch(self) -> None:
        """Turn every pending circuit event into frames queued on the sessions concerned."""
        table = self._table
        while (event := table.poll_event()) is not None:
            if isinstance(event, DeliverData):
                remote = self.remote_ends.get(event.relay_id) if self.remote_ends else None
                receiver = (
                    remote
                    if remote is not None and remote.peer_id == event.receiver
                    else self._registered.get(event.receiver)
                )
                if receiver is not None:
                    receiver.send_circuit_data(
                        event.relay_id, event.sender, event.payload, event.frame
                    )
                self.metrics.add_relayed_bytes(len(event.payload))
            elif isinstance(event, DeliverCredit):
                remote = self.remote_ends.get(event.relay_id) if self.remote_ends else None
                sender = (
                    remote
                    if remote is not None and remote.peer_id == event.to
                    else self._registered.get(event.to)
                )
                if sender is not None:
                    sender.credit_granted(event.relay_id, event.increment)
            elif isinstance(event, CircuitOpened):
                self._opened(event)
            elif isinstance(event, CircuitClosed):
                text = relay_id_text(event.relay_id)
                remote = self.remote_ends.pop(event.relay_id, None) if self.remote_ends else None
                for peer, reason in event.notify:
                    if remote is not None and peer == remote.peer_id:
                        remote.circuit_closed(event.relay_id, text, reason)
                    elif remote is not None and remote.pending:
                        self.mesh_ends.refuse_pending(peer, remote, reason)
                    elif (session := self._registered.get(peer)) is not None:
                        session.circuit_closed(event.relay_id, text, reason)
                if remote is not None:
                    remote.ended()
                self.metrics.circuits_closed.labels(reason=event.reason.value).inc()
                self.metrics.circuits_active.set(len(table))
                self._log_closed(event, text)
                if event.reason in (
                    CloseReason.DATA_LIMIT,
                    CloseReason.DURATION_LIMIT,
                    CloseReason.CREDIT_EXCEEDED,
                    CloseReason.STALLED,
                    CloseReason.IDLE,
                ):
                    self.metrics.limit_hit(f"circuit_{event.reason.value}")
            elif isinstance(event, CircuitRefused):
                self.mesh_ends.last_refusal = (event.code, event.message)
                self.metrics.circuits_refused.labels(reason=event.code).inc()
                if event.code == "too_many_circuits":
                    self.metrics.limit_hit("circuits")
                elif event.code == "too_many_circuits_to_peer":
                    self.metrics.limit_hit("circuits_per_pair")
                session = self._registered.get(event.requester)
                if session is not None:
                    session.send_control(
                        RelayResponse(
                            relay_id="",
                            accepted=False,
                            error=event.message,
                            code=event.code,
                            to=event.target,
                        )
                    )
        # O(1): wake the circuit timer only if a deadline earlier than its own appeared.
        deadline = table.take_new_deadline()
        if deadline is not None and deadline < self._timer_deadline:
            self._timer_wakeup.set()

    def _log_closed(self, event: CircuitClosed, text: str) -> None:
        opened = self._opened_at.pop(event.relay_id, None)
        duration = None if opened is None else trio.current_time() - opened
        if duration is not None:
            self.metrics.circuit_open_seconds.observe(duration)
        circuit_logger.info(
            "circuit closed",
            extra={
                "relay_id": text,
                "requester": event.requester,
                "target": event.target,
                "bytes": event.carried,
                "duration": None if duration is None else round(duration, 3),
                "reason": event.reason.value,
            },
        )

    def _opened(self, event: CircuitOpened) -> None:
        text = relay_id_text(event.relay_id)
        self._opened_at[event.relay_id] = trio.current_time()
        circuit_logger.info(
            "circuit open",
            extra={"relay_id": text, "requester": event.requester, "target": event.target},
        )
        self.metrics.circuits_opened.inc()
        self.metrics.circuits_active.set(len(self._table))
        remote = self.remote_ends.get(event.relay_id) if self.remote_ends else None
        requester = target = None
        if remote is None:
            requester = self._registered.get(event.requester)
            target = self._registered.get(event.target)
        else:  # cross-node: the far node gets MeshOpen (we hold the requester), else
            # MeshOpened (we hold the target); our requester is answered on MeshOpened
            remote.circuit_opened(event)
            if remote.peer_id == event.requester:
                target = self._registered.get(event.target)
        if requester is not None:
            requester.send_control(
                RelayResponse(
                    relay_id=text,
                    accepted=True,
                    error=None,
                    to=event.target,
                    limits=event.limits,
                )
            )
        if target is not None:
            for announcement in circuit_announcement(target, event.requester, text, event.limits):
                target.send_control(announcement)

    async def run_circuit_timer(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Apply circuit duration and stall deadlines as they come (the circuit nursery's task)."""
        task_status.started()
        while True:
            self._table.take_new_deadline()  # poll_timeout() below covers them all
            deadline = self._table.poll_timeout()
            self._timer_deadline = math.inf if deadline is None else deadline
            self._timer_wakeup = trio.Event()
            with trio.move_on_at(self._timer_deadline):
                await self._timer_wakeup.wait()
            self._table.handle_timeout(trio.current_time())
            self.dispatch()
