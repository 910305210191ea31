"""The relay server: a trio nursery tree (docs/PROTOCOL.md, DESIGN.md "Relay server").

```
serve_relay(config)                 root nursery; started(RelayServer)
 ├─ WebSocket listener              per-IP / rate / capacity checks before accepting
 │   └─ session nursery            one SignalingSession per connection (reader + writer)
 ├─ circuit nursery                 RelayRouter.run_circuit_timer (duration / stall deadlines)
 ├─ load watcher                    event-loop lag -> relay-wide budgets (relay._abuse)
 ├─ STUN UDP service                (stun_port is not None); with turn.enabled, the
 │                                  TURN service (relay._turn) on UDP and TCP instead,
 │                                  answering STUN Binding on the same port (and over
 │                                  TLS on turn.tls_port when set)
 └─ HTTP /metrics, /healthz         (metrics_port is not None; on metrics_host, loopback
                                     by default)
```

Errors are contained per session: a crashing session is logged, told ``internal_error``
and closed; the server goes on. :meth:`RelayServer.shutdown` stops accepting, tells every
peer ``server_shutdown`` (circuits and sessions), waits at most ``grace`` for the sessions
to close, then cancels the rest; ``serve_relay`` returns.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import ssl
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from darkswap_trio import Keypair, __version__, load_or_create_keypair
from darkswap_trio.proto.signaling import Error, encode_message
from darkswap_trio.proto.upgrade_challenge import challenge_header
from darkswap_trio.websocket import WebSocketRequest, serve_websocket

from ._admission import ConnectionAdmission
from ._config import (
    LIVE_AUTH,
    LIVE_LIMITS,
    ConfigError,
    RelayConfig,
    announce_multiaddr,
    config_changes,
)
from ._handshake import upgrade_nonce
from ._limits import KeyedRateLimiter, TokenBucket
from ._logging import SessionContext, session_context
from ._metrics import RelayMetrics, serve_metrics_http
from ._router import RelayRouter
from ._session import SignalingSession
from ._turn_credentials import TurnCredentialIssuer, turn_uris
from ._worker_slot import WorkerSlot
from .cluster._mesh import mesh_listen_port, mesh_locator, serve_mesh
from .cluster._mesh_wire import MESH_PATH

logger = logging.getLogger("relay.server")

SIGNALING_PATH = "/signaling"
# The WebSocket layer refuses (closes 1009) only far above max_frame_size, so that a
# frame somewhat too large gets the protocol's frame_too_large error and the session goes on.
_WS_SIZE_FACTOR = 4


@dataclass(frozen=True)
class RelayStatistics:
    sessions: int  # open WebSocket sessions (registered or not)
    registered_peers: int
    circuits: int
    buffered_bytes: int  # bytes queued inside the relay (session send queues, held frames)


class RelayServer:
    """Handle on a running relay, given by ``nursery.start(serve_relay, config)``."""

    def __init__(self, config: RelayConfig, router: RelayRouter, metrics: RelayMetrics) -> None:
        self.config = config
        self.router = router
        self.metrics = metrics
        self.peer_id: str = router.relay_peer_id
        self.signaling_port: int = 0
        self.stun_port: int | None = None
        self.turn_tls_port: int | None = None
        self.metrics_port: int | None = None
        self.mesh_port: int | None = None  # a worker's private listener for mesh links
        self.turn: Any = None  # relay._turn.TurnService when TURN is enabled
        self.mesh: Any = None  # relay.cluster._mesh.MeshService in a cluster
        self.host: str = config.host
        self.tls = config.tls_cert is not None
        self._root: trio.CancelScope | None = None
        self._listener_scopes: list[trio.CancelScope] = []  # signaling (+ a worker's mesh)
        self._stopped = trio.Event()
        self.admission: ConnectionAdmission | None = None
        self.jwt_validator: Any = None  # JwtValidator in jwt mode; replaced by reload()
        self._jwt_material: str | None = None  # the key it was built from

    @property
    def multiaddr(self) -> str:
        """What peers dial: ``config.announce`` if set, else derived from the bound address."""
        if self.config.announce is not None:
            return announce_multiaddr(
                self.config.announce, self.peer_id, self.signaling_port, self.tls
            )
        host = self.host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        try:
            proto = "ip6" if ipaddress.ip_address(host).version == 6 else "ip4"
        except ValueError:
            proto = "dns"
        ws = "tls/ws" if self.tls else "ws"
        return f"/{proto}/{host}/tcp/{self.signaling_port}/{ws}/p2p/{self.peer_id}"

    @property
    def advertise(self) -> str:
        """``host:port`` other cluster nodes dial (``cluster.advertise`` or the bound one)."""
        if self.config.cluster.advertise is not None:
            return self.config.cluster.advertise
        host_port = self.url.split("//", 1)[1].split("/", 1)[0]
        if self.mesh_port is None:
            return host_port
        return f"{host_port.rsplit(':', 1)[0]}:{self.mesh_port}"

    @property
    def url(self) -> str:
        host = self.host if self.host not in ("0.0.0.0", "", "::") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        scheme = "wss" if self.tls else "ws"
        return f"{scheme}://{host}:{self.signaling_port}{SIGNALING_PATH}"

    def statistics(self) -> RelayStatistics:
        sessions, registered_peers, circuits = self.router.counts()
        return RelayStatistics(
            sessions=sessions,
            registered_peers=registered_peers,
            circuits=circuits,
            buffered_bytes=self.router.queued_bytes,
        )

    def health(self) -> tuple[bool, dict[str, Any]]:
        stats = self.statistics()
        return (
            not self.router.shutting_down,
            {
                "status": "shutting_down" if self.router.shutting_down else "ok",
                "peer_id": self.peer_id,
                "sessions": stats.sessions,
                "circuits": stats.circuits,
                **({"cluster": self.router.cluster.health()} if self.router.cluster else {}),
            },
        )

    def reload(self, new: RelayConfig) -> tuple[list[str], list[str]]:
        """Apply what can change on a running relay (SIGHUP): limits in ``LIVE_LIMITS``
        and the JWT verification settings. Returns (applied, ignored) setting names;
        ignored ones need a restart. Raises ConfigError (nothing applied) for a bad
        configuration or an unusable JWT key.
        """
        new.validate()
        applied, ignored = config_changes(self.config, new)
        validator = self.jwt_validator
        if self.config.auth.mode == "jwt" and new.auth.mode == "jwt":
            from ._auth import JwtValidator

            try:
                material = new.jwt_key_material()
            except OSError as exc:
                raise ConfigError(f"cannot read auth.jwt_key_file: {exc}") from exc
            if material != self._jwt_material and not {"auth.jwt_key", "auth.jwt_key_file"} & set(
                applied
            ):
                applied.append("auth.jwt_key_file")  # same file, new contents (key rotation)
            if material != self._jwt_material or any(k.startswith("auth.") for k in applied):
                validator = JwtValidator(new.auth, material)  # may raise: then apply nothing
                self._jwt_material = material
        for key in applied:
            section, _, name = key.partition(".")
            if section == "limits" and name in LIVE_LIMITS:
                setattr(self.config.limits, name, getattr(new.limits, name))
            elif section == "auth" and name in LIVE_AUTH:
                setattr(self.config.auth, name, getattr(new.auth, name))
        self.jwt_validator = validator
        self.router.apply_limits()
        return applied, ignored

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting, tell every peer, wait at most ``grace`` s, then stop everything."""
        grace = self.config.shutdown_grace if grace is None else grace
        router = self.router
        if not router.shutting_down:
            for scope in self._listener_scopes:
                scope.cancel()
            router.begin_shutdown()
            with trio.move_on_after(grace):
                await router.wait_sessions_closed()
            if self._root is not None:
                self._root.cancel()
        await self._stopped.wait()


def _turn_service(config: RelayConfig, metrics: RelayMetrics) -> Any:
    """``serve_turn`` with its arguments: STUN Binding keeps its limits on the shared port."""
    from ._turn import serve_turn, turn_settings

    lim = config.limits
    assert config.stun_port is not None, "TURN answers on the STUN port"
    return partial(
        serve_turn,
        config.host,
        config.stun_port,
        turn_settings(config),
        metrics,
        rate_limiter=KeyedRateLimiter(
            lim.stun_per_ip_rate, lim.stun_per_ip_burst, lim.limiter_table_size
        ),
        total_limiter=TokenBucket(lim.stun_total_rate, lim.stun_total_burst),
        max_tcp_connections=config.turn.max_tcp_connections,
        max_tcp_connections_per_ip=config.turn.max_tcp_connections_per_ip,
        tls_port=config.turn.tls_port,
        ssl_context=_ssl_context(config) if config.turn.tls_port is not None else None,
    )


def _ssl_context(config: RelayConfig) -> ssl.SSLContext | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(config.tls_cert, config.tls_key)
    return ctx


async def serve_relay(
    config: RelayConfig,
    *,
    keypair: Keypair | None = None,
    locator: Any = None,
    worker: WorkerSlot | None = None,
    task_status: trio.TaskStatus[RelayServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the relay server until cancelled or :meth:`RelayServer.shutdown` completes.

    ``locator`` (a :class:`relay.cluster._mesh_locator.PeerLocator`, or
    ``config.mesh.static_directory``) makes this relay a cluster node: circuits to peers
    registered on other nodes go through mesh links (docs/PROTOCOL.md section 15).

    Calls ``task_status.started(server)`` once every listener is bound (ports of 0 are
    resolved in ``server.signaling_port`` / ``stun_port`` / ``metrics_port``).

    ``worker``: this process is one worker of ``darkswap-relay --workers N`` (README
    "Workers"): the signaling port is bound with SO_REUSEPORT, mesh links are served on
    a private port (``server.mesh_port``, advertised to the cluster) and proven with a
    key of this worker's own (``router.node_peer_id``).
    """
    config.validate()
    if keypair is None:
        keypair = load_or_create_keypair(config.key_file) if config.key_file else Keypair.generate()
    metrics = RelayMetrics(version=__version__)
    router = RelayRouter(config, keypair, metrics)
    server = RelayServer(config, router, metrics)
    node_keypair = keypair if worker is None else Keypair.generate()
    router.node_peer_id = str(node_keypair.peer_id)
    if config.announce is not None:
        announce_multiaddr(config.announce, server.peer_id, config.port, server.tls)  # early error
    metrics.buffered_bytes.set_function(lambda: router.queued_bytes)
    lim = config.limits
    if config.auth.mode == "jwt":
        from ._auth import JwtValidator

        server.jwt_validator = JwtValidator.from_config(config)
        server._jwt_material = config.jwt_key_material()
    # Per-IP and total caps apply from TCP accept (admission.admit/release, in the listener).
    admission = ConnectionAdmission(lim, metrics, router.abuse)
    server.admission = admission
    router.abuse.active_sessions = lambda: router.registered_count
    metrics.load_factor.set_function(lambda: router.abuse.load)

    async def handle_request(request: WebSocketRequest, mesh_listener: bool = False) -> None:
        ticket = admission.take_ticket(request.remote_address)
        ip = ticket.ip if ticket is not None else str(request.remote_address[0])
        path = request.path.split("?", 1)[0]
        # With [mesh] tls, links come only through the TLS mesh listener.
        mesh_here = mesh_listener or not config.mesh.tls
        if path == MESH_PATH and server.mesh is not None and mesh_here:
            if router.shutting_down:
                await request.reject(
                    503, encode_message(Error("the server is stopping", "server_shutdown")).encode()
                )
                return
            try:
                await server.mesh.accept(request, ticket)
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.EndOfChannel):
                pass  # the other node left during the handshake or the close
            except Exception:  # contained, like a session
                logger.exception("mesh link from %s crashed", ip)
            return
        if path != SIGNALING_PATH:
            await request.reject(404, b"not found\n")
            return
        if router.shutting_down:
            await request.reject(
                503, encode_message(Error("the server is stopping", "server_shutdown")).encode()
            )
            return
        # The handshake deadline runs from TCP accept, not from the upgrade.
        accepted_at = ticket.accepted_at if ticket is not None else None
        remote = _address_text(request.remote_address)
        context = SessionContext(
            remote, trio.current_time() if accepted_at is None else accepted_at
        )
        session_context.set(context)
        session: SignalingSession | None = None
        opened = trio.current_time()
        try:
            # The nonce the peer signs, announced in the 101 (1-RTT registration).
            nonce = upgrade_nonce(router.config.auth.mode)
            headers = () if nonce is None else (challenge_header(nonce, router.relay_peer_id),)
            ws = await request.accept(extra_headers=headers)
            session = SignalingSession(
                router, ws, ip, server.jwt_validator, accepted_at=accepted_at, server_nonce=nonce,
                on_registered=None if ticket is None else partial(admission.registered, ticket),
            )  # fmt: skip
            if ticket is not None:
                ticket.session = session  # pending until it registers
            logger.info("session open", extra={"remote": remote})
            await session.run()
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.EndOfChannel):
            pass  # the peer left during the opening handshake or the close
        except Exception:  # contained: one bad session never takes the server down
            logger.exception("session handler from %s crashed", ip)
        finally:
            if session is not None:
                _log_session_closed(session, context, trio.current_time() - opened)

    try:
        async with trio.open_nursery() as root:
            server._root = root.cancel_scope
            await root.start(_run_circuit_nursery, router)
            if lim.overload_lag > 0:
                root.start_soon(_watch_load, router.abuse)
            session_nursery = await root.start(_run_session_nursery)
            locator = mesh_locator(config, locator, router)
            if locator is not None:
                server.mesh = await root.start(serve_mesh, router, node_keypair, config, locator)

            def listen(what: str, port: int, handler: Any, tls: Any, reuse_port: bool) -> Any:
                size = lim.max_frame_size * _WS_SIZE_FACTOR
                args = (handler, tls, size, lim.handshake_timeout, session_nursery, admission)
                start = partial(root.start, _run_listener, server, *args, port, reuse_port)
                return _bind_named(what, config.host, port, start)

            listeners = await listen(
                "signaling", config.port, handle_request, _ssl_context(config), worker is not None
            )
            server.signaling_port = _bound_port(listeners)
            mesh_tls = server.mesh.server_tls if server.mesh is not None else None
            # Mesh links on a listener of their own: a worker's (a dial to the shared port
            # would reach any worker), or TLS with the node's certificate ([mesh] tls).
            if worker is not None or mesh_tls is not None:
                port = worker.mesh_port if worker is not None else mesh_listen_port(config)
                handler = partial(handle_request, mesh_listener=True)
                mesh_listeners = await listen("mesh", port, handler, mesh_tls, False)
                server.mesh_port = _bound_port(mesh_listeners)
            if config.cluster.enabled:
                from .cluster import run_cluster_node

                await root.start(run_cluster_node, router, server.advertise)
            # With --workers, worker 0 alone serves STUN/TURN (README "Workers").
            udp = config.stun_port if worker is None or worker.index == 0 else None
            if udp is not None and config.turn.enabled:
                server.turn = await _bind_named(
                    "STUN/TURN (UDP and TCP)",
                    config.host,
                    udp,
                    partial(root.start, _turn_service(config, metrics)),
                )
                server.stun_port = server.turn.port
                server.turn_tls_port = server.turn.tls_port
                router.turn_issuer = TurnCredentialIssuer(
                    server.turn.core.settings.secret,
                    config.turn.credentials_ttl,
                    tuple(config.turn.uris)
                    or turn_uris(server.multiaddr, server.turn.port, server.turn_tls_port),
                )
            elif worker is not None and config.turn.enabled:
                router.turn_issuer = worker.turn_issuer(config, server.multiaddr)
            elif udp is not None:
                from ._stun import serve_stun

                server.stun_port = await _bind_named(
                    "STUN (UDP)",
                    config.host,
                    udp,
                    partial(
                        root.start,
                        partial(
                            serve_stun,
                            config.host,
                            udp,
                            metrics,
                            rate_limiter=KeyedRateLimiter(
                                lim.stun_per_ip_rate, lim.stun_per_ip_burst, lim.limiter_table_size
                            ),
                            total_limiter=TokenBucket(lim.stun_total_rate, lim.stun_total_burst),
                        ),
                    ),
                )
            if config.metrics_port is not None:
                server.metrics_port = await _bind_named(
                    "metrics",
                    config.metrics_host,
                    config.metrics_port,
                    partial(
                        root.start,
                        _serve_metrics,
                        metrics,
                        config.metrics_host,
                        config.metrics_port,
                        server.health,
                    ),
                )
            logger.info(
                "relay %s listening on %s",
                server.peer_id,
                server.multiaddr,
                extra={"host": config.host, "port": server.signaling_port},
            )
            task_status.started(server)
    finally:
        server._stopped.set()


def _address_text(address: Any) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _log_session_closed(
    session: SignalingSession, context: SessionContext, duration: float
) -> None:
    code, close_reason = session.close_state
    reason = close_reason or context.last_error
    logger.info(
        "session closed",
        extra={
            "peer_id": session.peer_id,
            "remote": context.remote,
            "duration": round(duration, 3),
            "code": code,
            "reason": reason or _CLOSE_NAMES.get(code, "closed"),
        },
    )


# WebSocket close codes the relay uses, named for the log (RFC 6455 section 7.4.1).
_CLOSE_NAMES = {
    1000: "normal",
    1001: "going_away",
    1008: "policy",
    1009: "too_big",
    1011: "internal_error",
    None: "peer_disconnected",
}


async def _bind_named(what: str, host: str, port: int, start: Any) -> Any:
    """Run ``start()``; an OSError while binding names the service and the address."""
    try:
        return await start()
    except OSError as exc:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise OSError(exc.errno, f"{what} {where}: {exc.strerror or exc}") from exc


def _bound_port(listeners: Any) -> int:
    first = listeners[0] if isinstance(listeners, (list, tuple)) else listeners
    sock = getattr(first, "socket", None)
    if sock is None:
        sock = first.transport_listener.socket  # trio.SSLListener
    return int(sock.getsockname()[1])


async def _run_circuit_nursery(
    router: RelayRouter,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with trio.open_nursery() as circuit_nursery:
        await circuit_nursery.start(router.run_circuit_timer)
        task_status.started()


LOAD_SAMPLE_INTERVAL = 0.05


async def _watch_load(guard: Any) -> None:
    """Tell the abuse guard how late the event loop runs (a timer's lateness)."""
    while True:
        waiter = trio.Event()
        if guard.idle_until_traffic(waiter):
            await waiter.wait()
        start = trio.current_time()
        await trio.sleep(LOAD_SAMPLE_INTERVAL)
        guard.observe_lag(trio.current_time() - start - LOAD_SAMPLE_INTERVAL)


async def _run_session_nursery(
    *, task_status: trio.TaskStatus[trio.Nursery] = trio.TASK_STATUS_IGNORED
) -> None:
    """Own the session nursery (one task per connection) until the server stops."""
    async with trio.open_nursery() as session_nursery:
        task_status.started(session_nursery)
        await trio.sleep_forever()


async def _run_listener(
    server: RelayServer,
    handler: Any,
    ssl_context: ssl.SSLContext | None,
    max_message_size: int,
    handshake_timeout: float,
    handler_nursery: trio.Nursery,
    admission: ConnectionAdmission,
    port: int,
    reuse_port: bool,
    *,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    with trio.CancelScope() as scope:
        server._listener_scopes.append(scope)
        await serve_websocket(
            handler,
            server.host,
            port,
            ssl_context=ssl_context,
            max_message_size=max_message_size,
            handshake_timeout=handshake_timeout if handshake_timeout > 0 else math.inf,
            handler_nursery=handler_nursery,
            admit=admission.admit,
            release=admission.release,
            # Frames above max_frame_size are answered frame_too_large without ever
            # being buffered: a session's receive buffer stays within max_frame_size.
            discard_above=server.config.limits.max_frame_size,
            # A paused flood (relay._abuse) waits in this buffer, not in autotuned MiBs.
            receive_buffer=server.config.limits.socket_receive_buffer,
            reuse_port=reuse_port,
            task_status=task_status,
        )


async def _serve_metrics(
    metrics: RelayMetrics,
    host: str,
    port: int,
    health: Any,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    await serve_metrics_http(metrics, host, port, health=health, task_status=task_status)
