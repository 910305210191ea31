"""trio driver for the sans-IO ICE agent: :class:`IceTransport`.

One nursery, owned by the :class:`IceTransport` context manager, holds:

* one ``socket reader`` task per bound UDP socket: ``recvfrom`` -> the core's inbox;
* the ``core owner``: the only task that feeds the :class:`~darkswap_trio.proto.ice._agent.IceAgent`.
  It sleeps until its inbox has something (a datagram, or a wake-up after the
  application trickled a candidate) or the agent's next deadline, then sends what
  the agent wants sent and dispatches its events.

RFC 7983 demultiplexing happens in the agent: STUN is ICE's, DTLS from an address
ICE validated becomes application data (:meth:`IceTransport.receive`), the rest is
dropped and counted. Buffers are bounded: the inbox applies backpressure to the
readers (the kernel's socket buffer then drops, as UDP does) and received data that
the application does not read in time is dropped and counted.

Sockets come from ``socket_factory`` (default: real ``trio.socket`` UDP sockets), so
:class:`darkswap_trio.testing.VirtualNet` runs the very same driver.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import trio

from ..proto.ice import (
    TA,
    Candidate,
    CandidateGathered,
    ConsentLost,
    DataReceived,
    GatheringComplete,
    IceAgent,
    IceState,
    IceStateChanged,
    IceStatistics,
)

__all__ = ["DatagramSocket", "IceError", "IceTransport", "IceTransportStatistics"]

_RECV_SIZE = 65536


class DatagramSocket(Protocol):
    """The part of a ``trio.socket`` UDP socket the driver uses (VirtualNet has it too)."""

    def sendto(self, data: bytes, addr: Any, /) -> Awaitable[int]: ...

    def recvfrom(self, bufsize: int, /) -> Awaitable[tuple[bytes, Any]]: ...

    def getsockname(self) -> Any: ...

    def close(self) -> None: ...


SocketFactory = Callable[[tuple[str, int]], Awaitable[DatagramSocket]]


class IceError(Exception):
    """Why ICE failed (chained as the cause of BrokenResourceError)."""


@dataclass(frozen=True)
class IceTransportStatistics:
    ice: IceStatistics
    datagrams_received: int
    datagrams_sent: int
    send_errors: int
    received_buffered: int
    received_dropped: int


async def _udp_socket(addr: tuple[str, int]) -> DatagramSocket:
    family = trio.socket.AF_INET6 if ":" in addr[0] else trio.socket.AF_INET
    sock = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
    try:
        await sock.bind(addr)
    except BaseException:
        sock.close()
        raise
    return sock


async def _resolve(server: tuple[str, int]) -> list[tuple[str, int]]:
    """IP literal as is; a name through getaddrinfo (every address family found)."""
    host, port = server
    try:
        return [(ipaddress.ip_address(host).compressed, int(port))]
    except ValueError:
        pass
    infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_DGRAM)
    found: list[tuple[str, int]] = []
    for *_, sockaddr in infos:
        addr = (ipaddress.ip_address(sockaddr[0]).compressed, int(sockaddr[1]))
        if addr not in found:
            found.append(addr)
    return found


def host_addresses(include_loopback: bool = False, ipv6: bool = True) -> list[str]:
    """Addresses of the local interfaces, as host candidates (ifaddr, aioice's dependency).

    Link-local IPv6 is skipped (it needs a scope id peers cannot use); loopback only
    when asked, for tests on one machine.
    """
    import ifaddr

    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            host = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            address = ipaddress.ip_address(host)
            if address.version == 6 and (not ipv6 or address.is_link_local):
                continue
            if address.is_loopback and not include_loopback:
                continue
            if address.compressed not in found:
                found.append(address.compressed)
    return found


class IceTransport:
    """An ICE session on its own UDP sockets, as an async context manager.

    ``async with IceTransport(controlling=True, host_addresses=["127.0.0.1"]) as ice``
    binds one socket per host address and starts gathering. Exchange
    :attr:`local_ufrag`/:attr:`local_pwd` and :meth:`local_candidates` with the peer
    (signaling), feed theirs to :meth:`set_remote_credentials` and
    :meth:`add_remote_candidate`, then ``await ice.connect()``. After that,
    :meth:`send` / :meth:`receive` carry datagrams (DTLS) on the selected pair.

    ``pacing`` is Ta, the interval between new connectivity checks (RFC 8445
    section 14.2): 50 ms unless both peers proposed a value (``a=ice-pacing``), in
    which case pass the higher of the two (5 ms at least). The controlling side
    nominates with the check after its first success, so on a quiet path Ta is most
    of the time ICE takes.

    Raises: :class:`trio.BrokenResourceError` (cause :class:`IceError`) once ICE
    failed or consent was lost; :class:`trio.ClosedResourceError` after :meth:`aclose`.
    """

    def __init__(
        self,
        controlling: bool,
        *,
        host_addresses: Sequence[str] | None = None,
        include_loopback: bool = False,
        port: int = 0,
        stun_servers: Sequence[tuple[str, int]] = (),
        socket_factory: SocketFactory | None = None,
        local_ufrag: str | None = None,
        local_pwd: str | None = None,
        rng: random.Random | None = None,
        inbox_size: int = 64,
        receive_buffer_size: int = 256,
        pacing: float = TA,
    ) -> None:
        self.agent = IceAgent(
            controlling, local_ufrag=local_ufrag, local_pwd=local_pwd, rng=rng, pacing=pacing
        )
        self._stun_servers = list(stun_servers)
        self._host_addresses = host_addresses
        self._include_loopback = include_loopback
        self._port = port
        self._socket_factory = socket_factory or _udp_socket
        self._sockets: dict[tuple[str, int], DatagramSocket] = {}
        self._inbox_send, self._inbox_receive = trio.open_memory_channel[
            tuple[bytes, tuple[str, int], tuple[str, int]] | None
        ](inbox_size)
        self._received_send, self._received_receive = trio.open_memory_channel[bytes](
            receive_buffer_size
        )
        self._local_candidates: list[Candidate] = []
        self._gathering_complete = False
        self._candidates_changed = trio.Event()
        self._settled = trio.Event()  # connected, failed or closed
        self._failure: IceError | None = None
        self._closed = False
        self._counts = {"datagrams_received": 0, "datagrams_sent": 0, "send_errors": 0}
        self._received_dropped = 0
        self._nursery: trio.Nursery | None = None
        self._exit_stack = contextlib.AsyncExitStack()

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> IceTransport:
        try:
            self._nursery = await self._exit_stack.enter_async_context(trio.open_nursery())
            for server in self._stun_servers:
                for resolved in await _resolve(server):
                    self.agent.add_stun_server(resolved)
            addresses = self._host_addresses
            enumerated = addresses is None
            if addresses is None:
                addresses = host_addresses(self._include_loopback)
            for host in addresses:
                try:
                    sock = await self._socket_factory((host, self._port))
                except OSError:
                    if not enumerated:
                        raise
                    continue  # e.g. an interface address that cannot be bound
                self._exit_stack.callback(sock.close)
                local = sock.getsockname()
                local = (ipaddress.ip_address(local[0]).compressed, int(local[1]))
                self._sockets[local] = sock
                self.agent.add_local_candidate(local)
            if not self._sockets:
                raise OSError("no host address to bind")
            for local, sock in self._sockets.items():
                self._nursery.start_soon(self._read_socket, sock, local, name=f"ice reader {local}")
            self.agent.gather(trio.current_time())
            self._nursery.start_soon(self._own_core, name="ice core owner")
        except BaseException:
            self._closed = True
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()
            await self._exit_stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        self._close_now()
        try:
            return await self._exit_stack.__aexit__(exc_type, exc, traceback)
        except BaseExceptionGroup as group:
            # Our tasks never raise, so a group holding only the body's exception is
            # the nursery's wrapping: give the caller their exception back.
            if exc is not None and list(group.exceptions) == [exc]:
                raise exc from exc.__cause__  # noqa: B904
            raise

    async def aclose(self) -> None:
        """Stop ICE and the tasks; sockets close when the context manager exits."""
        self._close_now()
        await trio.lowlevel.checkpoint()

    def _close_now(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.agent.close()
        self._received_receive.close()
        self._settled.set()
        self._candidates_changed.set()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # ------------------------------------------------------------ signaling

    @property
    def local_ufrag(self) -> str:
        return self.agent.local_ufrag

    @property
    def local_pwd(self) -> str:
        return self.agent.local_pwd

    @property
    def local_addresses(self) -> list[tuple[str, int]]:
        """The bound socket addresses."""
        return list(self._sockets)

    async def local_candidates(self) -> AsyncIterator[Candidate]:
        """Every local candidate, as gathered (trickle); ends when gathering completes.

        After :meth:`restart` this iterator ends: iterate again for the new generation.
        """
        candidates = self._local_candidates
        sent = 0
        while candidates is self._local_candidates:
            while sent < len(candidates):
                yield candidates[sent]
                sent += 1
            if self._gathering_complete or self._closed:
                return
            await self._candidates_changed.wait()

    def set_remote_credentials(self, ufrag: str, pwd: str) -> None:
        self._check_open()
        self.agent.set_remote_credentials(ufrag, pwd, trio.current_time())
        self._wake()

    def add_remote_candidate(self, candidate: Candidate | None) -> None:
        """Trickle a remote candidate; ``None`` signals end-of-candidates."""
        self._check_open()
        self.agent.add_remote_candidate(candidate, trio.current_time())
        self._wake()

    def restart(self) -> None:
        """ICE restart: new local ufrag/pwd and candidates to signal again.

        The selected pair keeps carrying data until the restarted session selects
        one; :meth:`local_candidates` then yields the new generation.
        """
        self._check_usable()
        self._local_candidates = []
        self._gathering_complete = False
        self._settled = trio.Event()
        self.agent.restart(trio.current_time())
        self._wake()

    async def connect(self) -> None:
        """Wait until a pair is selected (bound it with ``trio.fail_after``)."""
        await self._settled.wait()
        self._check_usable()

    # ------------------------------------------------------------ data path

    async def send(self, datagram: bytes) -> None:
        """Send one datagram on the selected pair."""
        self._check_usable()
        transmit = self.agent.send_data(datagram)
        if transmit is None:
            await trio.lowlevel.checkpoint()
            raise trio.BrokenResourceError("ICE has no selected pair") from self._failure
        await self._send_datagram(transmit.data, transmit.addr, transmit.local)

    async def receive(self) -> bytes:
        """The next non-STUN datagram (DTLS) from the peer."""
        if self._closed:
            raise trio.ClosedResourceError("ICE transport was closed")
        try:
            return await self._received_receive.receive()
        except trio.EndOfChannel:
            raise trio.BrokenResourceError("ICE transport failed") from self._failure
        except trio.ClosedResourceError:
            raise trio.ClosedResourceError("ICE transport was closed") from None

    def statistics(self) -> IceTransportStatistics:
        return IceTransportStatistics(
            ice=self.agent.statistics(),
            received_buffered=self._received_receive.statistics().current_buffer_used,
            received_dropped=self._received_dropped,
            **self._counts,
        )

    # ------------------------------------------------------------ tasks

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("ICE transport was closed")

    def _check_usable(self) -> None:
        self._check_open()
        if self._failure is not None:
            raise trio.BrokenResourceError("ICE transport failed") from self._failure

    def _wake(self) -> None:
        with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError):
            self._inbox_send.send_nowait(None)

    async def _read_socket(self, sock: DatagramSocket, local: tuple[str, int]) -> None:
        while True:
            try:
                data, addr = await sock.recvfrom(_RECV_SIZE)
            except (ConnectionResetError, ConnectionRefusedError):
                continue  # an ICMP error for an earlier send: not fatal for UDP
            except (OSError, trio.ClosedResourceError):
                return
            self._counts["datagrams_received"] += 1
            await self._inbox_send.send((data, (addr[0], int(addr[1])), local))

    async def _own_core(self) -> None:
        agent = self.agent
        while True:
            self._dispatch_events()
            while (transmit := agent.poll_transmit()) is not None:
                await self._send_datagram(transmit.data, transmit.addr, transmit.local)
            deadline = agent.poll_timeout()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                item = await self._inbox_receive.receive()
                if item is not None:
                    data, addr, local = item
                    agent.receive(data, addr, trio.current_time(), local)
                continue
            agent.handle_timeout(trio.current_time())

    def _dispatch_events(self) -> None:
        while (event := self.agent.poll_event()) is not None:
            if isinstance(event, DataReceived):
                try:
                    self._received_send.send_nowait(event.data)
                except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                    self._received_dropped += 1
            elif isinstance(event, CandidateGathered):
                self._local_candidates.append(event.candidate)
                self._notify_candidates()
            elif isinstance(event, GatheringComplete):
                self._gathering_complete = True
                self._notify_candidates()
            elif isinstance(event, ConsentLost):
                self._fail(IceError("consent to send expired (RFC 7675)"))
            elif isinstance(event, IceStateChanged):
                if event.state is IceState.CONNECTED:
                    self._settled.set()
                elif event.state is IceState.FAILED:
                    self._fail(IceError("ICE connectivity checks failed"))

    def _notify_candidates(self) -> None:
        self._candidates_changed.set()
        self._candidates_changed = trio.Event()

    def _fail(self, error: IceError) -> None:
        if self._failure is None:
            self._failure = error
        self._received_send.close()
        self._settled.set()

    async def _send_datagram(
        self, data: bytes, addr: tuple[str, int], local: tuple[str, int] | None
    ) -> None:
        sock = self._sockets.get(local) if local is not None else None
        if sock is None:
            sock = next(iter(self._sockets.values()))
        try:
            await sock.sendto(data, addr)
            self._counts["datagrams_sent"] += 1
        except OSError:
            # Unreachable candidates are ICE's business (the check times out).
            self._counts["send_errors"] += 1
