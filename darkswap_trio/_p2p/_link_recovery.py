"""What P2PNetwork does for its PeerLinks' paths: the LinkOwner side of a link.

* ``accept_direct``: a direct connection another peer opened starts with the link
  HELLO (docs/PROTOCOL.md, "PeerLink protocol"); it joins the link that HELLO names.

* ``link_needs_relay``: the link has no path left (its direct path died and no
  circuit is open, or the relay went away). Open a fresh link circuit (LINK_HELLO
  first) and attach it, retrying while the relay is down or the peer has not
  re-registered yet. Both sides may do this at once; the side with the higher PeerId
  waits a moment first (usually the other side's circuit arrives meanwhile) and
  :meth:`PeerLink.attach_relay` settles any remaining tie deterministically.
* ``link_wants_direct``: after a downgrade, retry the direct path with backoff
  (``direct_retry_interval`` doubling to ``direct_retry_max_interval``). Only the
  side with the lower PeerId dials, so the two sides never race two offers; the far
  side's transport accepts and attaches the fresh connection to the existing link.

Every task runs in the network's nursery and ends when the link ends.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from .._config import Config
from .._relay_client._circuit import RelayCircuit
from .._relay_client._manager import NoRelayAvailable, RelayManager
from .._relay_client._session import RelayError
from .._service import NotStarted
from ..proto.link import RESET, parse_hello_untrusted
from ._direct import DirectConnection, WebRtcTransport
from ._network_events import ConnectionDowngraded, LinkInterrupted, LinkRestored, NetworkEvent
from ._peer_link import PeerLink

log = logging.getLogger("darkswap_trio.link_recovery")

_RELAY_RETRY_FIRST = 0.25  # seconds between circuit attempts (doubling) while the peer is missing
_RELAY_RETRY_MAX = 1.0  # so a link re-opens within ~1 s of both peers being back on the relay
_RELAY_WAIT_STEP = 2.0  # how often a waiting link re-checks for Failed relays
_HIGHER_ID_HEAD_START = 1.0  # the lower PeerId opens at once; the higher one waits this long


class LinkNetwork(Protocol):
    """What :class:`LinkRecovery` needs of its network (a P2PNetwork): its settings,
    relays and nursery, and the bookkeeping of links and their circuits."""

    @property
    def config(self) -> Config: ...
    @property
    def local_peer_id(self) -> str: ...
    @property
    def relay_manager(self) -> RelayManager: ...
    @property
    def _nursery(self) -> trio.Nursery | None: ...
    @property
    def _running(self) -> bool: ...
    def _best_transport(self) -> WebRtcTransport | None: ...
    def _link_for_incoming(
        self, peer_id: str, sender_id: bytes, receiver_id: bytes | None
    ) -> PeerLink | None: ...
    async def _pool_incoming(self, link: PeerLink, kind: str, relay_id: str | None) -> None: ...
    def _bind_relay(self, link: PeerLink, circuit: RelayCircuit) -> bool: ...
    def _link_circuit_closed(self, link: PeerLink, circuit: RelayCircuit) -> None: ...
    def _link_upgraded(self, link: PeerLink) -> None: ...
    def _link_closed(self, link: PeerLink, reason: str) -> None: ...
    def _emit_nowait(self, event: NetworkEvent) -> None: ...


class LinkRecovery:
    """Restores the paths of ``network``'s links (see the module docstring)."""

    def __init__(self, network: LinkNetwork) -> None:
        self.network = network
        self._relay_wanted: set[PeerLink] = set()
        self._direct_wanted: set[PeerLink] = set()

    def _start(self, fn: Callable[[PeerLink], Awaitable[None]], link: PeerLink) -> None:
        nursery = self.network._nursery
        if nursery is not None and self.network._running:
            nursery.start_soon(fn, link)

    # -- LinkOwner ------------------------------------------------------------------

    def link_needs_relay(self, link: PeerLink) -> None:
        if link in self._relay_wanted or not self.network.config.p2p.enable_relay:
            return
        self._relay_wanted.add(link)
        self._start(self._restore_relay, link)

    def link_wants_direct(self, link: PeerLink) -> None:
        p2p = self.network.config.p2p
        if (
            link in self._direct_wanted
            or not p2p.enable_direct
            or self.network.local_peer_id > link.peer_id
        ):
            return
        self._direct_wanted.add(link)
        self._start(self._restore_direct, link)

    async def accept_direct(self, connection: DirectConnection) -> None:
        """Attach a direct connection another peer opened to the link its HELLO names."""
        network = self.network
        hello = None
        with trio.move_on_after(network.config.p2p.direct_connect_timeout):
            try:
                hello = parse_hello_untrusted(await connection.channel.receive())
            except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        link = None if hello is None else network._link_for_incoming(connection.peer_id, *hello)
        if link is None or not link.attach_direct(connection, accepted=True):
            if hello is not None and hello[1] is not None:
                with trio.move_on_after(1):
                    try:
                        await connection.channel.send(bytes([RESET]))
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
            await connection.aclose()
            return
        await network._pool_incoming(link, "direct", None)

    # -- tasks ------------------------------------------------------------------------

    async def _restore_relay(self, link: PeerLink) -> None:
        manager = self.network.relay_manager
        delay = _RELAY_RETRY_FIRST
        # After a relay outage both sides need a circuit: once the relay is back, the
        # higher PeerId gives the lower one a head start. A lost direct path is not
        # waited on: the application's stall counts.
        head_start = link.interrupted and self.network.local_peer_id > link.peer_id
        try:
            while not link.closed and not link.has_relay and not link.has_direct:
                if not manager.connected_servers():
                    # A relay that gave up reconnecting (Failed) is retried while a
                    # link waits for it: the link's recovery timeout bounds this.
                    manager.retry()
                    with trio.move_on_after(_RELAY_WAIT_STEP):
                        await manager.wait_connected()
                    continue
                if head_start:
                    head_start = False
                    with trio.move_on_after(_HIGHER_ID_HEAD_START):
                        while not link.has_relay and not link.closed:
                            await link._wait_change()
                    continue
                try:
                    circuit = await manager.open_circuit(link.peer_id)
                    await circuit.send(link.hello)
                except NotStarted:
                    return  # the network is shutting down: nothing to reopen for
                except (
                    RelayError,
                    NoRelayAvailable,
                    trio.BrokenResourceError,
                    trio.ClosedResourceError,
                ) as exc:
                    log.info("reopening a circuit to %s failed: %r", link.peer_id, exc)
                    await trio.sleep(delay)
                    delay = min(2 * delay, _RELAY_RETRY_MAX)
                    continue
                if not self.network._bind_relay(link, circuit):
                    await circuit.aclose()
                    self.network._link_circuit_closed(link, circuit)
        finally:
            self._relay_wanted.discard(link)

    async def _restore_direct(self, link: PeerLink) -> None:
        p2p = self.network.config.p2p
        delay = p2p.direct_retry_interval
        try:
            while not link.closed and not link.has_direct:
                await trio.sleep(delay)
                delay = min(2 * delay, p2p.direct_retry_max_interval)
                if link.closed or link.has_direct:
                    return
                transport = self.network._best_transport()
                if transport is None:
                    continue
                try:
                    connection = await transport.connect(
                        link.peer_id, timeout=p2p.direct_connect_timeout
                    )
                except (
                    trio.BrokenResourceError,
                    trio.BusyResourceError,
                    RuntimeError,
                    RelayError,
                ) as exc:
                    log.info("direct retry to %s failed: %r", link.peer_id, exc)
                    continue
                try:
                    await connection.channel.send(link.hello)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    await connection.aclose()
                    continue
                if not link.attach_direct(connection):
                    await connection.aclose()
        finally:
            self._direct_wanted.discard(link)

    # -- the rest of LinkOwner: network bookkeeping and events ------------------------

    def link_upgraded(self, link: PeerLink) -> None:
        self.network._link_upgraded(link)

    def link_downgraded(self, link: PeerLink, reason: str) -> None:
        self.network._emit_nowait(ConnectionDowngraded(link.peer_id, reason))

    def link_interrupted(self, link: PeerLink, reason: str) -> None:
        self.network._emit_nowait(LinkInterrupted(link.peer_id, reason))

    def link_restored(self, link: PeerLink) -> None:
        self.network._emit_nowait(LinkRestored(link.peer_id, link.connection_type))

    def link_circuit_closed(self, link: PeerLink, circuit: RelayCircuit) -> None:
        self.network._link_circuit_closed(link, circuit)

    def link_closed(self, link: PeerLink, reason: str) -> None:
        self.network._link_closed(link, reason)
