"""PeerLink: one logical, ordered message channel to a peer over relay and/or direct paths.

A link starts on whichever path is ready first and moves to the direct path when one
appears (the upgrade). Each direction switches on its own, and nothing is lost or
duplicated across the switch because every message travels on exactly one path and
the receiver is told where the relay part of the stream ends:

* The relay circuit of a link starts with :data:`LINK_HELLO` from its opener, so the
  accepting side can tell a link circuit from a plain ``connect_via_relay`` one.
* When a side starts sending on the direct data channel, its first direct message is
  a header carrying how many data messages it sent on the relay circuit (``N``). From
  then on it sends only on the direct path.
* The receiver delivers relay messages until it has delivered ``N`` of them, then
  delivers direct messages. Both paths are reliable and ordered, so this is the
  sender's order, each message once.
* A side closes the relay circuit only after it has switched (sent its header) and
  has delivered the far side's ``N`` relay messages: by then neither side will send
  on the circuit again, so closing it drops nothing.

A link with no direct path and a relay circuit that ends is over. There is no
downgrade: if the direct path breaks after the switch, the link ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from ._circuit import RelayCircuit
from ._metrics import ConnectionMetrics
from ._webrtc_transport import DirectConnection

log = logging.getLogger("darkswap_trio.peer_link")

LINK_HELLO = b"\x00darkswap-link/1\x00"
_HEADER = b"\x00darkswap-direct/1\x00"
_INBOX_SIZE = 64  # messages delivered to the link but not yet taken by receive()


def encode_switch_header(relay_messages: int) -> bytes:
    return _HEADER + relay_messages.to_bytes(8, "big")


def decode_switch_header(message: bytes | str) -> int:
    if not isinstance(message, bytes) or len(message) != len(_HEADER) + 8 or not message.startswith(_HEADER):
        raise trio.BrokenResourceError("direct path did not start with a link header")
    return int.from_bytes(message[len(_HEADER):], "big")


class PeerLink(trio.abc.Channel[bytes]):
    """An ordered, reliable message channel to ``peer_id`` (relay, then direct when it can).

    Made by :class:`~darkswap_trio.P2PNetwork` (``connect_to_peer`` / ``accept_peer``).
    ``send`` raises BusyResourceError for concurrent senders, ClosedResourceError after
    ``aclose`` and BrokenResourceError once every path is gone; ``receive`` raises
    EndOfChannel when the far end closed the link.
    """

    def __init__(
        self,
        peer_id: str,
        nursery: trio.Nursery,
        *,
        on_upgraded: Callable[[PeerLink], None] = lambda link: None,
        on_circuit_closed: Callable[[PeerLink, RelayCircuit], None] = lambda link, c: None,
        on_closed: Callable[[PeerLink], None] = lambda link: None,
        relay_rtt_ms: Callable[[], float | None] = lambda: None,
    ) -> None:
        self.peer_id = peer_id
        self._nursery = nursery
        self._on_upgraded = on_upgraded
        self._on_circuit_closed = on_circuit_closed
        self._on_closed = on_closed
        self.relay_rtt_ms = relay_rtt_ms
        self.circuit: RelayCircuit | None = None
        self.direct: DirectConnection | None = None
        self._path_ready = trio.Event()
        self._circuit_attached = trio.Event()
        self._direct_attached = trio.Event()
        self._header_known = trio.Event()
        self._direct_sending = False
        self._switched = trio.Event()
        self._relay_sent = 0  # data messages we sent on the circuit
        self._relay_received = 0  # data messages we delivered from the circuit
        self._remote_relay_total: int | None = None  # the far side's N, from its header
        self._retiring = False
        self._send_lock = trio.Lock()
        self._sending = False
        self._inbox_send, self._inbox = trio.open_memory_channel[bytes](_INBOX_SIZE)
        self._run_scope = trio.CancelScope()
        self._relay_scope = trio.CancelScope()
        self._closed = False  # aclose() was called
        self._ended = False  # the link is over (either side)
        self.upgraded = False
        self.established_at = trio.current_time()
        self.last_activity = self.established_at
        self.bytes_sent = self.bytes_received = 0
        self.messages_sent = self.messages_received = 0
        self.relay_bytes_sent = self.direct_bytes_sent = 0
        nursery.start_soon(self._run)

    # -- paths (called by the network) ----------------------------------------------

    def attach_relay(self, circuit: RelayCircuit) -> bool:
        """Use ``circuit`` as the relay path; False (and nothing done) if we have one."""
        if self._ended or (self.circuit is not None and not self.circuit.closed):
            return False
        self.circuit = circuit
        self._circuit_attached.set()
        self._path_ready.set()
        self._maybe_retire_relay()
        return True

    def attach_direct(self, connection: DirectConnection) -> bool:
        """Use ``connection`` as the direct path and switch sending to it."""
        if self._ended or self.direct is not None:
            return False
        self.direct = connection
        self._direct_attached.set()
        self._nursery.start_soon(self._switch_to_direct)
        return True

    async def wait_ready(self) -> None:
        """Wait until the link can send (a path is attached)."""
        await self._path_ready.wait()

    async def wait_direct(self) -> None:
        """Wait until the link sends on the direct path; BrokenResourceError if it ends first."""
        await self._switched.wait()
        if not self._direct_sending:
            raise trio.BrokenResourceError(f"link to {self.peer_id} ended before going direct")

    @property
    def has_direct(self) -> bool:
        return self.direct is not None

    # -- trio Channel ------------------------------------------------------------------

    @property
    def connection_type(self) -> str:
        return "direct" if self._direct_sending else "relay"

    @property
    def closed(self) -> bool:
        return self._ended

    async def send(self, value: bytes) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this link")
        data = bytes(value)
        self._sending = True
        try:
            async with self._send_lock:
                if self._closed:
                    raise trio.ClosedResourceError("link was closed locally")
                if self._direct_sending and self.direct is not None:
                    await self.direct.channel.send(data)
                    self.direct_bytes_sent += len(data)
                elif self.circuit is not None and not self._ended:
                    await self.circuit.send(data)
                    self._relay_sent += 1
                    self.relay_bytes_sent += len(data)
                else:
                    raise trio.BrokenResourceError(f"link to {self.peer_id} has no usable path")
                self.bytes_sent += len(data)
                self.messages_sent += 1
                self.last_activity = trio.current_time()
        finally:
            self._sending = False

    async def receive(self) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("link was closed locally")
        try:
            data = await self._inbox.receive()
        except trio.ClosedResourceError:
            raise trio.ClosedResourceError("link was closed locally") from None
        self.last_activity = trio.current_time()
        return data

    async def aclose(self) -> None:
        """Close both paths (the far end sees the link end). Idempotent."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        self._run_scope.cancel()
        await self._close_paths()
        self._end()
        self._inbox.close()

    def metrics(self) -> ConnectionMetrics:
        """A snapshot of this link's counters and of the active path's RTT and loss."""
        rtt = source = retrans = loss = None
        if self._direct_sending and self.direct is not None:
            sctp = self.direct.peer_connection.statistics().sctp
            if sctp is not None:
                if sctp.srtt is not None:
                    rtt, source = sctp.srtt * 1000.0, "sctp-srtt"
                elif sctp.heartbeat_rtt is not None:
                    rtt, source = sctp.heartbeat_rtt * 1000.0, "sctp-heartbeat"
                retrans = sctp.retransmissions + sctp.fast_retransmits
                loss = retrans / sctp.packets_sent if sctp.packets_sent else 0.0
        else:
            rtt = self.relay_rtt_ms()
            source = "relay-ping" if rtt is not None else None
        return ConnectionMetrics(
            peer_id=self.peer_id, connection_type=self.connection_type, rtt_ms=rtt,
            rtt_source=source, retransmissions=retrans, loss_rate=loss,
            bytes_sent=self.bytes_sent, bytes_received=self.bytes_received,
            messages_sent=self.messages_sent, messages_received=self.messages_received,
            relay_bytes_sent=self.relay_bytes_sent, direct_bytes_sent=self.direct_bytes_sent,
            established_at=self.established_at, last_activity=self.last_activity,
            upgraded=self.upgraded,
        )

    statistics = metrics

    def __repr__(self) -> str:
        return f"<PeerLink to {self.peer_id} {self.connection_type} closed={self.closed}>"

    # -- internals ---------------------------------------------------------------------

    async def _deliver(self, data: bytes) -> None:
        # Counted before the hand-over: send() yields, and receive() may return first.
        self.bytes_received += len(data)
        self.messages_received += 1
        self.last_activity = trio.current_time()
        await self._inbox_send.send(data)

    async def _switch_to_direct(self) -> None:
        direct = self.direct
        assert direct is not None
        try:
            async with self._send_lock:
                if self._ended:
                    return
                # The header is the sequencing point: relay messages counted in it were
                # all sent before it, everything after it goes direct.
                await direct.channel.send(encode_switch_header(self._relay_sent))
                self._direct_sending = True
                self._switched.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.info("direct path to %s failed before the switch: %r", self.peer_id, exc)
            return
        self._path_ready.set()
        if self.circuit is not None:
            self.upgraded = True
            self._on_upgraded(self)
        self._maybe_retire_relay()

    def _relay_done(self) -> bool:
        total = self._remote_relay_total
        return total is not None and self._relay_received >= total

    def _maybe_retire_relay(self) -> None:
        circuit = self.circuit
        if circuit is None or self._retiring or not self._direct_sending or not self._relay_done():
            return
        self._retiring = True
        self._nursery.start_soon(self._retire_relay, circuit)

    async def _retire_relay(self, circuit: RelayCircuit) -> None:
        await circuit.aclose()
        self._on_circuit_closed(self, circuit)
        self._retiring = False

    async def _run(self) -> None:
        try:
            with self._run_scope:
                # Errors are handled inside the nursery's tasks (never raised through it):
                # either phase failing cancels the other and the link ends below.
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read_header, nursery.cancel_scope)
                    if not await self._pump_relay():
                        nursery.cancel_scope.cancel()
                direct = self.direct
                if direct is None or not self._header_known.is_set():
                    return
                self._maybe_retire_relay()
                async for message in direct.channel:
                    await self._deliver(message.encode() if isinstance(message, str) else message)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.info("link to %s ended: %r", self.peer_id, exc)
        finally:
            self._end()
            self._inbox_send.close()
            if not self._closed:
                with trio.CancelScope(shield=True):
                    await self._close_paths()

    async def _pump_relay(self) -> bool:
        """Deliver the far side's relay messages until its header says they are all in.

        False means the link is over (the relay path ended and there is no direct one).
        """
        with self._relay_scope:
            while not self._relay_done():
                circuit = self.circuit
                if circuit is None:
                    await self._circuit_attached.wait()
                    continue
                try:
                    data = await circuit.receive()
                except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError):
                    self._on_circuit_closed(self, circuit)
                    if self.direct is None:
                        return False
                    break
                try:
                    await self._deliver(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return False  # our reader closed the link
                self._relay_received += 1
        await self._header_known.wait()
        if not self._relay_done():
            log.warning("relay path to %s ended before all its messages arrived", self.peer_id)
        return True

    async def _read_header(self, phase_scope: trio.CancelScope) -> None:
        await self._direct_attached.wait()
        direct = self.direct
        assert direct is not None
        try:
            header = await direct.channel.receive()
            self._remote_relay_total = decode_switch_header(header)
        except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.info("direct path to %s ended before its header: %r", self.peer_id, exc)
            phase_scope.cancel()
            return
        self._header_known.set()
        if self._relay_done():
            # The pump is waiting for a message that will never come: stop it. Only a
            # wait can be interrupted here, since all N messages have been delivered.
            self._relay_scope.cancel()
        self._maybe_retire_relay()

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._switched.set()  # wakes wait_direct(), which sees no switch
            self._on_closed(self)

    async def _close_paths(self) -> None:
        with trio.CancelScope(shield=True):
            if self.direct is not None:
                await self.direct.aclose()
            circuit = self.circuit
            if circuit is not None and not circuit.closed:
                with trio.move_on_after(2):
                    await circuit.aclose()
                self._on_circuit_closed(self, circuit)
