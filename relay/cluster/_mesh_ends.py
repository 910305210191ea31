"""The router's side of cross-node circuits: the far ends, by relay id, and what the
mesh may do to the circuit table (docs/PROTOCOL.md 15.4).

:class:`CrossNodeEnds` is part of :class:`~relay._router.RelayRouter` (it holds the
router's circuit table and registrations): the router's ``dispatch`` sends a cross-node
circuit's events for the far peer to its :class:`~relay.cluster._mesh_circuits.RemoteEnd`,
and the mesh links call the methods here when the far node answers, closes or is lost.
Everything is synchronous and never blocks.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import trio

from darkswap_trio.proto.circuits import CircuitOpened, CircuitTable, CloseReason
from darkswap_trio.proto.signaling import CircuitLimits, RelayResponse

if TYPE_CHECKING:
    from relay._session_handle import SessionHandle

# This module depends on no other relay module at all (the router imports it): the
# router and the far ends are seen through these protocols.
MeshLink = Any  # relay.cluster._mesh_link.MeshLink, compared by identity only


class RemoteEnd(Protocol):
    """The far end of a cross-node circuit (relay.cluster._mesh_circuits.RemoteEnd)."""

    peer_id: str
    link: MeshLink
    pending: bool
    refusal: tuple[str, str] | None
    silent: bool
    answered: trio.Event

    def attach(self) -> None: ...
    def ended(self) -> None: ...
    def circuit_opened(self, event: CircuitOpened) -> None: ...
    def send_circuit_data(
        self, relay_id: bytes, sender: str, payload: bytes | memoryview, frame: bytes | None = None
    ) -> None: ...
    def credit_granted(self, relay_id: bytes, increment: int) -> None: ...
    def circuit_closed(self, relay_id: bytes, text: str, reason: str) -> None: ...


class CrossNodeOpener(Protocol):
    """Opens circuits to peers on other nodes (relay.cluster._mesh_circuits)."""

    def request(self, requester: str, target: str) -> None: ...


class _Router(Protocol):
    @property
    def shutting_down(self) -> bool: ...
    @property
    def metrics(self) -> Any: ...
    def circuit_limits(self) -> CircuitLimits: ...
    def dispatch(self) -> None: ...


# What a far node may give as a refusal code: it becomes a RelayResponse code and a
# metric label, so it comes from this fixed set (anything else: "refused").
REFUSAL_CODES = frozenset(
    {
        "unknown_peer",
        "too_many_circuits",
        "too_many_circuits_to_peer",
        "self_circuit",
        "server_shutdown",
        "bad_frame",
        "node_unreachable",
        "cluster_unavailable",
        "incompatible_peer",
        "requester_not_on_node",
        "refused",
        *(reason.value for reason in CloseReason),
    }
)


def relay_id_text(relay_id: bytes) -> str:
    return str(uuid.UUID(bytes=relay_id))


def agreed_limits(a: CircuitLimits, b: CircuitLimits) -> CircuitLimits:
    """The tighter of two nodes' circuit limits, field by field (0 = unlimited).
    Raises ValueError when the result is not a usable window."""

    def tight(x: float, y: float) -> float:
        return max(x, y) if not (x and y) else min(x, y)

    agreed = CircuitLimits(
        duration=float(tight(a.duration, b.duration)),
        data=int(tight(a.data, b.data)),
        bandwidth=int(tight(a.bandwidth, b.bandwidth)),
        window=min(a.window, b.window),
        max_data_frame=min(a.max_data_frame, b.max_data_frame),
    )
    if agreed.max_data_frame <= 0 or agreed.window < agreed.max_data_frame:
        raise ValueError("circuit limits without a usable window")
    return agreed


class CrossNodeEnds:
    """The far ends of this node's cross-node circuits (see the module docstring)."""

    def __init__(
        self, router: _Router, table: CircuitTable, registered: Mapping[str, SessionHandle]
    ) -> None:
        self._router = router
        self._table = table
        self._registered = registered
        self.by_id: dict[bytes, RemoteEnd] = {}
        self.last_refusal: tuple[str, str] = ("", "")  # set by the router's dispatch

    def open_cross_node(self, requester: str, target: str, end: RemoteEnd) -> bytes | None:
        """The requester's node: open a circuit whose target end is ``end`` (on another
        node, asked by MeshOpen from the CircuitOpened event). Its relay id, or None if
        refused here (the requester is told) or the requester is gone."""
        if self._registered.get(requester) is None or self._router.shutting_down:
            return None
        relay_id = uuid.uuid4().bytes
        self.by_id[relay_id] = end
        end.attach()
        opened = self._table.request(requester, target, relay_id, trio.current_time())
        if not opened:
            del self.by_id[relay_id]
            end.ended()
        self._router.dispatch()
        return relay_id if opened else None

    def accept_cross_node(
        self, relay_id: bytes, requester: str, target: str, limits: CircuitLimits, end: RemoteEnd
    ) -> tuple[str, str] | None:
        """The target's node (MeshOpen): open the circuit with the requester's end at
        ``end``; None when opened (MeshOpened sent, target told), else (code, message)."""
        if self._router.shutting_down:
            return ("server_shutdown", "the server is stopping")
        if target not in self._registered:
            return ("unknown_peer", f"peer {target} is not connected")
        if relay_id in self._table or relay_id in self.by_id:
            return ("bad_frame", "relay id already in use")
        try:
            agreed = agreed_limits(limits, self._router.circuit_limits())
        except ValueError as exc:
            return ("bad_frame", str(exc))
        self.by_id[relay_id] = end
        end.attach()
        now = trio.current_time()
        opened = self._table.request(requester, target, relay_id, now, limits=agreed)
        if not opened:
            del self.by_id[relay_id]
            end.ended()
        self._router.dispatch()
        return None if opened else self.last_refusal

    def cross_node_opened(self, relay_id: bytes, limits: CircuitLimits, link: MeshLink) -> None:
        """MeshOpened: answer the requester, with the limits both nodes agreed on."""
        end = self.by_id.get(relay_id)
        ends = self._table.ends(relay_id)
        if end is None or end.link is not link or not end.pending or ends is None:
            return
        try:
            agreed = agreed_limits(limits, self._router.circuit_limits())
            self._table.narrow(relay_id, agreed, trio.current_time())
        except ValueError as exc:
            self.cross_node_refused(relay_id, "bad_frame", str(exc), link, tell_far=True)
            return
        end.pending = False
        end.answered.set()
        requester = self._registered.get(ends[0])
        if requester is not None:
            text = relay_id_text(relay_id)
            requester.send_control(
                RelayResponse(relay_id=text, accepted=True, error=None, to=ends[1], limits=agreed)
            )
        self._router.dispatch()

    def cross_node_refused(
        self, relay_id: bytes, code: str, message: str, link: MeshLink, *, tell_far: bool = False
    ) -> None:
        """MeshRefused, or no answer in time (``tell_far``: it may still open there)."""
        end = self.by_id.get(relay_id)
        if end is None or end.link is not link or not end.pending:
            return
        end.refusal = (code if code in REFUSAL_CODES else "refused", message)
        end.silent = not tell_far
        self._table.close_circuit(relay_id, CloseReason.CLOSED)
        self._router.dispatch()

    def cross_node_closed(self, relay_id: bytes, reason: str, link: MeshLink) -> None:
        """MeshClose: the far node closed the circuit; tell our end ``reason``."""
        end = self.by_id.get(relay_id)
        if end is None or end.link is not link:
            return  # closed here meanwhile
        end.silent = True
        try:
            why = CloseReason(reason)
        except ValueError:
            why = CloseReason.PROTOCOL_ERROR
        if end.pending:
            end.refusal = (why.value, f"the circuit closed: {why.value}")
        self._table.close_circuit(relay_id, why)
        self._router.dispatch()

    def link_lost(self, link: MeshLink) -> None:
        """A mesh link broke: close the circuits through it (``node_lost`` to our ends)."""
        for relay_id, end in list(self.by_id.items()):
            if end.link is link:
                end.silent = True
                if end.pending:
                    end.refusal = ("node_unreachable", "the peer's relay node is gone")
                self._table.close_circuit(relay_id, CloseReason.NODE_LOST)
        self._router.dispatch()

    def refuse_pending(self, requester: str, end: RemoteEnd, reason: str) -> None:
        """A cross-node circuit closed before the far node accepted it: its requester
        never learnt its relay id, so it is told of a refusal instead."""
        code, message = end.refusal or (reason, f"the circuit closed: {reason}")
        self._router.metrics.circuits_refused.labels(reason=code).inc()
        session = self._registered.get(requester)
        if session is not None:
            session.send_control(
                RelayResponse(relay_id="", accepted=False, error=message, code=code, to=end.peer_id)
            )
