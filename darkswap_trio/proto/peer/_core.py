"""ICE + DTLS + SCTP + DCEP composed: :class:`PeerCore`, one per peer connection.

The core is sans-IO like its parts: the driver feeds it datagrams
(:meth:`PeerCore.receive`, or :meth:`PeerCore.receive_batch` for what one read
returned), calls :meth:`PeerCore.handle_timeout` at :meth:`PeerCore.poll_timeout`,
sends what :meth:`PeerCore.poll_transmit` (or :meth:`PeerCore.poll_datagrams`, a
run to one address) returns, and takes :meth:`PeerCore.poll_event` until None.

The data path is short on purpose, because per-datagram Python is what limits
throughput: DTLS from the selected pair's address goes straight to
``DtlsEndpoint.receive_application_data`` and its one record to
``SctpAssociation.receive``, with no events in between; SCTP's events are taken once
per batch (so SCTP bundles and delays its SACKs), and its packets are encrypted
straight to the selected pair in runs the driver sends with one syscall. Everything
else (STUN, the DTLS handshake, DTLS before a pair is selected: see
:mod:`._early_dtls`) goes through ICE.
"""

from __future__ import annotations

from collections import deque

from .. import datachannel as dc
from .. import dtls as dtls_mod
from ..dtls import DtlsEndpoint, DtlsParseError
from ..ice import (
    CandidateGathered,
    ConsentLost,
    DataReceived,
    GatheringComplete,
    IceAgent,
    IceState,
    IceStateChanged,
    SelectedPairChanged,
)
from ..ice._events import Transmit
from ..sctp import SctpAssociation, SctpState
from ._channels import ChannelMux
from ._early_dtls import EarlyDtls
from ._events import PeerCounts, PeerEvent, StateChanged

__all__ = ["PeerCore"]

Address = tuple[str, int]
_ENDED = ("failed", "disconnected", "closed")


class PeerCore:
    """The sans-IO state of one data-channel peer connection (see module docstring).

    Set up with :meth:`start` (an :class:`IceAgent` with our credentials and host
    candidates) and :meth:`set_remote` (the DTLS endpoint and what the remote
    description says). ``local_addr`` is the socket's address when it is bound to one
    host (None for a wildcard socket). ``high_water_mark``: BufferedAmountLow comes
    at half of it. See ``PeerConnectionConfig`` for the other arguments.
    """

    def __init__(
        self,
        *,
        local_max_message_size: int = 262144,
        receive_buffer_size: int = 1 << 20,
        high_water_mark: int = 1 << 20,
        max_packets_per_sack: int | None = 16,
        local_addr: Address | None = None,
    ) -> None:
        self.local_max_message_size = local_max_message_size
        self.receive_buffer_size = receive_buffer_size
        self.high_water_mark = high_water_mark
        self.max_packets_per_sack = max_packets_per_sack
        self.local_addr = local_addr
        self.ice: IceAgent | None = None
        self.dtls: DtlsEndpoint | None = None
        self.sctp: SctpAssociation | None = None
        self.channels: ChannelMux | None = None
        self.remote_max_message_size = 65536
        self.sctp_port = (5000, 5000)
        self.state = "new"
        self.failure: str | None = None  # why the connection ended
        self.counts = PeerCounts()
        self._events: deque[PeerEvent | object] = deque()
        self._out: deque[tuple[bytes, Address]] = deque()  # not the data path
        self._data_addr: Address | None = None  # the selected pair's remote address
        self._early = EarlyDtls()
        self._now = 0.0
        self._dirty = False  # events may wait in the parts
        self._channels_dirty = False  # ... in SCTP only (the data path took input)

    # ------------------------------------------------------------------ setup

    def start(self, ice: IceAgent, now: float) -> None:
        """Take the agent (local candidates added) and start gathering."""
        if self.ice is not None:
            raise RuntimeError("the core has an ICE agent already")
        self.ice = ice
        self._now = now
        ice.gather(now)
        self._settle()

    def set_pacing(self, seconds: float) -> None:
        assert self.ice is not None
        self.ice.set_pacing(seconds)

    def set_remote(
        self,
        dtls: DtlsEndpoint,
        ufrag: str,
        pwd: str,
        now: float,
        *,
        sctp_port: int = 5000,
        remote_max_message_size: int = 65536,
    ) -> None:
        """Apply the remote description: our DTLS endpoint (its role and the peer's
        fingerprints), the peer's ICE credentials, its SCTP port and message limit."""
        ice = self.ice
        if ice is None or self.dtls is not None:
            raise RuntimeError("set_remote needs start() first, and only once")
        self._now = now
        self.remote_max_message_size = remote_max_message_size
        self.sctp_port = (5000, sctp_port)
        self.dtls = dtls
        ice.set_remote_credentials(ufrag, pwd, now)
        self._dirty = True

    def add_remote_candidate(self, candidate: object | None, now: float) -> None:
        """A remote candidate (aioice ``Candidate``), or None for end-of-candidates."""
        assert self.ice is not None
        self._now = now
        self.ice.add_remote_candidate(candidate, now)  # type: ignore[arg-type]
        self._dirty = True

    # ------------------------------------------------------------------ channels

    def open_channel(self, label: str, now: float, **options: object) -> dc.ChannelInfo:
        """Open a channel (DCEP OPEN, or negotiated); ValueError for bad options,
        ChannelStateError before the association is up or after the end."""
        self._now = now
        return self._mux().open_channel(label, now, **options)

    def send(self, stream_id: int, message: bytes | str, now: float) -> None:
        """Queue one message: MessageTooLarge above the peer's limit, ChannelStateError
        unless the channel is open (or the connection is not up)."""
        self._now = now
        self._mux().send(stream_id, message, now)

    def close_channel(self, stream_id: int, now: float) -> None:
        """Reset our outgoing stream; nothing more is delivered on the channel."""
        if self.channels is not None and self.failure is None:
            self._now = now
            self.channels.close_channel(stream_id, now)

    def channel_drained(self, stream_id: int, size: int) -> bool:
        """The reader took a message of ``size``; True if delivery waited for room."""
        channels = self.channels
        if channels is not None and channels.drained(stream_id, size):
            self._dirty = True
            return True
        return False

    def buffered_amount(self, stream_id: int) -> int:
        """Bytes of the channel queued in SCTP or in flight, not acknowledged yet."""
        channels = self.channels
        return channels.buffered_amount(stream_id) if channels is not None else 0

    # ------------------------------------------------------------------ input

    def receive(self, data: bytes, addr: Address, now: float) -> None:
        """One datagram from ``addr`` (untrusted: nothing here raises for it)."""
        self.receive_batch([(data, addr)], now)

    def receive_batch(self, batch: list[tuple[bytes, Address]], now: float) -> None:
        """Datagrams in arrival order; take events and transmits after the batch."""
        self._now = now
        ice = self.ice
        if ice is None:
            self.counts.datagrams_dropped += len(batch)
            return
        self.counts.datagrams_received += len(batch)
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
                    self.counts.datagrams_dropped += 1
                    self._dirty = True
                    continue
                if plaintext is not None and sctp is not None:
                    sctp.receive(plaintext, now)  # the bulk: one record, no events
                    self._channels_dirty = True
                else:
                    self._dirty = True
                    self._drain_dtls(now)
                    sctp = self.sctp
            else:
                self._dirty = True
                ice.receive(data, addr, now, local)
                self._drain_ice(now)
                data_addr, dtls, sctp = self._data_addr, self.dtls, self.sctp

    def handle_timeout(self, now: float) -> None:
        """Fire every timer that is due at ``now``."""
        self._now = now
        for core in (self.ice, self.dtls, self.sctp):
            if core is not None:
                deadline = core.poll_timeout()
                if deadline is not None and deadline <= now:
                    core.handle_timeout(now)
                    self._dirty = True

    # ------------------------------------------------------------------ output

    def poll_event(self) -> PeerEvent | CandidateGathered | GatheringComplete | None:
        """The next event (ICE's candidate events are passed on as they are)."""
        if self._dirty:
            self._settle()
        elif self._channels_dirty:
            self._settle_channels()
        events = self._events
        return events.popleft() if events else None  # type: ignore[return-value]

    def poll_timeout(self) -> float | None:
        deadline = None
        for core in (self.ice, self.dtls, self.sctp):
            if core is not None:
                timeout = core.poll_timeout()
                if timeout is not None and (deadline is None or timeout < deadline):
                    deadline = timeout
        return deadline

    def poll_transmit(self) -> Transmit | None:
        """The next datagram to send and where to, or None."""
        run = self.poll_datagrams(1)
        if run is None:
            return None
        addr, datagrams = run
        return Transmit(datagrams[0], addr)

    def poll_datagrams(self, limit: int = 64) -> tuple[Address, list[bytes]] | None:
        """Up to ``limit`` datagrams for one address (the data path comes in runs of
        equal sizes, which the driver can send with one syscall), or None."""
        if self._dirty:
            self._settle()
        elif self._channels_dirty:
            self._settle_channels()
        out = self._out
        if not out:
            run = self._poll_data_path(limit)
            if run is not None:
                return run
            self._collect_control()
            if not out:
                return None
        data, addr = out.popleft()
        return addr, [data]

    def _poll_data_path(self, limit: int) -> tuple[Address, list[bytes]] | None:
        dtls = self.dtls
        if dtls is None:
            return None
        sctp, data_addr, held = self.sctp, self._data_addr, self._early.held
        if sctp is not None and dtls.state is dtls_mod.DtlsState.CONNECTED:
            if data_addr is None or held:
                dtls_send = dtls.send  # through DTLS's queue, to ICE below
                while (packet := sctp.poll_transmit()) is not None:
                    dtls_send(packet)
                    self._dirty = True
            else:
                # The selected pair is fixed until ICE says otherwise (an event, handled
                # before this): send straight to it, as IceAgent.send_data would.
                encrypt, poll_transmit = dtls.encrypt, sctp.poll_transmit
                datagrams: list[bytes] = []
                while len(datagrams) < limit and (packet := poll_transmit()) is not None:
                    datagram = encrypt(packet)
                    if datagram is not None:
                        datagrams.append(datagram)
                    elif dtls.state is not dtls_mod.DtlsState.CONNECTED:
                        break  # DTLS failed: its event ends the connection
                if datagrams:
                    if sctp.state is SctpState.TERMINATED:
                        self._dirty = True  # its Closed event (SHUTDOWN-COMPLETE sent)
                    return data_addr, datagrams
        if data_addr is not None and not held:
            datagrams = []
            while len(datagrams) < limit and (datagram := dtls.poll_transmit()) is not None:
                datagrams.append(datagram)
            if datagrams:
                return data_addr, datagrams
        return None

    def _collect_control(self) -> None:
        """DTLS with no selected pair yet, and ICE's own datagrams, into ``_out``."""
        ice, dtls = self.ice, self.dtls
        if ice is None:
            return
        if dtls is not None:
            held = self._early.held  # what the data path could not send
            while (datagram := dtls.poll_transmit()) is not None:
                held.append(datagram)
            if held:
                self.counts.datagrams_dropped_no_pair += self._early.send_held(ice, self._queue_out)
        while (transmit := ice.poll_transmit()) is not None:
            self._out.append((transmit.data, transmit.addr))

    def _queue_out(self, data: bytes, addr: Address) -> None:
        self._out.append((data, addr))

    # ------------------------------------------------------------------ composition

    def _settle(self) -> None:
        """Move events up the stack: ICE -> DTLS -> SCTP -> channels."""
        now = self._now
        self._dirty = self._channels_dirty = False
        if self.ice is None:
            return
        self._drain_ice(now)
        dtls = self.dtls
        if dtls is not None and dtls.state is dtls_mod.DtlsState.NEW:
            self._start_dtls_if_ready(now)  # a client waits for a valid pair
        channels = self.channels
        if channels is not None:
            channels.drain(now)
        if dtls is not None:
            self._drain_dtls(now)

    def _settle_channels(self) -> None:
        """:meth:`_settle` after the data path alone took input (DTLS records for
        SCTP): ICE and DTLS have nothing new, SCTP's events go up to the channels."""
        self._channels_dirty = False
        if self.channels is not None:
            self.channels.drain(self._now)

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
                    self.counts.datagrams_dropped += 1
                    continue
                self._drain_dtls(now)
            elif type(event) is CandidateGathered or type(event) is GatheringComplete:
                self._events.append(event)
            elif type(event) is SelectedPairChanged:
                # Through a TURN allocation ICE wraps every datagram: no direct data path.
                relayed = event.local.type == "relay"
                self._data_addr = None if relayed else (event.remote.host, event.remote.port)
                self._start_dtls_if_ready(now)
            elif type(event) is IceStateChanged:
                if event.state in (IceState.FAILED, IceState.CLOSED):
                    self._data_addr = None
                if event.state is IceState.FAILED:
                    self._fail("ICE failed: no candidate pair works")
                elif event.state is IceState.CHECKING and self.state == "new":
                    self._set_state("connecting")
            elif type(event) is ConsentLost:
                self._data_addr = None
                self._fail("ICE consent lost: the peer stopped answering")

    def _start_dtls_if_ready(self, now: float) -> None:
        """Start DTLS once the role is known and ICE has a valid pair (or we are the
        server): a client need not wait for the nomination (RFC 8445 section 12.1)."""
        dtls, ice = self.dtls, self.ice
        if dtls is None or ice is None or dtls.state is not dtls_mod.DtlsState.NEW:
            return
        if dtls.role == "server" or ice.first_valid_pair() is not None:
            dtls.start(now)
            self.counts.datagrams_dropped += self._early.replay(dtls, now)
            self._drain_dtls(now)

    def _drain_dtls(self, now: float) -> None:
        dtls = self.dtls
        assert dtls is not None
        while (event := dtls.poll_event()) is not None:
            if type(event) is dtls_mod.DataReceived:
                sctp = self.sctp
                if sctp is not None:
                    sctp.receive(event.data, now)
                    self._dirty = True
            elif type(event) is dtls_mod.HandshakeComplete:
                self._start_sctp(now)
            elif type(event) is dtls_mod.Failed:
                self._fail(f"DTLS failed: {event.error}")
            elif type(event) is dtls_mod.Closed:
                self._fail(f"the peer closed DTLS: {event.reason}", state="disconnected")

    def _start_sctp(self, now: float) -> None:
        dtls = self.dtls
        assert dtls is not None
        remote = self.remote_max_message_size
        biggest = max(self.local_max_message_size, remote if remote else 1 << 24)
        sctp = SctpAssociation(
            dtls.role == "client",
            self.sctp_port[0],
            self.sctp_port[1],
            max_message_size=biggest,
            max_packet_size=min(1188, dtls.max_application_data()),
            receive_window=max(1 << 20, 2 * self.local_max_message_size),
            max_packets_per_sack=self.max_packets_per_sack,
        )
        registry = dc.DataChannelRegistry(
            dtls_client=dtls.role == "client",
            remote_max_message_size=remote,
            local_max_message_size=self.local_max_message_size,
        )
        self.sctp = sctp
        self.channels = ChannelMux(
            sctp,
            registry,
            self._events,
            self.counts,
            self._channels_state,
            receive_buffer_size=self.receive_buffer_size,
            low_threshold=self.high_water_mark // 2,
        )
        sctp.connect(now)
        self._dirty = True

    def _mux(self) -> ChannelMux:
        if self.channels is None or self.failure is not None:
            raise dc.ChannelStateError(self.failure or "the connection is not up")
        return self.channels

    # ------------------------------------------------------------------ lifecycle

    def _channels_state(self, state: str, reason: str) -> None:
        if state == "connected":
            self._set_state(state)
        else:
            self._fail(reason, state)

    def _set_state(self, state: str, reason: str = "") -> None:
        if self.state != state and self.state not in _ENDED:
            self.state = state
            self._events.append(StateChanged(state, reason))

    def _fail(self, reason: str, state: str = "failed") -> None:
        """End the connection (once): the driver breaks every channel."""
        if self.failure is None:
            self.failure = reason
            self._set_state(state, reason)

    def close(self, now: float) -> None:
        """Local close: SCTP ABORT and DTLS close_notify, both waiting in
        :meth:`poll_transmit` (send them at once: nothing times out after this)."""
        self._now = now
        self._fail("the peer connection was closed", state="closed")
        if self.sctp is not None:
            self.sctp.abort("peer connection closed")
        dtls = self.dtls
        if dtls is not None and dtls.state is dtls_mod.DtlsState.CONNECTED:
            self._take_all()
            dtls.close()
        if self.ice is not None:
            self._take_all()
            self.ice.close()
        self.state = "closed"

    def _take_all(self) -> None:
        """Everything there is to send, into ``_out`` (the addresses resolved now)."""
        pending: list[tuple[bytes, Address]] = []
        while (run := self.poll_datagrams()) is not None:
            addr, datagrams = run
            pending.extend((datagram, addr) for datagram in datagrams)
        self._out.extend(pending)
