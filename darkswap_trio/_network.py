"""P2PNetwork: the peer-facing API (the guide's P2PNetwork), relay path.

It owns a RelayManager and turns its events into peer-level ones: a peer is connected
while at least one circuit to it is open. The direct WebRTC path plugs in beside the
relay path (see docs/PROTOCOL.md and the README for what exists today).
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass

import trio

from ._config import Config, P2PConfig
from ._identity import Keypair, load_or_create_keypair
from ._relay_manager import (
    CircuitClosed,
    CircuitCreated,
    DataReceived,
    RelayEvent,
    RelayManager,
    RelayManagerNotStarted,
)
from ._relay_session import TokenProvider
from ._service import TaskOwner

log = logging.getLogger("darkswap_trio.network")


@dataclass(frozen=True)
class PeerConnected:
    peer_id: str
    connection_type: str  # "relay" (or "direct")
    relay_id: str | None = None


@dataclass(frozen=True)
class PeerDisconnected:
    peer_id: str
    reason: str


NetworkEvent = PeerConnected | PeerDisconnected | DataReceived | RelayEvent


class P2PNetwork(TaskOwner):
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
            keypair, self.config.p2p.relay_addresses(), self.config.relay_manager,
            token_provider=token_provider, ssl_context=ssl_context,
            event_buffer=self.config.p2p.event_buffer,
        )
        self._event_send, self.events = trio.open_memory_channel[NetworkEvent](self.config.p2p.event_buffer)
        self._peer_circuits: dict[str, set[str]] = {}
        self._running = False
        self._scope: trio.CancelScope | None = None

    # -- lifecycle ----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[P2PNetwork] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as self._scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.relay_manager.run)
                nursery.start_soon(self._translate_events)
                self._running = True
                try:
                    task_status.started(self)
                    await trio.sleep_forever()
                finally:
                    self._running = False
                    with trio.CancelScope(shield=True), trio.move_on_after(2):
                        await self.relay_manager.stop()
                    nursery.cancel_scope.cancel()

    async def stop(self) -> None:
        """Close every circuit and relay session; idempotent."""
        if self._scope is not None:
            self._scope.cancel()
        await trio.lowlevel.checkpoint()

    def _require_running(self) -> None:
        if not self._running:
            raise RelayManagerNotStarted("P2PNetwork is not running; use 'async with' or nursery.start(network.run)")

    # -- relay API ------------------------------------------------------------------------

    @property
    def connected_peers(self) -> list[str]:
        return sorted(peer for peer, circuits in self._peer_circuits.items() if circuits)

    async def wait_relay_connected(self, count: int = 1) -> None:
        await self.relay_manager.wait_connected(count)

    async def connect_via_relay(self, peer_id: str) -> str:
        """Open a relay circuit to ``peer_id``; its data arrives as DataReceived events."""
        self._require_running()
        return await self.relay_manager.connect_to_peer(peer_id)

    async def send_via_relay(self, peer_id: str, relay_id: str, data: bytes) -> None:
        self._require_running()
        await self.relay_manager.send_data(peer_id, relay_id, data)

    async def close_relay(self, relay_id: str) -> None:
        self._require_running()
        await self.relay_manager.close_relay(relay_id)

    # -- events ---------------------------------------------------------------------------

    async def _translate_events(self) -> None:
        async for event in self.relay_manager.events:
            if isinstance(event, CircuitCreated):
                circuits = self._peer_circuits.setdefault(event.peer_id, set())
                first = not circuits
                circuits.add(event.relay_id)
                await self._event_send.send(event)
                if first:
                    await self._event_send.send(PeerConnected(event.peer_id, "relay", event.relay_id))
            elif isinstance(event, CircuitClosed):
                circuits = self._peer_circuits.get(event.peer_id, set())
                circuits.discard(event.relay_id)
                await self._event_send.send(event)
                if not circuits:
                    self._peer_circuits.pop(event.peer_id, None)
                    await self._event_send.send(PeerDisconnected(event.peer_id, event.reason))
            else:
                await self._event_send.send(event)
