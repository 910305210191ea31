"""The direct path's signaling: one WebRtcTransport per connected relay session.

A transport starts when its relay session connects and is forgotten when it goes, but
its direct connections outlive the session that signaled them (a relay restart must
not break direct links): the transport ends once the session is gone and they are
all closed. Its tasks run in the network's nursery.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import trio

from .._config import P2PConfig
from .._relay_client._manager import RelayManager
from .._relay_client._session import RelaySession
from ..proto import signaling as sig
from ..webrtc._peer_connection import PeerConnectionConfig
from ._direct import DirectConnection, WebRtcTransport

__all__ = ["DirectTransports"]


class DirectTransports:
    """The running transports by relay server id. ``on_connection`` gets every direct
    connection another peer opened; ``on_relay_error`` every Error frame of a session
    (an Offer the relay could not deliver ends that direct attempt at once)."""

    def __init__(
        self,
        manager: RelayManager,
        p2p: P2PConfig,
        peer_connection_config: PeerConnectionConfig,
        *,
        on_connection: Callable[[DirectConnection], None],
        on_relay_error: Callable[[sig.Error], None],
    ) -> None:
        self._manager = manager
        self._p2p = p2p
        self.peer_connection_config = peer_connection_config
        self._on_connection = on_connection
        self._on_relay_error = on_relay_error
        self._running: dict[str, tuple[WebRtcTransport, trio.CancelScope]] = {}
        self._changed = trio.Event()

    def __len__(self) -> int:
        return len(self._running)

    def __iter__(self) -> Iterator[WebRtcTransport]:
        return iter([transport for transport, _ in self._running.values()])

    async def wait_changed(self) -> None:
        """Wait until a transport starts."""
        await self._changed.wait()

    def best(self) -> WebRtcTransport | None:
        """The transport of the first connected relay that has one."""
        for server in self._manager.connected_servers():
            entry = self._running.get(server.id)
            if entry is not None:
                return entry[0]
        return None

    def start(self, server_id: str, nursery: trio.Nursery) -> None:
        session = self._manager.server(server_id).session
        p2p = self._p2p
        if not p2p.enable_direct or session is None:
            return
        self.stop(server_id)
        transport = WebRtcTransport(
            session,
            self.peer_connection_config,
            max_connections=p2p.max_connections,
            max_half_open=p2p.direct_max_half_open,
            answer_timeout=p2p.direct_answer_timeout,
            turn_from_relay=p2p.turn_from_relay,
            relay_only=p2p.ice_transport_policy == "relay",
        )
        nursery.start_soon(self._run, server_id, session, transport, trio.CancelScope())

    def stop(self, server_id: str) -> None:
        # Only forgotten: see the module docstring.
        self._running.pop(server_id, None)

    async def _run(
        self,
        server_id: str,
        session: RelaySession,
        transport: WebRtcTransport,
        scope: trio.CancelScope,
    ) -> None:
        with scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(transport.run)
                self._running[server_id] = (transport, scope)
                self._changed.set()
                self._changed = trio.Event()
                nursery.start_soon(self._accept, transport)
                nursery.start_soon(self._watch_errors, session)
                await session.wait_closed()
                if self._running.get(server_id, (None,))[0] is transport:
                    del self._running[server_id]
                await transport.wait_idle()
                nursery.cancel_scope.cancel()
        if self._running.get(server_id, (None,))[0] is transport:
            del self._running[server_id]

    async def _watch_errors(self, session: RelaySession) -> None:
        async for error in session.errors:
            self._on_relay_error(error)

    async def _accept(self, transport: WebRtcTransport) -> None:
        while True:
            self._on_connection(await transport.accept())
