"""One authenticated mesh link to another relay node, after its handshake (PROTOCOL.md 15.3).

A :class:`MeshLink` runs in the nursery of whoever made it (the mesh nursery for a link
this node dialed, the session nursery for one it accepted): a reader and the send path
of a signaling session (:class:`~relay._session_writer.SessionWriter`: written at once
when nothing waits, else one FIFO). The FIFO is bounded like a session's: circuit data
by the credit windows of the circuits through the link, control frames by a frame
count and a byte budget (a link that lets it fill is closed). The reader never blocks
on a peer: every frame becomes a synchronous router call that queues on a session.

Liveness: every frame resets a deadline of ``link_timeout``; a MeshPing goes out every
third of it. A link silent for ``link_timeout`` gets one more third of it (frames that
waited while this node's event loop was stalled arrive then) before it is dead. When the link ends (closed, broken, silent), every circuit through it is
closed with reason ``node_lost`` on this node (:meth:`CrossNodeEnds.link_lost`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

import trio

from darkswap_trio.proto.errors import SignalingParseError
from darkswap_trio.proto.signaling import (
    DATA_HEADER_LENGTH,
    FRAME_DATA,
    CircuitCredit,
    decode_binary_untrusted,
)
from darkswap_trio.websocket import WebSocketConnection
from relay._session_handle import CLOSE_GOING_AWAY, CLOSE_NORMAL, CLOSE_POLICY
from relay._session_writer import SessionWriter

from ._mesh_wire import (
    MeshClose,
    MeshError,
    MeshMessage,
    MeshOpen,
    MeshOpened,
    MeshParseError,
    MeshPing,
    MeshPong,
    MeshRefused,
    decode_mesh_untrusted,
    encode_mesh,
)

if TYPE_CHECKING:
    from relay._router import RelayRouter

logger = logging.getLogger("relay.cluster.mesh")

# Control frames waiting on a link: a circuit has at most two outstanding (its open or
# its answer, and its close), so the bound follows the relay's circuit cap.
MIN_CONTROL_FRAMES = 4096
MAX_CONTROL_BYTES = 8 << 20
_GONE = (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError)


class OpenHandler(Protocol):
    """Who opens the target's end of a circuit a far node asks for (CrossNodeCircuits)."""

    def on_open(self, link: MeshLink, msg: MeshOpen) -> None: ...
    def on_close(self, link: MeshLink, msg: MeshClose) -> None: ...


def _no_legacy(relay_id: bytes, size: int) -> None:  # links carry binary frames only
    pass


class MeshLink:
    """A link to node ``node`` (its relay PeerId), dialed by node ``dialer``."""

    registered = True  # for relay._admission: an accepted link is not a pending connection

    def __init__(
        self,
        ws: WebSocketConnection,
        node: str,
        dialer: str,
        router: RelayRouter,
        circuits: OpenHandler,
        *,
        link_timeout: float,
    ) -> None:
        self.ws = ws
        self.node = node
        self.dialer = dialer
        self.circuits = 0  # cross-node circuits through this link (RemoteEnd.attach/ended)
        self.broken = False  # ended: no new circuits on it
        self.retired = False  # not the node pair's link any more: close when unused
        self._router = router
        self._cross = circuits
        self._timeout = link_timeout
        self._scope = trio.CancelScope()
        self._writer = SessionWriter(
            ws,
            router.buffered,
            router.metrics,
            max_control_frames=max(MIN_CONTROL_FRAMES, 2 * router.config.limits.max_circuits + 64),
            max_control_bytes=MAX_CONTROL_BYTES,
            on_broken=self._stop,
            on_legacy_written=_no_legacy,
        )
        self._why = "closed"
        self._done = False  # run() returned: nothing may be queued any more

    def __repr__(self) -> str:
        return f"<MeshLink to {self.node[-8:]} dialed by {self.dialer[-8:]}>"

    # -- outbound (never blocks) ---------------------------------------------------------

    def send_control(self, msg: MeshMessage) -> None:
        writer = self._writer
        if writer.close_code is not None:
            return
        text = encode_mesh(msg)
        if not (writer.write_now(text) or writer.out.push_control(text)):
            self.close(CLOSE_POLICY, "stalled: control queue full")

    def send_data(self, relay_id: bytes, frame: bytes) -> None:
        if self._writer.close_code is None:
            self._writer.send_data(relay_id, frame)

    def circuit_ended(self) -> None:
        self.circuits -= 1
        if self.retired and self.circuits <= 0:
            self.close(CLOSE_NORMAL, "duplicate link unused")

    def close(self, code: int = CLOSE_GOING_AWAY, why: str = "closed") -> None:
        """End the link (its circuits close with node_lost on both nodes). Idempotent."""
        if self._writer.close_code is None and not self._done:
            self._why = why
            self._writer.close(code, None, why[:120])
        self._stop()

    def _stop(self) -> None:
        self.broken = True
        self._scope.cancel()  # the read loop's current scope

    # -- the link's life -----------------------------------------------------------------

    async def run(self) -> None:
        """Serve the link until it ends; never raises for the other node's misbehaviour."""
        try:
            async with trio.open_nursery() as nursery:
                try:
                    self._writer.open(nursery)
                    nursery.start_soon(self._keepalive)
                    try:
                        await self._read_loop()
                    except Exception:
                        logger.exception("mesh link to %s crashed", self.node)
                        self._why = "internal error"
                    finally:
                        self.broken = True
                        self._router.mesh_ends.link_lost(self)
                    logger.info("mesh link to %s ended: %s", self.node, self._why)
                    await self._writer.finish()
                finally:
                    # The nursery takes no new task from here: nothing may be queued.
                    self._done = True
                    self._writer.close_code = self._writer.close_code or CLOSE_NORMAL
                    nursery.cancel_scope.cancel()
        finally:
            self.broken = self._done = True
            self._writer.out.clear()

    async def _keepalive(self) -> None:
        while True:
            await trio.sleep(self._timeout / 3)
            self.send_control(MeshPing())

    async def _read_loop(self) -> None:
        ws = self.ws
        router = self._router
        clock = trio.current_time
        last_frame = clock()
        last_chance = False
        while not self.broken:
            # One scope per idle period, its deadline fixed: moving it on every frame
            # costs a deadline-heap update per frame. When it passes after frames came,
            # it is set again from the last one. Silent past it: one more third of the
            # timeout (if this loop itself was stalled, the other node's frames are
            # waiting in the socket and arrive at once).
            if last_chance:
                deadline = clock() + self._timeout / 3
            else:
                deadline = last_frame + self._timeout
            self._scope = scope = trio.CancelScope(deadline=deadline)
            with scope:
                while True:
                    try:
                        frame = await ws.receive()
                    except _GONE:
                        self._why = "connection lost"
                        return
                    last_frame = clock()
                    if type(frame) is bytes:
                        self._on_binary(frame, router, last_frame)
                    else:
                        assert isinstance(frame, str)
                        self._on_text(frame)
            if self.broken:
                return
            if clock() < last_frame + self._timeout:
                last_chance = False  # frames came meanwhile: not silent
                continue
            if last_chance:
                self._why = f"silent for {self._timeout * 4 / 3:.1f} s"
                return
            last_chance = True

    def _on_binary(self, frame: bytes, router: RelayRouter, now: float) -> None:
        ends = router.remote_ends
        if len(frame) >= DATA_HEADER_LENGTH and frame[0] == FRAME_DATA:
            relay_id = frame[1:DATA_HEADER_LENGTH]
            end = ends.get(relay_id)
            # Data for a circuit closed here meanwhile (a close is on its way): dropped.
            if end is not None and end.link is self:
                payload = memoryview(frame)[DATA_HEADER_LENGTH:]
                router.deliver(end.peer_id, relay_id, payload, now, frame)
            return
        try:
            parsed = decode_binary_untrusted(frame)
        except SignalingParseError as exc:
            self._protocol_error(str(exc))
            return
        assert isinstance(parsed, CircuitCredit)
        end = ends.get(parsed.relay_id)
        if end is not None and end.link is self:
            router.credit(parsed.relay_id, end.peer_id, parsed.increment, now)

    def _on_text(self, frame: str) -> None:
        try:
            msg = decode_mesh_untrusted(frame)
        except MeshParseError as exc:
            self._protocol_error(str(exc))
            return
        ends = self._router.mesh_ends
        if isinstance(msg, MeshOpen):
            self._cross.on_open(self, msg)
        elif isinstance(msg, MeshOpened):
            ends.cross_node_opened(msg.relay_id, msg.limits, self)
        elif isinstance(msg, MeshRefused):
            ends.cross_node_refused(msg.relay_id, msg.code, msg.message, self)
        elif isinstance(msg, MeshClose):
            self._cross.on_close(self, msg)
        elif isinstance(msg, MeshPing):
            self.send_control(MeshPong())
        elif isinstance(msg, MeshError):
            self._why = f"the other node: {msg.code}: {msg.message}"
            self._stop()
        elif not isinstance(msg, MeshPong):
            self._protocol_error(f"{type(msg).__name__} after the handshake")

    def _protocol_error(self, why: str) -> None:
        """Nodes of one cluster do not send bad frames: end the link, loudly."""
        logger.warning("mesh link to %s: protocol error: %s", self.node, why)
        self.send_control(MeshError("bad_frame", why[:200]))
        self.close(CLOSE_POLICY, f"protocol error: {why}")
