"""The data path of a peer connection: one UDP socket, two tasks, four sans-IO cores.

:class:`ConnectionCore` owns the ICE agent, the DTLS endpoint, the SCTP association and
the data channel registry. Two tasks drive it (both in the peer connection's nursery):

* :meth:`ConnectionCore.read_datagrams` waits until the socket is readable, then takes
  every datagram the kernel holds (non-blocking reads, coalesced runs with UDP GRO, see
  :mod:`._udp_offload`) and hands the batch to the core task through a bounded memory
  channel (full channel: the reader waits and the kernel drops, as UDP does);
* :meth:`ConnectionCore.run` is the only task that feeds the cores. Per wake-up it takes
  every batch already queued, pushes each datagram through ICE -> DTLS -> SCTP (the
  bulk: one application-data record straight to ``SctpAssociation.receive``), fires due
  timers, then flushes: SCTP packets -> ``DtlsEndpoint.encrypt`` -> batched sends to the
  selected pair (runs of equal-sized datagrams in one syscall with UDP GSO), with no
  task or channel between layers. Processing a whole batch before flushing lets SCTP
  bundle and delay its SACKs.

Application calls (send on a channel, open/close a channel, trickled candidates) are
synchronous calls into the cores from the caller's task -- trio tasks only switch at
``await``, so each call is atomic -- followed by a wake-up of the core task, which owns
all the I/O. The per-datagram cost is then the cores' Python plus a fraction of a
syscall, not a chain of task hops.
"""

from __future__ import annotations

import socket
from collections import deque

import trio

from ..proto import datachannel as dc
from ..proto import dtls as dtls_mod
from ..proto import sctp as sctp_mod
from ..proto.dtls import DtlsEndpoint, DtlsParseError
from ..proto.ice import (
    CandidateGathered,
    ConsentLost,
    DataReceived,
    GatheringComplete,
    IceAgent,
    IceState,
    IceStateChanged,
    SelectedPairChanged,
)
from ..proto.sctp import SctpAssociation
from ._datachannel import DataChannel
from ._early_dtls import EarlyDtls
from ._udp_offload import UdpBatchSocket

__all__ = ["ConnectionCore", "ConnectionFailed"]

_BATCH = 64  # datagrams per reader hand-over
_SOCKET_BUFFER = 4 << 20  # the kernel caps this at net.core.[rw]mem_max


class ConnectionFailed(Exception):
    """Why the connection failed or ended (the cause of BrokenResourceError)."""


class ConnectionCore:
    """See the module docstring. Created by the peer connection, one per socket."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        local_max_message_size: int,
        receive_buffer_size: int,
        high_water_mark: int,
        max_packets_per_sack: int | None = 16,
        inbox_size: int = 16,
        udp_offload: bool = True,
    ) -> None:
        self.sock = sock
        self.udp = UdpBatchSocket(sock, offload=udp_offload)
        self.max_packets_per_sack = max_packets_per_sack
        self.local_max_message_size = local_max_message_size
        self.receive_buffer_size = receive_buffer_size
        self.high_water_mark = high_water_mark
        self.ice: IceAgent | None = None
        self.dtls: DtlsEndpoint | None = None
        self.sctp: SctpAssociation | None = None
        self.registry: dc.DataChannelRegistry | None = None
        self.remote_max_message_size = 65536
        self.sctp_port = (5000, 5000)
        self.state = "new"
        self.failure: ConnectionFailed | None = None
        self.channels: dict[int, DataChannel] = {}
        self.accept_queue: deque[DataChannel] = deque()
        self.acceptors = trio.lowlevel.ParkingLot()
        self.state_changed = trio.lowlevel.ParkingLot()
        self.candidates: list[object] = []  # aioice Candidates, then None at the end
        self.candidates_changed = trio.lowlevel.ParkingLot()
        self.counts = {
            "datagrams_received": 0, "datagrams_sent": 0, "send_errors": 0,
            "protocol_violations": 0, "datagrams_dropped": 0,
            "datagrams_dropped_no_pair": 0,
        }
        self._inbox_send, self._inbox_receive = trio.open_memory_channel[
            list[tuple[bytes, tuple[str, int]]] | None
        ](inbox_size)
        self._wake_pending = False
        self._unsent: deque[tuple[bytes, tuple[str, int]]] = deque()
        self._stalled: sctp_mod.MessageReceived | None = None  # waits for a full channel
        # Streams whose outgoing reset is not answered yet: SCTP refuses new messages on
        # them, but the registry already reuses a closed channel's id; hold those here.
        self._resetting: dict[int, list[dc.SctpMessage]] = {}
        self._data_addr: tuple[str, int] | None = None  # the selected pair's remote address
        self._early = EarlyDtls()  # DTLS both ways before ICE selects a pair
        self.local_addr: tuple[str, int] | None = None  # None for a wildcard socket
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
            except OSError:
                pass  # a smaller buffer only costs throughput

    # ------------------------------------------------------------------ app side (sync)

    def wake(self) -> None:
        """Make the core task flush: called after any application call into the cores."""
        if not self._wake_pending:
            self._wake_pending = True
            try:
                self._inbox_send.send_nowait(None)
            except trio.WouldBlock:
                pass  # batches are queued: the core task runs and flushes anyway
            except trio.ClosedResourceError:
                pass

    def buffered_amount(self, stream_id: int) -> int:
        sctp = self.sctp
        amount = sctp.buffered_amount(stream_id) if sctp is not None else 0
        if self._resetting:
            amount += sum(len(m.payload) for m in self._resetting.get(stream_id, ()))
        return amount

    def send_message(self, stream_id: int, message: bytes | str) -> None:
        """Queue one user message into SCTP (MessageTooLarge above the peer's limit)."""
        registry = self.registry
        if registry is None:
            raise trio.ClosedResourceError("no connection")
        try:
            registry.send(stream_id, message)
        except dc.ChannelStateError as exc:
            raise trio.ClosedResourceError(str(exc)) from exc
        self._pump_registry(trio.current_time())
        self.wake()

    def open_channel(self, label: str, **options: object) -> DataChannel:
        registry = self.registry
        assert registry is not None
        stream_id = registry.open_channel(label, **options)  # type: ignore[arg-type]
        channel = self._add_channel(registry.channel(stream_id))
        self._pump_registry(trio.current_time())
        self.wake()
        return channel

    def close_channel(self, stream_id: int) -> None:
        if self.registry is not None and self.failure is None:
            self.registry.close_channel(stream_id)
            self._pump_registry(trio.current_time())
            self.wake()

    def channel_drained(self, stream_id: int) -> None:
        """A receiver took a message: resume SCTP delivery if it waited on this channel."""
        stalled = self._stalled
        if stalled is not None and stalled.stream_id == stream_id:
            self.wake()

    # ------------------------------------------------------------------ tasks

    async def read_datagrams(self) -> None:
        """The reader task: batches of (data, addr) into the core task's inbox."""
        sock = self.sock
        send = self._inbox_send
        receive_into = self.udp.receive_into
        while True:
            await trio.lowlevel.wait_readable(sock)
            batch: list[tuple[bytes, tuple[str, int]]] = []
            try:
                receive_into(batch, _BATCH)
            except OSError:
                self.counts["send_errors"] += 1  # an ICMP error reported on the socket
            if batch:
                await send.send(batch)

    async def run(self) -> None:
        """The core task: see the module docstring."""
        receive = self._inbox_receive
        item: list[tuple[bytes, tuple[str, int]]] | None = None
        while True:
            # One cancel scope until a timer's deadline passes: moving its deadline costs
            # less than a scope per wait, and the data path waits once per batch.
            with trio.CancelScope() as timers:
                while True:
                    now = trio.current_time()
                    self._wake_pending = False
                    if item:
                        self._receive_batch(item, now)
                    while True:  # everything already queued, before any flush
                        try:
                            item = receive.receive_nowait()
                        except trio.WouldBlock:
                            break
                        if item:
                            self._receive_batch(item, now)
                    item = None
                    self._fire_timers(now)
                    self.flush(now)
                    timers.deadline = self._next_deadline()
                    if self._unsent:
                        await trio.lowlevel.wait_writable(self.sock)
                        self._send_unsent()
                        continue
                    item = await receive.receive()

    # ------------------------------------------------------------------ input

    def _receive_batch(self, batch: list[tuple[bytes, tuple[str, int]]], now: float) -> None:
        ice = self.ice
        if ice is None:
            self.counts["datagrams_dropped"] += len(batch)
            return
        self.counts["datagrams_received"] += len(batch)
        local = self.local_addr
        data_addr = self._data_addr
        dtls, sctp = self.dtls, self.sctp
        for data, addr in batch:
            # Fast path, the bulk of the traffic: DTLS (RFC 7983: first byte 20..63) from
            # the selected pair's remote address, which ICE validated. ICE would only
            # check exactly that and pass it on (consent freshness is STUN-only).
            if addr == data_addr and data and 20 <= data[0] <= 63 and dtls is not None:
                try:
                    plaintext = dtls.receive_application_data(data, now)
                except DtlsParseError:
                    self.counts["datagrams_dropped"] += 1
                    continue
                if plaintext is not None and sctp is not None:
                    sctp.receive(plaintext, now)  # the bulk: one record, no events
                else:
                    self._drain_dtls(now)
                    sctp = self.sctp
            else:
                ice.receive(data, addr, now, local)
                self._drain_ice(now)
                data_addr, dtls, sctp = self._data_addr, self.dtls, self.sctp

    def _drain_ice(self, now: float) -> None:
        ice = self.ice
        assert ice is not None
        while (event := ice.poll_event()) is not None:
            if type(event) is DataReceived:
                dtls = self.dtls
                self._early.peer_addr = event.addr
                if dtls is None:
                    self._early.received.append(event.data)
                    continue
                try:
                    dtls.receive(event.data, now)
                except DtlsParseError:
                    self.counts["datagrams_dropped"] += 1
                    continue
                self._drain_dtls(now)
            elif type(event) is CandidateGathered:
                self.candidates.append(event.candidate)
                self.candidates_changed.unpark_all()
            elif type(event) is GatheringComplete:
                self.candidates.append(None)
                self.candidates_changed.unpark_all()
            elif type(event) is SelectedPairChanged:
                self._data_addr = (event.remote.host, event.remote.port)
                self.start_dtls_if_ready(now)
            elif type(event) is IceStateChanged:
                if event.state in (IceState.FAILED, IceState.CLOSED):
                    self._data_addr = None
                if event.state is IceState.FAILED:
                    self.fail("ICE failed: no candidate pair works")
                elif event.state is IceState.CHECKING and self.state == "new":
                    self._set_state("connecting")
            elif type(event) is ConsentLost:
                self._data_addr = None
                self.fail("ICE consent lost: the peer stopped answering")

    def start_dtls_if_ready(self, now: float) -> None:
        """Start DTLS once the role is known and ICE has a valid pair (or we are the
        server): a client need not wait for the nomination (RFC 8445 section 12.1)."""
        dtls, ice = self.dtls, self.ice
        if dtls is None or ice is None or dtls.state is not dtls_mod.DtlsState.NEW:
            return
        if dtls.role == "server" or ice.first_valid_pair() is not None:
            dtls.start(now)
            self.counts["datagrams_dropped"] += self._early.replay(dtls, now)
            self._drain_dtls(now)

    def _drain_dtls(self, now: float) -> None:
        dtls = self.dtls
        assert dtls is not None
        while (event := dtls.poll_event()) is not None:
            if type(event) is dtls_mod.DataReceived:
                sctp = self.sctp
                if sctp is not None:
                    sctp.receive(event.data, now)
            elif type(event) is dtls_mod.HandshakeComplete:
                self._start_sctp(now)
            elif type(event) is dtls_mod.Failed:
                self.fail(f"DTLS failed: {event.error}")
            elif type(event) is dtls_mod.Closed:
                self.fail(f"the peer closed DTLS: {event.reason}", state="disconnected")

    def _start_sctp(self, now: float) -> None:
        dtls = self.dtls
        assert dtls is not None
        remote = self.remote_max_message_size
        biggest = max(self.local_max_message_size, remote if remote else 1 << 24)
        self.sctp = SctpAssociation(
            dtls.role == "client",
            self.sctp_port[0],
            self.sctp_port[1],
            max_message_size=biggest,
            max_packet_size=min(1188, dtls.max_application_data()),
            receive_window=max(1 << 20, 2 * self.local_max_message_size),
            max_packets_per_sack=self.max_packets_per_sack,
        )
        self.registry = dc.DataChannelRegistry(
            dtls_client=dtls.role == "client",
            remote_max_message_size=remote,
            local_max_message_size=self.local_max_message_size,
        )
        self.sctp.connect(now)

    # ------------------------------------------------------------------ SCTP <-> DCEP

    def _drain_sctp(self, now: float) -> None:
        sctp, registry = self.sctp, self.registry
        if sctp is None or registry is None:
            return
        limit = self.receive_buffer_size
        while True:
            event = self._stalled
            if event is not None:
                self._stalled = None
            else:
                event = sctp.poll_event()
                if event is None:
                    break
            kind = type(event)
            if kind is sctp_mod.MessageReceived:
                channel = self.channels.get(event.stream_id)
                if channel is not None and not channel._room_for_more(limit):
                    self._stalled = event  # backpressure: SCTP keeps the rest in its window
                    break
                registry.receive_message(event.stream_id, event.ppid, event.data)
                self._drain_registry()
            elif kind is sctp_mod.BufferedAmountLow:
                channel = self.channels.get(event.stream_id)
                if channel is not None:
                    channel._on_buffered_low()
            elif kind is sctp_mod.StreamsReset:
                for stream_id in event.stream_ids:
                    registry.receive_stream_reset(stream_id)
                self._drain_registry()
            elif kind is sctp_mod.OutgoingStreamsReset:
                for stream_id in event.stream_ids:
                    for message in self._resetting.pop(stream_id, ()):
                        self._send_sctp(sctp, message, now)
            elif kind is sctp_mod.Connected:
                registry.limit_streams(sctp.outbound_streams)
                self._set_state("connected")
            elif kind is sctp_mod.Closed:
                self.fail(f"SCTP association closed: {event.reason}", state="disconnected")
                return
        self._pump_registry(now)

    def _drain_registry(self) -> None:
        registry = self.registry
        assert registry is not None
        while (event := registry.poll_event()) is not None:
            kind = type(event)
            if kind is dc.MessageReceived:
                channel = self.channels.get(event.stream_id)
                if channel is not None:
                    channel._deliver(event.message)
            elif kind is dc.ChannelOpenedByPeer:
                self.accept_queue.append(self._add_channel(event.channel))
                self.acceptors.unpark_all()
            elif kind is dc.ChannelClosed:
                channel = self.channels.pop(event.stream_id, None)
                if channel is not None:
                    channel._on_closed()
            elif kind is dc.ProtocolViolation:
                self.counts["protocol_violations"] += 1

    def _add_channel(self, info: dc.ChannelInfo) -> DataChannel:
        channel = DataChannel(self, info)
        self.channels[info.stream_id] = channel
        assert self.sctp is not None
        self.sctp.set_buffered_amount_low_threshold(info.stream_id, self.high_water_mark // 2)
        return channel

    def _pump_registry(self, now: float) -> None:
        """Registry instructions -> SCTP."""
        registry, sctp = self.registry, self.sctp
        if registry is None or sctp is None:
            return
        while (instruction := registry.poll_send()) is not None:
            if type(instruction) is dc.SctpMessage:
                held = self._resetting.get(instruction.stream_id)
                if held is not None:
                    held.append(instruction)
                else:
                    self._send_sctp(sctp, instruction, now)
            else:
                self._resetting.setdefault(instruction.stream_id, [])
                sctp.reset_streams([instruction.stream_id])

    def _send_sctp(self, sctp: SctpAssociation, message: dc.SctpMessage, now: float) -> None:
        lifetime = message.lifetime_ms
        try:
            sctp.send(
                message.stream_id, message.ppid, message.payload, now,
                ordered=message.ordered,
                max_retransmits=message.max_retransmits,
                lifetime=None if lifetime is None else lifetime / 1000,
            )
        except ValueError:
            self.counts["send_errors"] += 1  # the association is closing

    # ------------------------------------------------------------------ output and timers

    def flush(self, now: float) -> None:
        """Deliver events, then send everything the cores want sent."""
        ice = self.ice
        if ice is None:
            return
        self._drain_ice(now)
        if self.dtls is not None and self.dtls.state is dtls_mod.DtlsState.NEW:
            self.start_dtls_if_ready(now)  # a client waits for a valid pair
        dtls, sctp = self.dtls, self.sctp  # the events above may have created them
        if sctp is not None:
            self._drain_sctp(now)
            if dtls is not None and dtls.state is dtls_mod.DtlsState.CONNECTED:
                self._send_sctp_packets(sctp, dtls)
                if sctp.state is sctp_mod.SctpState.TERMINATED and self.failure is None:
                    self._drain_sctp(now)
        if dtls is not None:
            held = self._early.held
            if held:
                self._send_held(ice)
            data_addr = self._data_addr
            if data_addr is not None and not self._unsent and not held:
                # The selected pair is fixed until ICE says otherwise (an event above):
                # send straight to it, as IceAgent.send_data would.
                sendto = self.sock.sendto
                sent = 0
                try:
                    while (datagram := dtls.poll_transmit()) is not None:
                        try:
                            sendto(datagram, data_addr)
                        except BlockingIOError:
                            self._unsent.append((datagram, data_addr))
                            break
                        except OSError:
                            self.counts["send_errors"] += 1
                            continue
                        sent += 1
                finally:
                    self.counts["datagrams_sent"] += sent
            while (datagram := dtls.poll_transmit()) is not None:
                held.append(datagram)
            if held:
                self._send_held(ice)
            self._drain_dtls(now)
        while (transmit := ice.poll_transmit()) is not None:
            self._send(transmit.data, transmit.addr)

    def _send_sctp_packets(self, sctp: SctpAssociation, dtls: DtlsEndpoint) -> None:
        """SCTP packet -> DTLS record -> sendto, one packet at a time: the bulk of the
        traffic, with no queue between the layers."""
        data_addr = self._data_addr
        if data_addr is None or self._unsent or self._early.held:
            dtls_send = dtls.send  # through DTLS's queue, sent below
            while (packet := sctp.poll_transmit()) is not None:
                dtls_send(packet)
            return
        # The selected pair is fixed until ICE says otherwise (an event, handled before
        # this): send straight to it, as IceAgent.send_data would, in batches of up to
        # _BATCH datagrams (one syscall for a run of equal sizes, see _udp_offload).
        encrypt, poll_transmit = dtls.encrypt, sctp.poll_transmit
        while True:
            datagrams = []
            while len(datagrams) < _BATCH and (packet := poll_transmit()) is not None:
                datagram = encrypt(packet)
                if datagram is not None:
                    datagrams.append(datagram)
                elif dtls.state is not dtls_mod.DtlsState.CONNECTED:
                    return  # DTLS failed: its event ends the connection
            if not datagrams:
                return
            errors = self.udp.send_errors
            taken = self.udp.send(datagrams, data_addr)
            refused = self.udp.send_errors - errors
            self.counts["send_errors"] += refused
            self.counts["datagrams_sent"] += taken - refused
            if taken < len(datagrams):
                # The socket is full: SCTP keeps the rest until it drains.
                self._unsent.extend((datagram, data_addr) for datagram in datagrams[taken:])
                return

    def _send_held(self, ice: IceAgent) -> None:
        """Our DTLS that did not go straight to the selected pair (see _early_dtls)."""
        self.counts["datagrams_dropped_no_pair"] += self._early.send_held(ice, self._send)

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._unsent:
            self._unsent.append((data, addr))
            return
        try:
            self.sock.sendto(data, addr)
            self.counts["datagrams_sent"] += 1
        except BlockingIOError:
            self._unsent.append((data, addr))  # the core task waits until writable
        except OSError:
            # Unreachable, refused, or an address a hostile candidate named (broadcast:
            # EACCES, port 0: EINVAL): count it, never let it end the connection.
            self.counts["send_errors"] += 1

    def _send_unsent(self) -> None:
        unsent = self._unsent
        while unsent:
            data, addr = unsent[0]
            try:
                self.sock.sendto(data, addr)
            except BlockingIOError:
                return
            except OSError:
                self.counts["send_errors"] += 1
            else:
                self.counts["datagrams_sent"] += 1
            unsent.popleft()

    def _fire_timers(self, now: float) -> None:
        for core in (self.ice, self.dtls, self.sctp):
            if core is not None:
                deadline = core.poll_timeout()
                if deadline is not None and deadline <= now:
                    core.handle_timeout(now)

    def _next_deadline(self) -> float:
        deadline = float("inf")
        for core in (self.ice, self.dtls, self.sctp):
            if core is not None:
                timeout = core.poll_timeout()
                if timeout is not None and timeout < deadline:
                    deadline = timeout
        return deadline

    # ------------------------------------------------------------------ lifecycle

    def _set_state(self, state: str) -> None:
        if self.state != state and self.state not in ("failed", "closed"):
            self.state = state
            self.state_changed.unpark_all()

    def fail(self, reason: str, state: str = "failed") -> None:
        """End the connection: every channel and waiter sees BrokenResourceError."""
        if self.failure is not None:
            return
        self.failure = ConnectionFailed(reason)
        self._set_state(state)
        for channel in list(self.channels.values()):
            channel._on_broken(self.failure)
        self.acceptors.unpark_all()
        self.candidates_changed.unpark_all()
        self.state_changed.unpark_all()

    def close(self, now: float) -> None:
        """Local close: ABORT the association, close_notify, send both at once."""
        self.fail("the peer connection was closed", state="closed")
        if self.sctp is not None:
            self.sctp.abort("peer connection closed")
        dtls = self.dtls
        if dtls is not None and dtls.state is dtls_mod.DtlsState.CONNECTED:
            try:
                self.flush(now)
            except OSError:
                pass
            dtls.close()
        if self.ice is not None:
            try:
                self.flush(now)
            except OSError:
                pass
            self.ice.close()
        self.state = "closed"
