"""The mesh links of one relay node: one per node pair, dialed on demand, with backoff.

:meth:`MeshLinks.link_to` returns the link to a node, dialing it when there is none
(concurrent callers wait for the same dial); a failed dial makes the next attempt to
that node wait (exponential backoff with jitter, up to ``max_backoff``), so a dead
node is not hammered by every circuit request. :meth:`MeshLinks.accept` serves a link
another node dialed (the ``/mesh`` path of the signaling listener).

One link per pair: when two nodes dial each other at the same time both links come
up; both nodes keep the one dialed by the smaller PeerId for new circuits and retire
the other (closed once no circuit uses it), so they agree without another message.
"""

from __future__ import annotations

import logging
import math
import random
import ssl
from typing import TYPE_CHECKING, Any

import trio

from darkswap_trio import Keypair
from darkswap_trio.websocket import (
    WebSocketConnection,
    WebSocketHandshakeError,
    WebSocketRequest,
    open_websocket,
)
from relay._session_handle import CLOSE_NORMAL, CLOSE_POLICY

from ._mesh_handshake import MeshAcceptor, MeshDialer
from ._mesh_link import MeshLink, OpenHandler
from ._mesh_tls import certificate_is_node
from ._mesh_wire import (
    MESH_PATH,
    MeshAuth,
    MeshChallenge,
    MeshError,
    MeshHello,
    MeshMessage,
    MeshParseError,
    MeshReady,
    decode_mesh_untrusted,
    encode_mesh,
)

if TYPE_CHECKING:
    from relay._router import RelayRouter

    from ._mesh_locator import NodeAuthority
    from ._types import NodeAddress

logger = logging.getLogger("relay.cluster.mesh")

HANDSHAKE_TIMEOUT = 5.0
FIRST_BACKOFF = 0.1
_DIAL_ERRORS = (
    OSError,
    trio.TooSlowError,
    WebSocketHandshakeError,
    MeshParseError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.EndOfChannel,
)


class MeshUnreachable(Exception):
    """No mesh link to a node could be established (the message says why)."""


class _Refused(Exception):
    """The handshake was refused (by either side); the message says why."""


async def _receive(ws: WebSocketConnection) -> MeshMessage:
    frame = await ws.receive()
    if not isinstance(frame, str):
        raise MeshParseError("binary frame during the handshake")
    return decode_mesh_untrusted(frame)


class MeshLinks:
    """This node's links to the other nodes of the cluster (see the module docstring)."""

    def __init__(
        self,
        router: RelayRouter,
        keypair: Keypair,
        nursery: trio.Nursery,
        *,
        secret: bytes,
        authority: NodeAuthority | None,
        link_timeout: float,
        max_backoff: float,
        max_message_size: int,
        client_tls: ssl.SSLContext | None = None,
    ) -> None:
        self._router = router
        self._keypair = keypair
        self._me = str(keypair.peer_id)
        self._nursery = nursery
        self._secret = secret
        self._authority = authority
        self.link_timeout = link_timeout
        self.max_backoff = max_backoff
        self._max_message_size = max_message_size
        self._client_tls = client_tls  # [mesh] tls: dial wss://, check the node's certificate
        self.cross: OpenHandler | None = None  # CrossNodeCircuits, set once both exist
        self._links: dict[str, MeshLink] = {}  # node PeerId -> the pair's link
        self._all: set[MeshLink] = set()
        self._dialing: dict[str, trio.Event] = {}
        self._backoff: dict[str, tuple[float, float]] = {}  # node -> (not before, delay)
        self._rng = random.Random()
        self.dials = self.dial_failures = self.refused = self.wrong_certificates = 0

    def links(self) -> list[MeshLink]:
        """Every live link (the pair's links and retired ones still carrying circuits)."""
        return [link for link in self._all if not link.broken]

    def link(self, node_peer_id: str) -> MeshLink | None:
        link = self._links.get(node_peer_id)
        return None if link is None or link.broken else link

    async def link_to(self, address: NodeAddress) -> MeshLink:
        """The link to ``address`` (dialed if needed). Raises MeshUnreachable."""
        node = address.node_peer_id
        while True:
            link = self.link(node)
            if link is not None:
                return link
            dialing = self._dialing.get(node)
            if dialing is None:
                break
            await dialing.wait()
        done = self._dialing[node] = trio.Event()
        try:
            not_before, delay = self._backoff.get(node, (-math.inf, 0.0))
            await trio.sleep_until(not_before)
            self.dials += 1
            try:
                link = await self._nursery.start(self._dial, address)
            except (_Refused, *_DIAL_ERRORS) as exc:
                self.dial_failures += 1
                delay = min(self.max_backoff, max(FIRST_BACKOFF, 2 * delay))
                jittered = delay * (0.5 + self._rng.random() / 2)
                self._backoff[node] = (trio.current_time() + jittered, delay)
                raise MeshUnreachable(
                    f"relay node {address.node_id} ({address.advertise}): {exc or type(exc).__name__}"
                ) from exc
            self._backoff.pop(node, None)
            # A simultaneous dial from the other side may have won (see _adopt).
            return self.link(node) or link
        finally:
            del self._dialing[node]
            done.set()

    async def _dial(self, address: NodeAddress, *, task_status: trio.TaskStatus[MeshLink]) -> None:
        """Dial, authenticate, then serve the link until it ends (in the mesh nursery)."""
        tls = self._client_tls
        url = f"{'ws' if tls is None else 'wss'}://{address.advertise}{MESH_PATH}"
        dialer = MeshDialer(self._keypair, self._secret, address.node_peer_id)
        async with open_websocket(
            url,
            ssl_context=tls,
            connect_timeout=HANDSHAKE_TIMEOUT,
            max_message_size=self._max_message_size,
        ) as ws:
            # Before a word of the handshake: TLS must have reached the node's own key.
            if tls is not None and not certificate_is_node(
                ws.peer_certificate(), address.node_peer_id
            ):
                self.wrong_certificates += 1
                logger.warning(
                    "mesh node %s (%s) presented a certificate without its key %s: refused",
                    address.node_id,
                    address.advertise,
                    address.node_peer_id,
                )
                raise _Refused("wrong_certificate: the TLS certificate is not the node's key")
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                await ws.send(encode_mesh(dialer.hello()))
                msg = await _receive(ws)
                if isinstance(msg, MeshError):
                    raise _Refused(f"refused: {msg.code}: {msg.message}")
                if not isinstance(msg, MeshChallenge):
                    raise _Refused(f"unexpected {type(msg).__name__}")
                reply = dialer.challenge(msg)
                await ws.send(encode_mesh(reply))
                if isinstance(reply, MeshError):
                    await ws.aclose(CLOSE_POLICY, reply.code)
                    raise _Refused(f"{reply.code}: {reply.message}")
                msg = await _receive(ws)
                if not isinstance(msg, MeshReady):
                    detail = f"{msg.code}: {msg.message}" if isinstance(msg, MeshError) else ""
                    raise _Refused(f"refused: {detail or type(msg).__name__}")
            link = self._adopt(ws, address.node_peer_id, self._me)
            task_status.started(link)
            try:
                await link.run()
            finally:
                self._forget(link)

    async def accept(self, request: WebSocketRequest, ticket: Any = None) -> None:
        """Serve a link another node dialed (in the session nursery), after its handshake."""
        ws = await request.accept()
        acceptor = MeshAcceptor(self._keypair, self._secret)
        node: str | None = None
        with trio.move_on_after(HANDSHAKE_TIMEOUT):
            try:
                node = await self._handshake(ws, acceptor)
            except (MeshParseError, trio.EndOfChannel, trio.BrokenResourceError) as exc:
                logger.info("mesh handshake from %s failed: %r", request.remote_address, exc)
                node = None
        if node is None:
            self.refused += 1
            with trio.move_on_after(1):
                await ws.aclose(CLOSE_POLICY, "mesh handshake failed")
            return
        link = self._adopt(ws, node, node)
        if ticket is not None:
            ticket.session = link  # no longer a pending connection (relay._admission)
        try:
            await link.run()
        finally:
            self._forget(link)

    async def _handshake(self, ws: WebSocketConnection, acceptor: MeshAcceptor) -> str | None:
        msg = await _receive(ws)
        step: MeshMessage = (
            acceptor.hello(msg)
            if isinstance(msg, MeshHello)
            else MeshError("bad_frame", "expected MeshHello")
        )
        await ws.send(encode_mesh(step))
        if isinstance(step, MeshError):
            return None
        msg = await _receive(ws)
        step = (
            acceptor.auth(msg)
            if isinstance(msg, MeshAuth)
            else MeshError("bad_frame", "expected MeshAuth")
        )
        node = acceptor.node
        if isinstance(step, MeshReady) and node is not None and self._authority is not None:
            try:
                known = await self._authority.is_cluster_node(node)
            except Exception as exc:  # the directory is down: no new links meanwhile
                logger.warning("cannot check mesh node %s: %r", node, exc)
                step = MeshError("cluster_unavailable", "the cluster directory is unavailable")
            else:
                if not known:
                    step = MeshError("not_in_cluster", "this node is not in the cluster directory")
        await ws.send(encode_mesh(step))
        if isinstance(step, MeshError):
            logger.warning("mesh link refused: %s: %s", step.code, step.message)
            return None
        return node

    def _adopt(self, ws: WebSocketConnection, node: str, dialer: str) -> MeshLink:
        assert self.cross is not None
        link = MeshLink(ws, node, dialer, self._router, self.cross, link_timeout=self.link_timeout)
        self._all.add(link)
        current = self.link(node)
        # Both nodes prefer the link dialed by the smaller PeerId: they agree silently.
        if current is None or (link.dialer < current.dialer):
            self._links[node] = link
            loser = current
        else:
            loser = link
        if loser is not None:
            loser.retired = True
            if loser.circuits <= 0:
                loser.close(CLOSE_NORMAL, "duplicate link")
        logger.info("mesh link to %s up (dialed by %s)", node, dialer)
        return link

    def _forget(self, link: MeshLink) -> None:
        self._all.discard(link)
        if self._links.get(link.node) is link:
            del self._links[link.node]

    def close_all(self) -> None:
        for link in list(self._all):
            link.close()
