"""Prometheus metrics of one relay server, and the small HTTP server exposing them.

:class:`RelayMetrics` owns its own :class:`prometheus_client.CollectorRegistry` (not the
process-global one), so several relay servers can run in one process (tests do).

Label values must come from small fixed sets chosen by the server code (message type
names, error codes, limit names), never from untrusted input: every distinct value is
a new time series held forever.

:func:`serve_metrics_http` is an HTTP/1.1 server on trio + h11 (sans-IO) serving
``/metrics`` and ``/healthz``. It is deliberately minimal: one request per connection,
GET/HEAD only, request head bounded in size and time, bounded number of connections.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import time
from collections.abc import Callable
from typing import Any

import h11
import trio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from ._logging import session_context

__all__ = ["RelayMetrics", "serve_metrics_http"]

logger = logging.getLogger("relay.metrics")
# Limit hits and refused registrations are logged here, where they are counted, on
# these loggers (operators filter by name). At most one line per second per limit
# name: under a flood the count is in the metric, the log names the source.
limits_logger = logging.getLogger("relay.limits")
auth_logger = logging.getLogger("relay.auth")
_LIMIT_LOG_INTERVAL = 1.0

_PREFIX = "darkswap_relay_"
# The classic text format, understood by every scraper; OpenMetrics when asked (Accept).
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: registration takes milliseconds; a circuit lives from seconds to the hour cap.
REGISTRATION_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
CIRCUIT_BUCKETS = (0.1, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0)


class _WithoutCreated(Collector):
    """The registry minus ``*_created`` samples (noise for Prometheus: one series per metric).

    prometheus-client can only switch them off process-wide; a library must not.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Any:
        for family in self._registry.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


class RelayMetrics:
    """Every metric the relay exports; attributes are prometheus_client metric objects.

    Examples::

        metrics.sessions_active.inc()
        metrics.registrations.labels(mode="jwt", result="ok").inc()
        metrics.frames_received.labels(kind="Offer").inc()
        metrics.limit_hits.labels(limit="messages_per_peer").inc()
    """

    def __init__(
        self, *, version: str = "unknown", clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._exposed = _WithoutCreated(r)

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(_PREFIX + name, doc, labels, registry=r)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(_PREFIX + name, doc, registry=r)

        # Sessions
        self.sessions_active = gauge("sessions_active", "Signaling sessions currently open.")
        self.sessions = counter("sessions", "Signaling sessions accepted (WebSocket handshakes).")
        self.registrations = counter(
            "registrations",
            "Register attempts by auth mode (signature/jwt/open/legacy) and result "
            "(ok or an error code).",
            ("mode", "result"),
        )
        # Frames
        self.frames_received = counter(
            "frames_received", "Signaling frames received, by message type.", ("kind",)
        )
        self.frames_sent = counter(
            "frames_sent", "Signaling frames sent, by message type.", ("kind",)
        )
        self.errors_sent = counter(
            "errors_sent", "Error frames sent to peers, by error code.", ("code",)
        )
        # Circuits
        self.relayed_bytes = counter(
            "relayed_bytes", "Payload bytes forwarded through relay circuits."
        )
        self.circuits_active = gauge("circuits_active", "Relay circuits currently open.")
        self.circuits_opened = counter("circuits_opened", "Relay circuits established.")
        self.circuits_refused = counter(
            "circuits_refused", "Relay circuit requests refused, by reason.", ("reason",)
        )
        self.circuits_closed = counter(
            "circuits_closed", "Relay circuits closed, by reason.", ("reason",)
        )
        self.buffered_bytes = gauge(
            "buffered_bytes", "Bytes queued inside the relay (circuit and send buffers)."
        )
        self.load_factor = gauge(
            "load_factor",
            "Fraction of the relay-wide message and registration budgets in force "
            "(below 1 while the event loop lags: relay overloaded).",
        )
        # Topic rendezvous (docs/PROTOCOL.md 14.6)
        self.topics = gauge("topics", "Topics with at least one registered peer.")
        self.topic_registrations = gauge(
            "topic_registrations", "(peer, topic) rendezvous registrations held."
        )
        # Abuse control
        self.limit_hits = counter(
            "limit_hits", "Requests refused or connections closed by a limit.", ("limit",)
        )
        # STUN
        self.stun_requests = counter(
            "stun_requests", "STUN Binding requests answered with a success response."
        )
        self.stun_error_responses = counter(
            "stun_error_responses",
            "STUN Binding requests answered with an error (420 unknown attribute).",
        )
        self.stun_dropped = counter(
            "stun_dropped",
            "STUN datagrams dropped without a reply, by reason "
            "(malformed, not_request, not_binding, rate_limited, socket_error).",
            ("reason",),
        )
        # Durations
        self.registration_seconds = Histogram(
            _PREFIX + "registration_duration_seconds",
            "Time from TCP accept to a successful Register (Registered sent).",
            buckets=REGISTRATION_BUCKETS,
            registry=r,
        )
        self.circuit_open_seconds = Histogram(
            _PREFIX + "circuit_open_duration_seconds",
            "How long relay circuits stayed open, observed when they close.",
            buckets=CIRCUIT_BUCKETS,
            registry=r,
        )
        # Process
        self.start_time = gauge(
            "start_time_seconds", "Unix time at which this relay's metrics were created."
        )
        self.start_time.set_to_current_time()
        self.build_info = Gauge(
            _PREFIX + "build_info",
            "Always 1; the labels say which relay version is running.",
            ("version",),
            registry=r,
        )
        self.build_info.labels(version=version).set(1)
        # process_cpu_seconds_total, process_resident_memory_bytes, open fds...
        # (Linux /proc; absent elsewhere), registered here, not in the global registry.
        ProcessCollector(registry=r)
        # Hot-path helpers below: labelled children cached (labels() validates and
        # locks on every call) and relayed bytes summed here, added to the counter
        # (which takes a lock per inc) only when read.
        self._children: dict[tuple[int, str], Any] = {}
        self._relayed_pending = 0
        # limit name -> (clock time of the last line, hits not logged since)
        self._limit_logged: dict[str, tuple[float, int]] = {}
        self._clock = clock

    def _child(self, metric: Counter, label: str, value: str) -> Any:
        key = (id(metric), value)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(**{label: value})
        return child

    def frame_sent(self, kind: str) -> None:
        self._child(self.frames_sent, "kind", kind).inc()

    def frame_received(self, kind: str) -> None:
        self._child(self.frames_received, "kind", kind).inc()

    def error_sent(self, code: str) -> None:
        self._child(self.errors_sent, "code", code).inc()
        context = session_context.get()
        if context is not None:
            context.last_error = code

    def limit_hit(self, limit: str) -> None:
        """Count a limit hit and log it (INFO, ``relay.limits``; throttled per limit)."""
        self._child(self.limit_hits, "limit", limit).inc()
        if limits_logger.isEnabledFor(logging.INFO):
            suppressed = self._log_allowed(limit)
            if suppressed is not None:
                limits_logger.info(
                    "limit hit: %s", limit, extra={"limit": limit, "suppressed": suppressed}
                )

    def registration(self, mode: str, result: str) -> None:
        """Count a Register attempt; a refused one is logged (INFO, ``relay.auth``;
        throttled per error code like limit hits)."""
        if result != "ok" and auth_logger.isEnabledFor(logging.INFO):
            suppressed = self._log_allowed("auth " + result)
            if suppressed is not None:
                auth_logger.info(
                    "registration refused: %s",
                    result,
                    extra={"mode": mode, "code": result, "suppressed": suppressed},
                )
        key = (id(self.registrations), f"{mode} {result}")
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.registrations.labels(mode=mode, result=result)
        child.inc()

    def _log_allowed(self, key: str) -> int | None:
        """None if ``key`` was logged less than a second ago, else how many lines were
        skipped since its last one (one line per second per key under a flood)."""
        now = self._clock()
        last, suppressed = self._limit_logged.get(key, (-math.inf, 0))
        if now - last < _LIMIT_LOG_INTERVAL:
            self._limit_logged[key] = (last, suppressed + 1)
            return None
        self._limit_logged[key] = (now, 0)
        return suppressed

    def add_relayed_bytes(self, count: int) -> None:
        """Count relayed payload bytes (cheap: no lock until the counter is read)."""
        self._relayed_pending += count

    def _flush_relayed(self) -> None:
        if self._relayed_pending:
            pending, self._relayed_pending = self._relayed_pending, 0
            self.relayed_bytes.inc(pending)

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The registry encoded for a scraper's ``Accept`` header: (body, content type).

        OpenMetrics when the scraper asks for it, else the classic text format 0.0.4.
        """
        self._flush_relayed()
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self._exposed), content_type

    def value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """Current value of one sample (full name, e.g. ``darkswap_relay_sessions_total``).

        For tests and statistics; None when the sample does not exist (yet).
        """
        self._flush_relayed()
        return self.registry.get_sample_value(name, labels or {})


HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]

# Bounds: a scrape request is one small GET.
MAX_REQUEST_HEAD = 8 * 1024
READ_TIMEOUT = 10.0
MAX_CONNECTIONS = 64
# After an error reply, read and discard at most this much (and this long) before
# closing, so the client sees our reply instead of a TCP reset ("lingering close").
_LINGER_BYTES = 256 * 1024
_LINGER_TIME = 1.0


async def serve_metrics_http(
    metrics: RelayMetrics,
    host: str,
    port: int,
    *,
    health: HealthCheck,
    read_timeout: float = READ_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/metrics`` and ``/healthz`` over HTTP/1.1 until cancelled.

    ``health()`` returns ``(healthy, details)``: ``/healthz`` answers 200 with the
    details as JSON when healthy, 503 otherwise. Calls ``task_status.started(port)``
    with the bound port once listening (``port=0`` picks a free one). Connections
    beyond ``max_connections`` are closed at once. Errors stay per connection.
    """
    listeners = await _open_listeners(host, port)
    bound_port = listeners[0].socket.getsockname()[1]
    slots = trio.CapacityLimiter(max_connections)

    async def handler(stream: trio.SocketStream) -> None:
        try:
            slots.acquire_nowait()
        except trio.WouldBlock:
            await stream.aclose()
            return
        try:
            # Overall bound too: a client that never reads must not pin a slot.
            with trio.move_on_after(2 * read_timeout + _LINGER_TIME):
                await _serve_connection(stream, metrics, health, read_timeout)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            logger.debug("metrics connection failed: %r", exc)
        except Exception:  # never let one connection take the server down
            logger.exception("metrics connection crashed")
        finally:
            slots.release()
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handler, listeners)
        logger.info("metrics HTTP listening", extra={"host": host, "port": bound_port})
        task_status.started(bound_port)


async def _open_listeners(host: str, port: int) -> list[trio.SocketListener]:
    if host != "::":
        return await trio.open_tcp_listeners(port, host=host)
    # trio's IPv6 listeners are IPv6-only; "::" means dual-stack here, as for STUN.
    sock = trio.socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        await sock.bind(("::", port))
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return [trio.SocketListener(sock)]


def _respond(
    conn: h11.Connection, status: int, body: bytes, content_type: str, head_only: bool
) -> bytes:
    headers = [
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
        ("Cache-Control", "no-store"),
    ]
    out = conn.send(h11.Response(status_code=status, headers=headers))
    if not head_only:
        out += conn.send(h11.Data(data=body))
    out += conn.send(h11.EndOfMessage())
    return out


def _route(
    request: h11.Request, metrics: RelayMetrics, health: HealthCheck
) -> tuple[int, bytes, str]:
    method = request.method.upper()
    path = request.target.split(b"?", 1)[0]
    if path not in (b"/metrics", b"/healthz"):
        return 404, b"not found\n", "text/plain; charset=utf-8"
    if method not in (b"GET", b"HEAD"):
        return 405, b"method not allowed\n", "text/plain; charset=utf-8"
    if path == b"/metrics":
        accept = ", ".join(
            value.decode("latin-1") for name, value in request.headers if name == b"accept"
        )
        return (200, *metrics.render(accept))
    try:
        healthy, details = health()
    except Exception as exc:  # a broken health check is an unhealthy relay, not a crash
        logger.exception("health check failed")
        healthy, details = False, {"error": repr(exc)}
    # PROTOCOL.md section 8: {"status": "ok", ...}; `details` may name another status.
    document = {"status": "ok" if healthy else "unavailable", **details, "healthy": healthy}
    body = json.dumps(document, default=str).encode() + b"\n"
    return (200 if healthy else 503), body, "application/json"


_ERROR_BODIES = {400: b"bad request\n", 408: b"request timeout\n", 431: b"request too large\n"}


def _error_reply(status: int) -> bytes:
    """A complete error response, written by hand: h11 refuses to send after a protocol error."""
    body = _ERROR_BODIES.get(status, b"error\n")
    reason = {400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large"}
    head = (
        f"HTTP/1.1 {status} {reason.get(status, 'Error')}\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


async def _serve_connection(
    stream: trio.SocketStream, metrics: RelayMetrics, health: HealthCheck, read_timeout: float
) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
    request: h11.Request | None = None
    error_status = 408  # if the deadline passes before a full request head
    with trio.move_on_after(read_timeout):
        try:
            while request is None:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    # b"" (EOF) is fed too: h11 turns it into ConnectionClosed or an error.
                    conn.receive_data(await stream.receive_some(4096))
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.ConnectionClosed):
                    return  # connected and left without a request
        except h11.RemoteProtocolError as exc:
            error_status = exc.error_status_hint
    if request is None:
        # Oversized head (431), malformed (400) or too slow (408): reply, then close.
        await stream.send_all(_error_reply(error_status))
        await _linger(stream)
        return
    status, body, content_type = _route(request, metrics, health)
    head_only = request.method.upper() == b"HEAD"
    await stream.send_all(_respond(conn, status, body, content_type, head_only))
    # A request body (we accept none) or pipelined bytes may still be unread.
    await _linger(stream)


async def _linger(stream: trio.SocketStream) -> None:
    """Half-close, then discard input briefly so the peer reads our reply, not a reset."""
    try:
        await stream.send_eof()
        discarded = 0
        with trio.move_on_after(_LINGER_TIME):
            while discarded < _LINGER_BYTES:
                data = await stream.receive_some(16384)
                if not data:
                    break
                discarded += len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
