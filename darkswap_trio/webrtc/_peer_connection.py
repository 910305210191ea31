"""A W3C-shaped WebRTC peer connection for data channels, in trio.

``async with open_peer_connection(config) as pc:`` binds one UDP socket and starts the
task of :class:`~darkswap_trio.webrtc._driver.PeerDriver`, which drives the
sans-IO :class:`~darkswap_trio.proto.peer.PeerCore`. Signaling is the
W3C dance: ``create_offer`` / ``set_remote_description`` / ``create_answer`` with SDP
strings, plus trickled candidates (:meth:`PeerConnection.local_candidates`,
:meth:`PeerConnection.add_ice_candidate`). ``create_offer`` and ``create_answer`` also
apply the description locally (W3C ``setLocalDescription``) and start gathering.

Roles follow JSEP: the offerer controls ICE and offers ``a=setup:actpass``; our answers
pick ``active`` (we send the ClientHello, saving a round trip). ICE pacing (Ta) is
announced as ``a=ice-pacing`` (RFC 8839 section 5.5) and the higher of both
proposals is used, 50 ms for a peer that proposes nothing.
"""

from __future__ import annotations

import datetime
import ipaddress
import random
import socket
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal

import trio

from ..proto.dtls import DtlsCertificate, DtlsEndpoint, DtlsStatistics, dtls_context
from ..proto.ice import TA, IceAgent, IceStatistics
from ..proto.peer import PeerCore
from ..proto.sctp import SctpStatistics
from ..proto.sdp import (
    DtlsFingerprint,
    DtlsRole,
    DtlsSetup,
    IceCandidate,
    LocalTransport,
    SessionDescription,
    answer_setup_for,
    dtls_role_from_answer,
    generate_ice_credentials,
    parse_candidate_untrusted,
    parse_sdp_untrusted,
    render_answer,
    render_candidate,
    render_offer,
)
from ..proto.turn import TurnClientSettings
from ._datachannel import DataChannel
from ._driver import DatagramSocket, PeerDriver
from ._interfaces import host_addresses as interface_addresses
from ._peer_channels import ConnectionFailed
from ._turn_servers import TurnServerConfig
from ._turn_streams import TurnStreamSocket
from ._udp_offload import UdpBatchSocket

__all__ = [
    "ConnectionFailed",
    "DataChannel",
    "PeerConnection",
    "PeerConnectionConfig",
    "PeerConnectionStatistics",
    "SignalingStateError",
    "TurnServerConfig",
    "open_peer_connection",
]

_MAX_EARLY_CANDIDATES = 256
_SOCKET_BUFFER = 4 << 20  # the kernel caps this at net.core.[rw]mem_max
ConnectionState = Literal["new", "connecting", "connected", "disconnected", "failed", "closed"]


class SignalingStateError(RuntimeError):
    """An offer/answer call out of order (W3C InvalidStateError)."""


@dataclass(frozen=True)
class PeerConnectionConfig:
    """How a :class:`PeerConnection` gathers, paces and sizes things.

    ``host_addresses``: IP literals to announce as host candidates (default: every
    interface address, loopback only with ``include_loopback``; IPv4 only unless the
    list says otherwise). ``stun_servers``: (host, port) for server-reflexive
    candidates. ``ice_pacing``: our proposed Ta in seconds (``a=ice-pacing``, 5 ms at
    least). ``max_message_size``: the largest message we accept
    (``a=max-message-size``). ``high_water_mark``: ``DataChannel.send`` waits while the
    channel's buffered amount is above it. ``receive_buffer_size``: bytes a channel
    buffers for its reader before SCTP stops delivering (its window then closes; SCTP
    delivers in arrival order, so a channel nobody reads eventually holds up the other
    channels of the connection too: read, or close, every channel you accept).
    ``max_packets_per_sack``: one SACK per batch of datagrams read, but at least every
    that many SCTP packets (RFC 9260 asks for every second; None: no bound). A batch
    only holds several packets when they arrive faster than we process them (fast,
    low-RTT paths: short slow-start rounds), and each SACK costs both ends a whole
    datagram; the bound keeps per-SACK window growth (browsers, aiortc) going, as
    QUIC's ACK decimation does with 10. ``udp_offload``: send runs of equal-sized
    datagrams with one syscall (Linux UDP GSO) and read coalesced runs (UDP GRO) where
    the kernel supports it; False keeps to one syscall per datagram.
    ``turn_servers``: :class:`TurnServerConfig` entries to gather relay candidates
    from (a UDP allocation on each). ``ice_transport_policy``: ``"all"``, or
    ``"relay"`` to offer and use relay candidates only (W3C ``iceTransportPolicy``;
    needs a TURN server).
    """

    stun_servers: Sequence[tuple[str, int]] = ()
    host_addresses: Sequence[str] | None = None
    include_loopback: bool = False
    port: int = 0
    # Proposed via a=ice-pacing; both ends use the higher proposal (RFC 8839 5.5), so a
    # peer that announces none (RFC default 50 ms) still gets 50 ms.
    ice_pacing: float = 0.005
    max_message_size: int = 262144
    certificate: DtlsCertificate | None = None
    high_water_mark: int = 1 << 20
    receive_buffer_size: int = 1 << 20
    max_packets_per_sack: int | None = 16
    udp_offload: bool = True
    turn_servers: Sequence[TurnServerConfig] = ()
    ice_transport_policy: Literal["all", "relay"] = "all"

    def __post_init__(self) -> None:
        if self.ice_transport_policy not in ("all", "relay"):
            raise ValueError(
                f"ice_transport_policy must be 'all' or 'relay', not {self.ice_transport_policy!r}"
            )
        seen = set()
        for server in self.turn_servers:
            if not isinstance(server, TurnServerConfig):
                raise ValueError(f"turn_servers takes TurnServerConfig entries, not {server!r}")
            where = (server.parsed.host, server.parsed.port)
            if where in seen:  # its datagrams would not know which transport to take
                raise ValueError(f"TURN server {where[0]}:{where[1]} is listed twice")
            seen.add(where)
        if self.ice_transport_policy == "relay" and not self.turn_servers:
            raise ValueError("ice_transport_policy='relay' needs at least one TURN server")


@dataclass(frozen=True)
class PeerConnectionStatistics:
    """A snapshot of the connection and its cores (None before a core exists)."""

    connection_state: str
    local_address: tuple[str, int]
    data_channels: int
    datagrams_received: int
    datagrams_sent: int
    datagrams_dropped: int
    datagrams_dropped_no_pair: int  # ours, sent while ICE had no path (see proto.peer)
    send_errors: int
    protocol_violations: int
    # Ours to TURN servers over TCP/TLS, dropped because the connection's queue was full.
    turn_stream_dropped: int
    ice: IceStatistics | None
    dtls: DtlsStatistics | None
    sctp: SctpStatistics | None


class PeerConnection:
    """A data-channel-only WebRTC peer connection; make one with :func:`open_peer_connection`."""

    def __init__(
        self,
        config: PeerConnectionConfig,
        sock: DatagramSocket,
        bound: tuple[str, int],
        hosts: list[str],
    ):
        self.config = config
        self._port = bound[1]
        self._hosts = hosts
        self._core = PeerCore(
            local_max_message_size=config.max_message_size,
            receive_buffer_size=config.receive_buffer_size,
            high_water_mark=config.high_water_mark,
            max_packets_per_sack=config.max_packets_per_sack,
            local_addr=(hosts[0], self._port) if len(hosts) == 1 else None,
        )
        self._driver = PeerDriver(self._core, sock)
        self._app = self._driver.app  # channels and waiters
        self.local_address: tuple[str, int] = (bound[0], self._port)
        self._certificate = config.certificate or DtlsCertificate.generate(
            datetime.datetime.now(datetime.UTC)
        )
        self._fingerprint = DtlsFingerprint.of_certificate(self._certificate.der)
        # Made now, not when the remote description comes: loading the key into
        # OpenSSL (and, first in a process, OpenSSL itself) costs 1-9 ms that would
        # otherwise sit between an offer's arrival and our answer and first check.
        self._dtls_context = dtls_context(self._certificate)
        self._ufrag, self._pwd = generate_ice_credentials()
        self._stun_servers: list[tuple[str, int]] = []
        self._turn_servers: list[TurnClientSettings] = []
        self._session_id = random.SystemRandom().randrange(1, 2**62)
        self._session_version = 1
        self._role: Literal["offerer", "answerer"] | None = None
        self._remote: SessionDescription | None = None
        self._answer_setup: DtlsSetup | None = None
        self._early_candidates: list[IceCandidate | None] = []

    # ------------------------------------------------------------------ signaling

    async def create_offer(self) -> str:
        """Our offer (applied locally: gathering starts). Host candidates are included."""
        if self._role == "answerer" or self._remote is not None:
            raise SignalingStateError("create_offer after a remote description")
        self._role = "offerer"
        self._start_ice(controlling=True, pacing=self.config.ice_pacing)
        sdp = render_offer(
            self._local_transport(),
            session_id=self._session_id,
            session_version=self._next_version(),
        )
        await trio.lowlevel.checkpoint()
        return sdp

    async def create_answer(self) -> str:
        """Our answer to the remote offer (applied locally)."""
        if self._role != "answerer" or self._remote is None or self._answer_setup is None:
            raise SignalingStateError("create_answer needs a remote offer first")
        sdp = render_answer(
            self._remote,
            self._local_transport(),
            session_id=self._session_id,
            session_version=self._next_version(),
            setup=self._answer_setup,
        )
        await trio.lowlevel.checkpoint()
        return sdp

    async def set_remote_description(self, sdp: str, type: Literal["offer", "answer"]) -> None:
        """Apply the peer's offer or answer. Raises SdpParseError for bad SDP."""
        core, driver, app = self._core, self._driver, self._app
        if app.failure is not None or core.failure is not None:
            raise trio.ClosedResourceError("the peer connection is closed or failed")
        if self._remote is not None:
            raise SignalingStateError("renegotiation is not supported")
        description = parse_sdp_untrusted(sdp)
        media = description.data_channel
        remote_pacing = _announced_pacing(description)
        if type == "offer":
            if self._role is not None:
                raise SignalingStateError("got an offer while we have our own offer out")
            self._role = "answerer"
            assert media.setup is not None  # the parser guarantees it
            self._answer_setup = answer_setup_for(media.setup)
            role = DtlsRole.CLIENT if self._answer_setup is DtlsSetup.ACTIVE else DtlsRole.SERVER
            self._start_ice(controlling=False, pacing=self._agreed_pacing(remote_pacing))
        elif type == "answer":
            if self._role != "offerer":
                raise SignalingStateError("got an answer without an offer of ours")
            role = dtls_role_from_answer(media.setup, we_are_offerer=True)
            # Checks start only with the remote credentials below, so the agreed Ta
            # still applies to every check.
            core.set_pacing(self._agreed_pacing(remote_pacing))
        else:
            raise ValueError(f"type must be 'offer' or 'answer', not {type!r}")
        self._remote = description
        now = trio.current_time()
        dtls = DtlsEndpoint(
            role.value,
            self._certificate,
            [(f.algorithm, f.value) for f in media.fingerprints],
            context=self._dtls_context,
        )
        assert media.ice_ufrag and media.ice_pwd
        core.set_remote(
            dtls,
            media.ice_ufrag,
            media.ice_pwd,
            now,
            sctp_port=media.sctp_port or 5000,
            remote_max_message_size=media.effective_max_message_size,
        )
        for candidate in (*media.candidates, *self._early_candidates):
            core.add_remote_candidate(None if candidate is None else candidate.to_aioice(), now)
        self._early_candidates.clear()
        if media.end_of_candidates:
            core.add_remote_candidate(None, now)
        driver.flush()  # DTLS starts now if it can (a server, or a valid pair)
        driver.wake()
        await trio.lowlevel.checkpoint()

    def add_ice_candidate(
        self,
        candidate: str | None,
        sdp_mid: str | None = None,
        sdp_mline_index: int | None = None,
    ) -> None:
        """Add a trickled remote candidate (``candidate:...``); None or "" ends them.

        Raises SdpParseError for a malformed candidate. mDNS (``.local``) candidates are
        ignored: we do no mDNS. Candidates that come before the remote description wait.
        """
        parsed = None
        if candidate:
            parsed = parse_candidate_untrusted(candidate)
            if parsed.is_mdns:
                return
        if self._remote is None or self._core.ice is None:
            if len(self._early_candidates) >= _MAX_EARLY_CANDIDATES:
                raise SignalingStateError("too many candidates before the remote description")
            self._early_candidates.append(parsed)
            return
        self._core.add_remote_candidate(
            None if parsed is None else parsed.to_aioice(), trio.current_time()
        )
        self._driver.wake()

    async def local_candidates(self) -> AsyncIterator[str | None]:
        """Our candidates as ``candidate:...`` strings as they are gathered, then None."""
        app = self._app
        index = 0
        while True:
            while index >= len(app.candidates):
                if app.failure is not None:
                    return
                await app.candidates_changed.park()
            candidate = app.candidates[index]
            index += 1
            if candidate is None:
                yield None
                return
            yield render_candidate(IceCandidate.from_aioice(candidate))

    # ------------------------------------------------------------------ connection

    @property
    def connection_state(self) -> ConnectionState:
        return self._core.state  # type: ignore[return-value]

    @property
    def remote_max_message_size(self) -> int:
        """The largest message the peer accepts (its SDP a=max-message-size; 0: no
        limit); 65536 until its description is set."""
        return self._core.remote_max_message_size

    async def wait_connected(self) -> None:
        """Wait until ICE, DTLS and SCTP are up; BrokenResourceError if that fails."""
        app = self._app
        while self._core.state != "connected":
            if app.failure is not None:
                raise trio.BrokenResourceError(str(app.failure)) from app.failure
            await app.state_changed.park()

    async def create_data_channel(
        self,
        label: str,
        *,
        ordered: bool = True,
        max_retransmits: int | None = None,
        max_packet_life_time: int | None = None,
        protocol: str = "",
        negotiated_id: int | None = None,
    ) -> DataChannel:
        """Open a data channel (DCEP, or agreed out of band with ``negotiated_id``).

        Waits until the connection is up. ``max_packet_life_time`` is in milliseconds.
        Raises ValueError for bad options and BrokenResourceError if the connection fails.
        """
        await self.wait_connected()
        return self._app.open_channel(
            label,
            protocol=protocol,
            ordered=ordered,
            max_retransmits=max_retransmits,
            max_packet_lifetime_ms=max_packet_life_time,
            negotiated_id=negotiated_id,
        )

    async def accept_data_channel(self) -> DataChannel:
        """The next channel the peer opened."""
        app = self._app
        while not app.accept_queue:
            if app.failure is not None:
                raise trio.BrokenResourceError(str(app.failure)) from app.failure
            await app.acceptors.park()
        await trio.lowlevel.checkpoint()
        return app.accept_queue.popleft()

    def statistics(self) -> PeerConnectionStatistics:
        core, driver = self._core, self._driver
        counts, sock = core.counts, driver.sock
        return PeerConnectionStatistics(
            connection_state=core.state,
            local_address=self.local_address,
            data_channels=len(self._app.channels),
            datagrams_received=counts.datagrams_received,
            datagrams_sent=driver.datagrams_sent,
            datagrams_dropped=counts.datagrams_dropped,
            datagrams_dropped_no_pair=counts.datagrams_dropped_no_pair,
            send_errors=counts.send_errors + driver.send_errors,
            protocol_violations=counts.protocol_violations,
            turn_stream_dropped=sock.dropped if isinstance(sock, TurnStreamSocket) else 0,
            ice=core.ice.statistics() if core.ice else None,
            dtls=core.dtls.statistics() if core.dtls else None,
            sctp=core.sctp.statistics() if core.sctp else None,
        )

    # ------------------------------------------------------------------ internals

    def _start_ice(self, controlling: bool, pacing: float) -> None:
        if self._core.ice is not None:
            return
        ice = IceAgent(
            controlling,
            local_ufrag=self._ufrag,
            local_pwd=self._pwd,
            stun_servers=self._stun_servers,
            pacing=pacing,
            turn_servers=self._turn_servers,
            relay_only=self.config.ice_transport_policy == "relay",
        )
        for host in self._hosts:
            ice.add_local_candidate((host, self._port))
        self._core.start(ice, trio.current_time())
        self._driver.flush()  # candidate events now, so the SDP carries the host candidates
        self._driver.wake()  # the core task sleeps without a deadline until it has an agent

    def _local_transport(self) -> LocalTransport:
        gathered = self._app.candidates
        return LocalTransport(
            ice_ufrag=self._ufrag,
            ice_pwd=self._pwd,
            fingerprints=(self._fingerprint,),
            candidates=tuple(IceCandidate.from_aioice(c) for c in gathered if c is not None),
            end_of_candidates=None in gathered,
            max_message_size=self.config.max_message_size,
            ice_pacing=max(1, round(self.config.ice_pacing * 1000)),
        )

    def _agreed_pacing(self, remote: float | None) -> float:
        return max(self.config.ice_pacing, TA if remote is None else remote)

    def _next_version(self) -> int:
        self._session_version += 1
        return self._session_version


def _announced_pacing(description: SessionDescription) -> float | None:
    """The peer's ``a=ice-pacing`` in seconds (5 ms at least), None if absent."""
    if description.ice_pacing is None:
        return None
    return max(0.005, description.ice_pacing / 1000)


def _bind_socket(config: PeerConnectionConfig) -> tuple[socket.socket, list[str]]:
    hosts = (
        list(config.host_addresses)
        if config.host_addresses is not None
        else (interface_addresses(config.include_loopback, ipv6=False))
    )
    if not hosts:
        raise OSError("no host address to gather a candidate from")
    family = socket.AF_INET6 if ipaddress.ip_address(hosts[0]).version == 6 else socket.AF_INET
    # One socket, one address family: the first address decides.
    want_v6 = family is socket.AF_INET6
    hosts = [h for h in hosts if (ipaddress.ip_address(h).version == 6) == want_v6]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        wildcard = "::" if family == socket.AF_INET6 else "0.0.0.0"
        sock.bind((hosts[0] if len(hosts) == 1 else wildcard, config.port))
    except BaseException:
        sock.close()
        raise
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
        except OSError:
            pass  # a smaller buffer only costs throughput
    return sock, hosts


async def _resolve(server: tuple[str, int]) -> list[tuple[str, int]]:
    host, port = server
    infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_DGRAM)
    return [(ipaddress.ip_address(info[4][0]).compressed, int(info[4][1])) for info in infos]


async def _resolve_turn(
    server: TurnServerConfig, family: int, streams: TurnStreamSocket
) -> list[TurnClientSettings]:
    """The server's first address of our socket's family (a socket reaches no other);
    over TCP, connected (none if it cannot be)."""
    url = server.parsed
    for addr in await _resolve((url.host, url.port)):
        if ipaddress.ip_address(addr[0]).version == family:
            stream = url.transport == "tcp"
            tls = (server.ssl_context or ssl.create_default_context()) if url.tls else None
            if stream and not await streams.connect(addr, tls, url.host):
                return []
            return [TurnClientSettings(addr, server.username, server.credential, stream=stream)]
    return []


@asynccontextmanager
async def open_peer_connection(
    config: PeerConnectionConfig | None = None,
    *,
    datagram_socket: DatagramSocket | None = None,
) -> AsyncIterator[PeerConnection]:
    """A :class:`PeerConnection` with its socket and tasks; closed (SCTP ABORT and DTLS
    close_notify sent) when the block exits, also on cancellation.

    ``datagram_socket``: run on this socket instead of binding a UDP socket (a
    ``darkswap_trio.testing.VirtualSocket``, say); its address is the host candidate
    unless ``config.host_addresses`` names others. The caller closes it."""
    config = config or PeerConnectionConfig()
    sock: socket.socket | None = None
    if datagram_socket is None:
        sock, hosts = _bind_socket(config)
        datagram_socket = UdpBatchSocket(sock, offload=config.udp_offload)
        bound = sock.getsockname()[:2]
    else:
        bound = datagram_socket.getsockname()[:2]
        hosts = list(config.host_addresses or [bound[0]])
    streams = TurnStreamSocket(datagram_socket)
    try:
        pc = PeerConnection(config, streams, bound, hosts)
        for server in config.stun_servers:
            pc._stun_servers.extend(await _resolve(server))
        family = 6 if ":" in hosts[0] else 4
        for turn in config.turn_servers:
            pc._turn_servers.extend(await _resolve_turn(turn, family, streams))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pc._driver.run, name="peer connection core")
            streams.start(nursery, pc._driver.deliver)
            try:
                yield pc
            finally:
                pc._driver.close()
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await streams.aclose()
        if sock is not None:
            sock.close()
