"""The /metrics + /healthz HTTP server over real loopback TCP, and RelayMetrics itself."""

import json
import socket
from functools import partial

import pytest
import trio
import trio.testing

from relay._metrics import RelayMetrics, serve_metrics_http

METRIC_NAMES = [
    "darkswap_relay_sessions_active",
    "darkswap_relay_sessions_total",
    "darkswap_relay_registrations_total",
    "darkswap_relay_frames_received_total",
    "darkswap_relay_frames_sent_total",
    "darkswap_relay_relayed_bytes_total",
    "darkswap_relay_circuits_active",
    "darkswap_relay_circuits_opened_total",
    "darkswap_relay_circuits_refused_total",
    "darkswap_relay_circuits_closed_total",
    "darkswap_relay_limit_hits_total",
    "darkswap_relay_errors_sent_total",
    "darkswap_relay_stun_requests_total",
    "darkswap_relay_stun_dropped_total",
    "darkswap_relay_buffered_bytes",
]


async def exchange(port: int, request: bytes) -> bytes:
    """Send raw bytes, read until the server closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        chunks = []
        while chunk := await stream.receive_some(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()


def split(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return status, headers, body


class Server:
    def __init__(self) -> None:
        self.metrics = RelayMetrics()
        self.healthy = True
        self.port = 0

    def health(self) -> tuple[bool, dict]:
        return self.healthy, {"sessions": 3, "draining": not self.healthy}


async def start(nursery: trio.Nursery, **kwargs) -> Server:
    server = Server()
    server.port = await nursery.start(
        partial(serve_metrics_http, server.metrics, "127.0.0.1", 0, health=server.health, **kwargs)
    )
    return server


async def test_metrics_endpoint_lists_metrics_and_tracks_changes() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await start(nursery)
            status, headers, body = split(await exchange(server.port, get("/metrics")))
            assert status == 200
            assert headers["content-type"].startswith("text/plain; version=0.0.4")
            assert int(headers["content-length"]) == len(body)
            text = body.decode()
            for name in METRIC_NAMES:
                assert f"# TYPE {name.removesuffix('_total')}" in text, name
            assert "darkswap_relay_sessions_total 0.0" in text

            m = server.metrics
            m.sessions.inc()
            m.sessions.inc()
            m.sessions_active.set(2)
            m.frames_received.labels(kind="Offer").inc(3)
            m.registrations.labels(mode="jwt", result="token_expired").inc()
            m.relayed_bytes.inc(1234)
            _, _, body = split(await exchange(server.port, get("/metrics?x=1")))
            text = body.decode()
            assert "darkswap_relay_sessions_total 2.0" in text
            assert "darkswap_relay_sessions_active 2.0" in text
            assert 'darkswap_relay_frames_received_total{kind="Offer"} 3.0' in text
            assert (
                'darkswap_relay_registrations_total{mode="jwt",result="token_expired"} 1.0' in text
            )
            assert "darkswap_relay_relayed_bytes_total 1234.0" in text
            nursery.cancel_scope.cancel()


async def test_healthz_reports_health_callback() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await start(nursery)
            status, headers, body = split(await exchange(server.port, get("/healthz")))
            assert status == 200
            assert headers["content-type"] == "application/json"
            assert json.loads(body) == {
                "status": "ok",
                "healthy": True,
                "sessions": 3,
                "draining": False,
            }
            server.healthy = False
            status, _, body = split(await exchange(server.port, get("/healthz")))
            assert status == 503
            assert json.loads(body)["draining"] is True
            assert json.loads(body)["status"] == "unavailable"
            nursery.cancel_scope.cancel()


async def test_unknown_paths_methods_and_head() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await start(nursery)
            assert split(await exchange(server.port, get("/")))[0] == 404
            assert split(await exchange(server.port, get("/metricsx")))[0] == 404
            assert split(await exchange(server.port, get("/metrics", "POST")))[0] == 405
            status, headers, body = split(await exchange(server.port, get("/metrics", "HEAD")))
            assert status == 200 and body == b"" and int(headers["content-length"]) > 0
            old = b"GET /healthz HTTP/1.0\r\n\r\n"
            assert split(await exchange(server.port, old))[0] == 200
            nursery.cancel_scope.cancel()


async def test_oversized_or_malformed_request_is_refused_and_closed() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await start(nursery)
            huge = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 64 * 1024 + b"\r\n\r\n"
            status, headers, _ = split(await exchange(server.port, huge))
            assert status == 431 and headers["connection"] == "close"
            assert split(await exchange(server.port, b"NOT HTTP AT ALL\r\n\r\n"))[0] == 400
            # The server is still serving afterwards.
            assert split(await exchange(server.port, get("/healthz")))[0] == 200
            nursery.cancel_scope.cancel()


async def test_slow_request_times_out() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await start(nursery, read_timeout=0.2)
            response = await exchange(server.port, b"GET /metrics HTTP/1.1\r\nHost:")
            assert split(response)[0] == 408
            nursery.cancel_scope.cancel()


async def test_connections_beyond_the_limit_are_closed() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await start(nursery, max_connections=1)
            holder = await trio.open_tcp_stream("127.0.0.1", server.port)
            await holder.send_all(b"GET /healthz HTTP/1.1\r\n")  # incomplete: holds the slot
            # Let the server accept it and take the slot before the next connection arrives.
            await trio.testing.wait_all_tasks_blocked()
            assert await exchange(server.port, get("/healthz")) == b""
            await holder.send_all(b"Host: x\r\n\r\n")
            response = b""
            while chunk := await holder.receive_some(65536):
                response += chunk
            await holder.aclose()
            assert split(response)[0] == 200
            # The slot was released.
            assert split(await exchange(server.port, get("/healthz")))[0] == 200
            nursery.cancel_scope.cancel()


def ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback")
async def test_dual_stack_host_serves_ipv4_and_ipv6() -> None:
    server = Server()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                partial(serve_metrics_http, server.metrics, "::", 0, health=server.health)
            )
            for host in ("127.0.0.1", "::1"):
                stream = await trio.open_tcp_stream(host, port)
                async with stream:
                    await stream.send_all(get("/healthz"))
                    response = b""
                    while chunk := await stream.receive_some(65536):
                        response += chunk
                assert split(response)[0] == 200, host
            nursery.cancel_scope.cancel()


def test_each_relay_metrics_has_its_own_registry() -> None:
    a, b = RelayMetrics(), RelayMetrics()
    a.circuits_opened.inc()
    a.limit_hits.labels(limit="sessions_per_ip").inc(2)
    assert a.value("darkswap_relay_circuits_opened_total") == 1
    assert b.value("darkswap_relay_circuits_opened_total") == 0
    assert a.value("darkswap_relay_limit_hits_total", {"limit": "sessions_per_ip"}) == 2
    assert b"darkswap_relay_circuits_opened_total 1.0" in a.render()[0]
