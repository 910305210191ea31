"""The relay's TURN service (RFC 8656): the trio driver of :class:`darkswap_trio.proto.turn.TurnServer`.

STUN and TURN share the STUN port, as coturn does: on UDP and on TCP (same port
number), Binding requests go to the STUN binding service (its rate limits and
reflection rules), everything else (TURN requests, Send indications, ChannelData) to
the TURN core. Each allocation has its own UDP socket bound on ``relay_ip``.

```
serve_turn                          one nursery, owns everything below
 ├─ UDP reader (client port)        STUN Binding -> relay._stun; the rest -> core
 ├─ TCP listener (same port)        one task per connection: deframer -> core,
 │                                  plus a writer draining a bounded queue
 ├─ TLS listener (tls_port)         the same per connection, over TLS (RFC 8656
 │                                  section 3.1: TURN over TLS on its own port)
 ├─ timer task                      core.handle_timeout at core.poll_timeout()
 └─ one reader per allocation       relayed socket -> core.receive_from_peer
```

The core is synchronous and every task runs in one thread, so each task that receives
calls the core itself and then :meth:`TurnService.flush` (no hop through a channel per
datagram: the data path is the hot path); the timer task is woken when an input brings
the next deadline forward. On UDP the hot path also skips trio's per-call checkpoint:
a reader waits for readability, then drains up to ``DRAIN`` datagrams with plain
non-blocking calls, and datagrams are sent with a non-blocking ``sendto`` (awaiting
trio's only when the kernel buffer is full): two checkpoints per datagram were about a
fifth of the server's CPU per relayed datagram (benchmarks/bench_turn.py, 27 -> 21 us).
Memory is bounded by the core's quotas, the kernel socket buffers and one bounded queue
per TCP client (overflow is dropped and counted).
"""

from __future__ import annotations

import collections
import errno
import logging
import math
import os
import socket
import ssl
import struct
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from darkswap_trio.proto.errors import TurnParseError
from darkswap_trio.proto.turn import (
    AllocationClosed,
    AllocationRequested,
    ClientKey,
    LimitHit,
    StreamDeframer,
    ToClient,
    ToPeer,
    TurnServer,
    TurnServerSettings,
)

from ._config import ConfigError, RelayConfig
from ._limits import KeyedRateLimiter, TokenBucket, canonical_ip
from ._metrics import RelayMetrics
from ._stun import _open_socket, answer_binding

__all__ = ["TurnService", "read_turn_secret", "serve_turn", "turn_settings"]

logger = logging.getLogger("relay.turn")

MAX_DATAGRAM = 65536
TCP_QUEUE = 256  # messages queued per TCP client before further ones are dropped
TCP_ALLOCATE_TIMEOUT = 30.0
EVEN_PORT_TRIES = 32
DRAIN = 64  # datagrams a UDP reader takes without a checkpoint after an awaited one
PORT_TRIES = 16  # a TCP connection without an allocation after this is closed
_BINDING = 0x0001


def read_turn_secret(path: str) -> bytes:
    """The shared secret from ``path`` (surrounding whitespace stripped); raises ConfigError."""
    try:
        secret = open(path, "rb").read().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read turn.secret_file {path!r}: {exc}") from exc
    if len(secret) < 16:
        raise ConfigError(f"turn.secret_file {path!r} holds fewer than 16 bytes")
    return secret


def turn_settings(config: RelayConfig) -> TurnServerSettings:
    """The core's settings from the relay configuration (reads the secret file)."""
    turn = config.turn
    assert turn.secret_file is not None
    relay_ip = turn.relay_ip(config.host)
    own = tuple(a for a in {config.host, relay_ip} if a not in ("", "0.0.0.0", "::"))
    return TurnServerSettings(
        realm=turn.realm,
        secret=read_turn_secret(turn.secret_file),
        relay_ip=relay_ip,
        own_addresses=own,
        allow_loopback_peers=turn.allow_loopback_peers,
        default_lifetime=turn.default_lifetime,
        max_lifetime=turn.max_lifetime,
        max_allocations=turn.max_allocations,
        max_allocations_per_user=turn.max_allocations_per_user,
        max_allocations_per_ip=turn.max_allocations_per_ip,
        max_permissions_per_allocation=turn.max_permissions_per_allocation,
        max_channels_per_allocation=turn.max_channels_per_allocation,
        bandwidth_per_allocation=turn.bandwidth_per_allocation,
        bandwidth_burst=turn.bandwidth_burst,
        rfc5766_channels=turn.rfc5766_channels,
    )


def _is_binding(data: bytes) -> bool:
    """STUN (first byte 0-3) with method Binding, or too short to be anything else."""
    if len(data) < 2:
        return True
    if data[0] > 3:
        return False
    return bool(struct.unpack_from("!H", data)[0] & 0x3EEF == _BINDING)


@dataclass
class _Relayed:
    sock: Any  # trio socket (awaited calls)
    raw: socket.socket  # the same socket, for non-blocking calls on the hot path
    scope: trio.CancelScope


class TurnService:
    """A running TURN service: the core, its sockets and its queues."""

    def __init__(
        self,
        core: TurnServer,
        metrics: RelayMetrics,
        udp: Any,
        nursery: trio.Nursery,
        stun_limits: tuple[KeyedRateLimiter | None, TokenBucket | None],
        max_tcp_connections: tuple[int, int],
    ) -> None:
        self.core = core
        self.port: int = udp.getsockname()[1]
        self.tls_port: int | None = None  # set by serve_turn when TURN over TLS is served
        self._metrics = metrics
        self._udp = udp
        # The client socket's file description, for non-blocking calls (closed by serve_turn).
        self._udp_raw = socket.socket(fileno=os.dup(udp.fileno()))
        self._nursery = nursery
        self._stun_limits = stun_limits
        self._max_tcp, self._max_tcp_per_ip = max_tcp_connections
        self._tcp_per_ip: collections.Counter[str] = collections.Counter()
        self._relayed: dict[int, _Relayed] = {}
        self._tcp_out: dict[ClientKey, trio.MemorySendChannel[bytes]] = {}
        self._wake = trio.Event()
        self._sleeping_until = math.inf

    def close(self) -> None:
        """Release what the service owns beyond its tasks (the duplicated UDP socket)."""
        self._udp_raw.close()

    # -- core output --------------------------------------------------------------

    async def flush(self) -> None:
        """Act on the core's events, then send its transmits (called after every input)."""
        core = self.core
        while (event := core.poll_event()) is not None:
            self._handle_event(event)
        while (transmit := core.poll_transmit()) is not None:
            if isinstance(transmit, ToPeer):
                relayed = self._relayed.get(transmit.allocation_id)
                if relayed is not None and not self._send_now(
                    relayed.raw, transmit.data, transmit.peer
                ):
                    await self._sendto(relayed.sock, transmit.data, transmit.peer)
            elif transmit.client[0] == "udp":
                if transmit.unauthenticated and not self._may_answer(transmit.client[1][0]):
                    continue
                if not self._send_now(self._udp_raw, transmit.data, transmit.client[1]):
                    await self._sendto(self._udp, transmit.data, transmit.client[1])
            else:
                self._queue_tcp(transmit)
        deadline = core.poll_timeout()
        if deadline is not None and deadline < self._sleeping_until:
            self._wake.set()

    def _may_answer(self, ip: str) -> bool:
        """Unauthenticated UDP answers share the STUN per-IP budget (reflection)."""
        limiter = self._stun_limits[0]
        if limiter is None or limiter.try_take(canonical_ip(ip), 1, trio.current_time()):
            return True
        self.core.counters["drop_rate_limited"] += 1
        self._metrics.limit_hit("turn_unauthenticated_per_ip")
        return False

    def _send_now(self, raw: socket.socket, data: bytes, addr: tuple[str, int]) -> bool:
        """Send without waiting; False when the kernel buffer is full (then await)."""
        try:
            raw.sendto(data, addr)
        except BlockingIOError:
            return False
        except OSError:  # unreachable, too big, ICMP errors: the datagram is lost
            self.core.counters["drop_socket_error"] += 1
        return True

    async def _sendto(self, sock: Any, data: bytes, addr: tuple[str, int]) -> None:
        try:
            await sock.sendto(data, addr)
        except OSError:  # unreachable, too big, ICMP errors: the datagram is lost
            self.core.counters["drop_socket_error"] += 1

    def _queue_tcp(self, transmit: ToClient) -> None:
        channel = self._tcp_out.get(transmit.client)
        if channel is None:
            return
        try:
            channel.send_nowait(transmit.data)
        except trio.WouldBlock:  # a slow TCP client loses data, never stalls the relay
            self.core.counters["drop_tcp_backpressure"] += 1
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def _handle_event(self, event: Any) -> None:
        now = trio.current_time()
        if isinstance(event, AllocationRequested):
            try:
                sock, raw = self._bind_relayed(event.even_port)
            except OSError:
                logger.warning("cannot bind a relayed socket", exc_info=True)
                self.core.allocation_failed(event.allocation_id, now)
                return
            if not self.core.allocation_bound(event.allocation_id, sock.getsockname()[:2], now):
                sock.close()
                return
            relayed = _Relayed(sock, raw, trio.CancelScope())
            self._relayed[event.allocation_id] = relayed
            self._nursery.start_soon(self._peer_reader, event.allocation_id, relayed)
        elif isinstance(event, AllocationClosed):
            closed = self._relayed.pop(event.allocation_id, None)
            if closed is not None:
                closed.scope.cancel()
        elif isinstance(event, LimitHit):
            self._metrics.limit_hit("turn_" + event.limit)

    def _bind_relayed(self, even_port: bool) -> tuple[Any, socket.socket]:
        """A UDP socket on relay_ip, an ephemeral port (even when asked: a few tries):
        the trio socket and the stdlib socket it wraps."""
        for _ in range(EVEN_PORT_TRIES if even_port else 1):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.bind((self.core.settings.relay_ip, 0))
            except OSError:
                sock.close()
                raise
            if not even_port or sock.getsockname()[1] % 2 == 0:
                return trio.socket.from_stdlib_socket(sock), sock
            sock.close()
        raise OSError("no even port found")

    # -- tasks ----------------------------------------------------------------------

    async def run_timers(self) -> None:
        """Call ``core.handle_timeout`` at ``core.poll_timeout()``; woken early by
        :meth:`flush` when an input brought the next deadline forward."""
        while True:
            self._feed(self.core.handle_timeout, trio.current_time())
            await self.flush()
            # No checkpoint from here to wait(): no other task can move the deadline
            # between reading it and sleeping on a fresh event.
            self._wake = trio.Event()
            deadline = self.core.poll_timeout()
            self._sleeping_until = math.inf if deadline is None else deadline
            with trio.move_on_at(self._sleeping_until):
                await self._wake.wait()
            self._sleeping_until = math.inf

    async def run_udp(self) -> None:
        raw = self._udp_raw
        while True:
            await trio.lowlevel.wait_readable(raw)  # the checkpoint of each DRAIN datagrams
            for _ in range(DRAIN):
                try:
                    data, source = raw.recvfrom(MAX_DATAGRAM)
                except BlockingIOError:
                    break
                except OSError:  # an ICMP error queued on the socket
                    continue
                await self._from_client(data, source)

    async def _from_client(self, data: bytes, source: Any) -> None:
        source = (source[0], source[1])
        now = trio.current_time()
        if _is_binding(data):
            reply = answer_binding(data, source, self._metrics, *self._stun_limits, now)
            if reply is not None:
                await self._sendto(self._udp, reply, source)
            return
        self._feed(self.core.receive, ("udp", source), data, now)
        await self.flush()

    async def _peer_reader(self, allocation_id: int, relayed: _Relayed) -> None:
        receive_from_peer = self.core.receive_from_peer
        raw = relayed.raw
        with relayed.sock, relayed.scope:
            while True:
                await trio.lowlevel.wait_readable(raw)
                for _ in range(DRAIN):
                    try:
                        data, source = raw.recvfrom(MAX_DATAGRAM)
                    except BlockingIOError:
                        break
                    except OSError:  # an ICMP error queued on the socket
                        continue
                    peer = (source[0], source[1])
                    self._feed(receive_from_peer, allocation_id, peer, data, trio.current_time())
                    await self.flush()

    def _feed(self, method: Any, *args: Any) -> None:
        """Call a core input; a bug on one input is logged, never stops the service."""
        try:
            method(*args)
        except Exception:
            logger.exception("TURN input handling failed")
            self.core.counters["drop_internal_error"] += 1

    async def handle_tcp(self, stream: trio.abc.Stream) -> None:
        """One TCP or TLS client: STUN/ChannelData framing (RFC 8656 section 12.5) both
        ways. Contained: whatever goes wrong ends this connection only."""
        try:
            await self._serve_tcp(stream)
        except Exception:
            logger.exception("TURN TCP connection handling failed")

    async def _serve_tcp(self, stream: trio.abc.Stream) -> None:
        async with stream:
            kind = "tls" if isinstance(stream, trio.SSLStream) else "tcp"
            transport = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
            assert isinstance(transport, trio.SocketStream)
            try:
                peer = transport.socket.getpeername()
            except OSError:  # already reset
                return
            client: ClientKey = (kind, (peer[0], peer[1]))
            ip = canonical_ip(peer[0])
            if len(self._tcp_out) >= self._max_tcp:
                self._metrics.limit_hit("turn_tcp_connections")
                return
            if self._tcp_per_ip[ip] >= self._max_tcp_per_ip:
                self._metrics.limit_hit("turn_tcp_connections_per_ip")
                return
            send, receive = trio.open_memory_channel[bytes](TCP_QUEUE)
            self._tcp_out[client] = send
            self._tcp_per_ip[ip] += 1
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._tcp_writer, stream, receive)
                    await self._tcp_reader(stream, client)
                    nursery.cancel_scope.cancel()
            finally:
                del self._tcp_out[client]
                self._tcp_per_ip[ip] -= 1
                if not self._tcp_per_ip[ip]:
                    del self._tcp_per_ip[ip]
                send.close()
                self._feed(self.core.client_closed, client, trio.current_time())
                with trio.CancelScope(shield=True):
                    await self.flush()

    async def _tcp_reader(self, stream: trio.abc.Stream, client: ClientKey) -> None:
        deframer = StreamDeframer(0x7FFF if self.core.settings.rfc5766_channels else 0x4FFF)
        deadline = trio.current_time() + TCP_ALLOCATE_TIMEOUT
        while True:
            if self.core.has_allocation(client):
                deadline = math.inf
            data: bytes | bytearray = b""  # stays empty when the deadline passes
            with trio.move_on_at(deadline) as scope:
                try:
                    data = await stream.receive_some(MAX_DATAGRAM)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
            if scope.cancelled_caught or not data:
                return
            try:
                messages = deframer.feed(bytes(data))  # bytes already: no copy
            except TurnParseError:
                self.core.counters["drop_bad_tcp_framing"] += 1
                return
            for message in messages:
                now = trio.current_time()
                if _is_binding(message):
                    reply = answer_binding(
                        message, client[1], self._metrics, *self._stun_limits, now
                    )
                    if reply is not None:
                        self._queue_tcp(ToClient(client, reply))
                    continue
                self._feed(self.core.receive, client, message, now)
                await self.flush()

    async def _tcp_writer(
        self, stream: trio.abc.Stream, receive: trio.MemoryReceiveChannel[bytes]
    ) -> None:
        # One write for everything queued: a send_all per frame (two checkpoints each)
        # fell behind a peer reader that queues up to DRAIN frames per wake, and the
        # queue overflowed (drop_tcp_backpressure) however fast the client read.
        async with receive:
            async for data in receive:
                parts = [data]
                while len(parts) < TCP_QUEUE:
                    try:
                        parts.append(receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                try:
                    await stream.send_all(b"".join(parts))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return


class _TurnCollector(Collector):
    """TURN figures read from the core's counters when /metrics is scraped."""

    def __init__(self, core: TurnServer) -> None:
        self._core = core

    def collect(self) -> Any:
        prefix = "darkswap_relay_turn_"
        counters = self._core.counters
        stats = self._core.statistics()
        yield GaugeMetricFamily(
            prefix + "allocations_active", "TURN allocations.", stats.allocations
        )
        yield GaugeMetricFamily(
            prefix + "permissions_active", "TURN permissions.", stats.permissions
        )
        yield GaugeMetricFamily(
            prefix + "channels_active", "TURN channel bindings.", stats.channels
        )
        yield CounterMetricFamily(
            prefix + "allocations", "TURN allocations created.", counters["allocations_created"]
        )
        relayed = CounterMetricFamily(
            prefix + "relayed_bytes", "Payload bytes relayed by TURN.", labels=("direction",)
        )
        relayed.add_metric(("to_peer",), counters["bytes_to_peer"])
        relayed.add_metric(("to_client",), counters["bytes_to_client"])
        yield relayed
        responses = CounterMetricFamily(
            prefix + "responses",
            "TURN responses sent, by code (ok or an error code).",
            labels=("code",),
        )
        dropped = CounterMetricFamily(
            prefix + "dropped",
            "TURN messages and datagrams dropped, by reason.",
            labels=("reason",),
        )
        for name, value in sorted(counters.items()):
            if name.startswith("response_"):
                responses.add_metric((name[len("response_") :],), value)
            elif name.startswith("drop_"):
                dropped.add_metric((name[len("drop_") :],), value)
        yield responses
        yield dropped


async def _open_both(host: str, port: int) -> tuple[Any, list[trio.SocketListener]]:
    """The UDP socket and TCP listeners on one port number; with ``port`` 0, a few
    tries (the free UDP port may be in use on TCP)."""
    # trio's IPv6 listeners are IPv6-only: for "::" listen on both families.
    tcp_host = None if host in ("", "::") else host
    for attempt in range(PORT_TRIES if port == 0 else 1):
        udp = await _open_socket(host, port)
        try:
            return udp, await trio.open_tcp_listeners(udp.getsockname()[1], host=tcp_host)
        except OSError as exc:
            udp.close()
            if exc.errno != errno.EADDRINUSE or attempt == PORT_TRIES - 1 or port != 0:
                raise
    raise AssertionError("unreachable")


async def serve_turn(
    host: str,
    port: int,
    settings: TurnServerSettings,
    metrics: RelayMetrics,
    *,
    rate_limiter: KeyedRateLimiter | None = None,
    total_limiter: TokenBucket | None = None,
    max_tcp_connections: int = 1000,
    max_tcp_connections_per_ip: int = 16,
    tls_port: int | None = None,
    ssl_context: ssl.SSLContext | None = None,
    task_status: trio.TaskStatus[TurnService] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve STUN Binding and TURN on UDP and TCP ``host:port`` until cancelled, and
    over TLS on ``host:tls_port`` when ``tls_port`` is not None (needs ``ssl_context``).

    Calls ``task_status.started(service)``; ``service.port`` is the bound port (the
    same number on UDP and TCP; ``port=0`` picks a free UDP port, then TCP takes it),
    ``service.tls_port`` the TLS one. TCP and TLS connections share the TCP quotas.
    ``rate_limiter`` / ``total_limiter`` apply to Binding requests as in ``serve_stun``.
    """
    if tls_port is not None and ssl_context is None:
        raise ValueError("TURN over TLS needs an ssl_context")
    udp, listeners = await _open_both(host, port)
    tls_listeners: list[trio.SSLListener[trio.SocketStream]] = []
    raw: list[trio.SocketListener] = []
    if tls_port is not None:
        assert ssl_context is not None
        tcp_host = None if host in ("", "::") else host
        try:
            raw = await trio.open_tcp_listeners(tls_port, host=tcp_host)
        except OSError:
            udp.close()
            for listener in listeners:
                await listener.aclose()
            raise
        tls_listeners = [trio.SSLListener(lst, ssl_context, https_compatible=False) for lst in raw]
    with udp:
        bound = udp.getsockname()[1]
        core = TurnServer(settings, unix_offset=time.time() - trio.current_time())
        collector = _TurnCollector(core)
        metrics.registry.register(collector)
        service: TurnService | None = None
        try:
            async with trio.open_nursery() as nursery:
                service = TurnService(
                    core,
                    metrics,
                    udp,
                    nursery,
                    (rate_limiter, total_limiter),
                    (max_tcp_connections, max_tcp_connections_per_ip),
                )
                nursery.start_soon(service.run_udp)
                nursery.start_soon(service.run_timers)
                await nursery.start(
                    partial(
                        trio.serve_listeners,
                        service.handle_tcp,
                        listeners,
                        handler_nursery=nursery,
                    )
                )
                if tls_listeners:
                    await nursery.start(
                        partial(
                            trio.serve_listeners,
                            service.handle_tcp,
                            tls_listeners,
                            handler_nursery=nursery,
                        )
                    )
                    service.tls_port = raw[0].socket.getsockname()[1]
                logger.info(
                    "STUN/TURN listening (UDP and TCP)",
                    extra={
                        "host": host,
                        "port": bound,
                        "tls_port": service.tls_port,
                        "realm": settings.realm,
                    },
                )
                task_status.started(service)
        finally:
            metrics.registry.unregister(collector)
            if service is not None:
                service.close()
