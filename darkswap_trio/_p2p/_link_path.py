"""The parts of a PeerLink: its settings, statistics, owner interface and paths."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import trio

from .._relay_client._circuit import RelayCircuit
from ._direct import DirectConnection

if TYPE_CHECKING:
    from ._peer_link import PeerLink

_DIRECT_FRAME_CAP = 256 * 1024  # larger DATA frames only add SCTP reassembly latency
_RELAY_FRAME_FALLBACK = 16 * 1024  # a relay that announces no max_data_frame


@dataclass(frozen=True)
class LinkSettings:
    """Per-link protocol settings (from P2PConfig)."""

    max_message_size: int = 1 << 20
    window: int = 4 << 20
    ping_interval: float = 1.0
    path_timeout: float = 3.0
    recovery_timeout: float = 30.0


@dataclass(frozen=True)
class PeerLinkStatistics:
    """Counters of one link (a snapshot)."""

    peer_id: str
    connection_type: str
    unacked_bytes: int
    fragments_sent: int
    fragments_retransmitted: int
    bytes_retransmitted: int
    duplicates_dropped: int
    pings_sent: int
    upgrades: int
    downgrades: int
    interruptions: int  # times the link had no path at all


class LinkOwner(Protocol):
    """What a link needs from its owner (the network): path restoration and events."""

    def link_upgraded(self, link: PeerLink) -> None: ...
    def link_downgraded(self, link: PeerLink, reason: str) -> None: ...
    def link_interrupted(self, link: PeerLink, reason: str) -> None: ...
    def link_restored(self, link: PeerLink) -> None: ...
    def link_circuit_closed(self, link: PeerLink, circuit: RelayCircuit) -> None: ...
    def link_closed(self, link: PeerLink, reason: str) -> None: ...
    def link_needs_relay(self, link: PeerLink) -> None: ...
    def link_wants_direct(self, link: PeerLink) -> None: ...


class LinkPath:
    """One attached path: its channel, its tasks' cancel scope, its name in the core."""

    def __init__(
        self,
        name: str,
        kind: str,
        channel: RelayCircuit | DirectConnection,
        *,
        accepted: bool = False,
    ) -> None:
        self.accepted = accepted  # the far side opened it: our HELLO answers its HELLO
        self.name = name
        self.kind = kind
        self.channel = channel
        self.scope = trio.CancelScope()
        self.heard = False  # the far side sent us something on it
        self.reason = "path closed"

    async def send(self, frame: bytes) -> None:
        if isinstance(self.channel, RelayCircuit):
            await self.channel.send(frame)
        else:
            await self.channel.channel.send(frame)

    async def receive(self) -> bytes:
        if isinstance(self.channel, RelayCircuit):
            return await self.channel.receive()
        message = await self.channel.channel.receive()
        return message.encode() if isinstance(message, str) else message

    def frame_limit(self) -> int:
        """The largest frame this path carries: the circuit's max_data_frame, or the
        peer's a=max-message-size on the data channel (capped)."""
        if isinstance(self.channel, RelayCircuit):
            return self.channel.limits.max_data_frame or _RELAY_FRAME_FALLBACK
        remote = self.channel.peer_connection._core.remote_max_message_size or 65536
        return min(remote, _DIRECT_FRAME_CAP)

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            await self.channel.aclose()
