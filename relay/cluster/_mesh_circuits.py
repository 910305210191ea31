"""Cross-node circuits: a circuit whose two ends are registered on different relay nodes.

Both nodes keep the circuit in their own :class:`~darkswap_trio.proto.circuits.CircuitTable`
under the same ``relay_id``; on each, the far peer's end is a :class:`RemoteEnd` (the
mesh link to the far node), which the router uses where it would use that peer's
session. So credit, limits and stall rules hold on both hops: a DATA frame consumes
credit on the entry node and again on the exit node, CREDIT travels back the same way,
and a node never holds more than a window per direction per circuit, whatever its
link or its peers do.

Opening (docs/PROTOCOL.md 15.4), on the requester's node A: locate the target's node B
(:class:`~relay.cluster._mesh_locator.PeerLocator`), get the mesh link to B, open the
circuit in A's table (A's caps for the requester), send ``MeshOpen``; the requester's
``RelayResponse`` waits for B's ``MeshOpened`` (B's caps for the target, B told the
target ``DataChannel``) or ``MeshRefused``. :class:`CrossNodeCircuits` runs that as one
task per request in the mesh nursery, bounded in number and in time. On B, a MeshOpen is
taken only once the directory confirms its requester is registered on A
(:class:`~relay.cluster._mesh_requesters.RequesterCheck`), also one bounded task each.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from darkswap_trio.proto.circuits import CircuitOpened
from darkswap_trio.proto.signaling import encode_circuit_credit, encode_circuit_data

from ._mesh_links import MeshUnreachable
from ._mesh_requesters import RequesterCheck
from ._mesh_wire import MeshClose, MeshOpen, MeshOpened, MeshRefused

if TYPE_CHECKING:
    from relay._router import RelayRouter

    from ._mesh_link import MeshLink
    from ._mesh_links import MeshLinks
    from ._mesh_locator import PeerLocator

logger = logging.getLogger("relay.cluster.mesh")


class RemoteEnd:
    """The far end of one cross-node circuit, as the router sees it (a SessionHandle
    for what circuits need: data, credit, close)."""

    __slots__ = ("peer_id", "link", "pending", "refusal", "silent", "answered")

    def __init__(self, peer_id: str, link: MeshLink) -> None:
        self.peer_id = peer_id
        self.link = link
        # Requester's node only: open here, not yet answered by the far node (the
        # requester has not been told the relay id).
        self.pending = False
        self.refusal: tuple[str, str] | None = None  # (code, message) when refused
        self.silent = False  # the far node closed it (or is gone): do not tell it again
        self.answered = trio.Event()

    def attach(self) -> None:
        """The router took it as the end of a circuit (until :meth:`ended`)."""
        self.link.circuits += 1

    def circuit_opened(self, event: CircuitOpened) -> None:
        if event.target == self.peer_id:  # we are the requester's node: ask the far node
            self.pending = True
            self.link.send_control(
                MeshOpen(event.relay_id, event.requester, event.target, event.limits)
            )
        else:
            self.link.send_control(MeshOpened(event.relay_id, event.limits))

    def send_circuit_data(
        self, relay_id: bytes, sender: str, payload: bytes | memoryview, frame: bytes | None = None
    ) -> None:
        self.link.send_data(
            relay_id, encode_circuit_data(relay_id, bytes(payload)) if frame is None else frame
        )

    def credit_granted(self, relay_id: bytes, increment: int) -> None:
        self.link.send_data(relay_id, encode_circuit_credit(relay_id, increment))

    def circuit_closed(self, relay_id: bytes, text: str, reason: str) -> None:
        if not self.silent:
            # Our shutdown is, for the far peer, the loss of the node holding its circuit.
            far = "node_lost" if reason == "server_shutdown" else reason
            self.link.send_control(MeshClose(relay_id, far))

    def ended(self) -> None:
        """The circuit is gone from the table (called once)."""
        self.answered.set()
        self.link.circuit_ended()


class CrossNodeCircuits:
    """The requester's side of opening cross-node circuits, and the target's side of
    ``MeshOpen`` (the router calls :meth:`request`; links call :meth:`on_open`)."""

    def __init__(
        self,
        router: RelayRouter,
        links: MeshLinks,
        locator: PeerLocator,
        nursery: trio.Nursery,
        *,
        open_timeout: float,
        max_pending: int,
    ) -> None:
        self._router = router
        self._links = links
        self._locator = locator
        self._nursery = nursery
        self._me = router.node_peer_id
        self.open_timeout = open_timeout
        self.max_pending = max_pending
        self.pending = 0
        self._pending_of: dict[str, int] = {}  # requester -> its requests being opened
        # The far node's side: MeshOpens whose requester the directory is checking.
        self.requesters = RequesterCheck(locator, timeout=open_timeout)
        self._checking: dict[bytes, MeshLink] = {}

    def request(self, requester: str, target: str) -> None:
        """RelayRequest for a peer not registered here (never blocks)."""
        # One peer cannot hold every slot: at most its circuit cap of opens at once.
        per_peer = self._router.config.limits.max_circuits_per_peer or self.max_pending
        mine = self._pending_of.get(requester, 0)
        if self.pending >= self.max_pending or mine >= per_peer:
            self._router.refuse_circuit(
                requester, target, "too_many_circuits", "too many circuits being opened"
            )
            return
        self.pending += 1
        self._pending_of[requester] = mine + 1
        self._nursery.start_soon(self._open, requester, target)

    async def _open(self, requester: str, target: str) -> None:
        router = self._router
        end: RemoteEnd | None = None
        relay_id: bytes | None = None
        try:
            with trio.move_on_after(self.open_timeout):
                try:
                    address = await self._locator.locate(target)
                except Exception as exc:  # the directory is down: local traffic goes on
                    logger.warning("cannot locate %s: %r", target, exc)
                    router.refuse_circuit(
                        requester,
                        target,
                        "cluster_unavailable",
                        "the cluster directory is unavailable",
                    )
                    return
                if address is not None and address.node_peer_id == self._me:
                    if router.lookup(target) is not None:  # it registered here meanwhile
                        if router.lookup(requester) is not None:
                            router.request_circuit(requester, target)
                        return
                    address = None  # the directory is behind: it left this node
                if address is None:
                    router.refuse_circuit(
                        requester, target, "unknown_peer", f"peer {target} is not connected"
                    )
                    return
                try:
                    link = await self._links.link_to(address)
                except MeshUnreachable as exc:
                    router.refuse_circuit(requester, target, "node_unreachable", str(exc))
                    return
                end = RemoteEnd(target, link)
                relay_id = router.mesh_ends.open_cross_node(requester, target, end)
                if relay_id is None:
                    return  # refused here (told), or the requester left
                await end.answered.wait()
                return
            # Timed out.
            if end is None:
                router.refuse_circuit(
                    requester, target, "node_unreachable", "the peer's relay node did not answer"
                )
            elif relay_id is not None and end.pending:
                router.mesh_ends.cross_node_refused(
                    relay_id,
                    "node_unreachable",
                    "the peer's relay node did not answer",
                    end.link,
                    tell_far=True,  # it may open there later: close it then
                )
        finally:
            self.pending -= 1
            left = self._pending_of[requester] - 1
            if left:
                self._pending_of[requester] = left
            else:
                del self._pending_of[requester]

    def on_open(self, link: MeshLink, msg: MeshOpen) -> None:
        """The far node asks us to open the target's end of a circuit: once the
        directory confirms the requester is registered on that node (never blocks)."""
        if msg.relay_id in self._checking:
            link.send_control(MeshRefused(msg.relay_id, "bad_frame", "relay id already in use"))
            return
        if len(self._checking) >= self.max_pending:
            link.send_control(
                MeshRefused(msg.relay_id, "too_many_circuits", "too many circuits being opened")
            )
            return
        self._checking[msg.relay_id] = link
        self._nursery.start_soon(self._accept, link, msg)

    def on_close(self, link: MeshLink, msg: MeshClose) -> None:
        """MeshClose: for a circuit still being checked, it is not opened at all."""
        if self._checking.get(msg.relay_id) is link:
            del self._checking[msg.relay_id]
        else:
            self._router.mesh_ends.cross_node_closed(msg.relay_id, msg.reason, link)

    async def _accept(self, link: MeshLink, msg: MeshOpen) -> None:
        try:
            refusal = await self.requesters.refusal(link.node, msg.from_)
        finally:
            closed = self._checking.get(msg.relay_id) is not link
            if not closed:
                del self._checking[msg.relay_id]
        if closed or link.broken:
            return
        if refusal is None:
            end = RemoteEnd(msg.from_, link)
            refusal = self._router.mesh_ends.accept_cross_node(
                msg.relay_id, msg.from_, msg.to, msg.limits, end
            )
        if refusal is not None:
            link.send_control(MeshRefused(msg.relay_id, *refusal))
