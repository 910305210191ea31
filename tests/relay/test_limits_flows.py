"""Every limit of PROTOCOL.md section 6 produces its error (and a metric), and the relay
keeps serving everyone else."""

from __future__ import annotations

import json
import uuid

import trio
from relayclient import connect, make_config, new_peer, raw_upgrade

from darkswap_trio.proto.signaling import (
    CircuitData,
    CloseRelay,
    Ping,
    Pong,
    RelayData,
    RelayRequest,
    RelayResponse,
)
from relay import serve_relay


def limit_hits(server, limit: str) -> float:
    return server.metrics.value("darkswap_relay_limit_hits_total", {"limit": limit}) or 0.0


async def still_serving(server) -> None:
    """A fresh peer can register and get a Pong."""
    async with connect(server) as c:
        await c.register_legacy(str(new_peer().peer_id))
        await c.send(Ping())
        await c.expect(Pong)


async def open_circuit(a, b):
    await a.send(RelayRequest(from_=a.peer_id, to=b.peer_id))
    resp = await a.expect(RelayResponse)
    assert resp.accepted, resp
    assert await b.expect_circuit_announcement(a.peer_id) == resp.relay_id
    return resp.relay_id, uuid.UUID(resp.relay_id).bytes


async def test_session_caps_are_checked_before_accepting(nursery):
    with trio.fail_after(10):
        server = await nursery.start(
            serve_relay, make_config(max_sessions=3, max_sessions_per_ip=2)
        )
        async with connect(server) as a, connect(server) as b:
            await a.register_legacy(str(new_peer().peer_id))
            status, body = await raw_upgrade(server.signaling_port)
            assert status == 503
            err = json.loads(body)
            assert err["type"] == "Error" and err["payload"]["code"] == "too_many_sessions"
            assert limit_hits(server, "sessions_per_ip") == 1
            assert server.statistics().sessions == 2
            await b.send(Ping())
            await b.expect(Pong)
        await server.shutdown(1)
        server = await nursery.start(serve_relay, make_config(max_sessions=3))
        async with connect(server) as a, connect(server) as b, connect(server) as c:
            await c.send(Ping())
            await c.expect(Pong)
            status, body = await raw_upgrade(server.signaling_port)
            assert status == 503 and b"too_many_sessions" in body
            assert limit_hits(server, "max_sessions") == 1
            del a, b
        await still_serving(server)
        await server.shutdown(1)


async def test_connection_rate_per_ip(nursery):
    with trio.fail_after(10):
        server = await nursery.start(
            serve_relay, make_config(connections_per_ip_rate=0.001, connections_per_ip_burst=2)
        )
        async with connect(server) as a:
            async with connect(server):
                pass
            status, body = await raw_upgrade(server.signaling_port)
            assert status == 429 and json.loads(body)["payload"]["code"] == "rate_limited"
            assert limit_hits(server, "connections_per_ip") == 1
            await a.send(Ping())  # the live session is unaffected
            await a.expect(Pong)
        await server.shutdown(1)


async def test_message_rate_and_frame_size(nursery):
    with trio.fail_after(10):
        config = make_config(
            messages_per_peer_rate=0.001, messages_per_peer_burst=5, max_frame_size=70_000
        )
        server = await nursery.start(serve_relay, config)
        async with connect(server) as a:
            await a.register_legacy(str(new_peer().peer_id))  # 1 message
            for _ in range(4):
                await a.send(Ping())
                await a.expect(Pong)
            await a.send(Ping())
            await a.expect_error("rate_limited")
            assert limit_hits(server, "messages_per_peer") == 1
        async with connect(server) as b:
            await b.register_legacy(str(new_peer().peer_id))
            await b.send_raw("x" * 80_000)
            err = await b.expect_error("frame_too_large")
            assert "80000" in err.message
            await b.send(Ping())  # the session goes on
            await b.expect(Pong)
            assert limit_hits(server, "frame_size") == 1
        await server.shutdown(1)


async def test_circuit_caps(nursery):
    with trio.fail_after(10):
        server = await nursery.start(
            serve_relay, make_config(max_circuits=2, max_circuits_per_peer=1)
        )
        async with (
            connect(server) as a,
            connect(server) as b,
            connect(server) as c,
            connect(server) as d,
            connect(server) as e,
            connect(server) as f,
        ):
            for client in (a, b, c, d, e, f):
                await client.register_legacy(str(new_peer().peer_id))
            await open_circuit(a, b)
            await a.send(RelayRequest(from_=a.peer_id, to=c.peer_id))  # a is at its cap
            resp = await a.expect(RelayResponse)
            assert (resp.accepted, resp.code) == (False, "too_many_circuits")
            await c.send(RelayRequest(from_=c.peer_id, to=b.peer_id))  # the target is at its cap
            assert (await c.expect(RelayResponse)).code == "too_many_circuits"
            await open_circuit(c, d)
            await e.send(RelayRequest(from_=e.peer_id, to=f.peer_id))  # total cap
            resp = await e.expect(RelayResponse)
            assert (resp.accepted, resp.code) == (False, "too_many_circuits")
            assert server.statistics().circuits == 2
            assert limit_hits(server, "circuits") == 3
        await still_serving(server)
        await server.shutdown(1)


async def test_circuit_duration_limit(nursery, autojump_clock):
    with trio.fail_after(1000):
        server = await nursery.start(serve_relay, make_config(circuit_duration=60.0))
        async with connect(server) as a, connect(server) as b:
            await a.register_legacy(str(new_peer().peer_id))
            await b.register_legacy(str(new_peer().peer_id))
            text, _ = await open_circuit(a, b)
            start = trio.current_time()
            assert await a.expect(CloseRelay) == CloseRelay(text, "duration_limit")
            assert await b.expect(CloseRelay) == CloseRelay(text, "duration_limit")
            assert 60 <= trio.current_time() - start < 61
            assert limit_hits(server, "circuit_duration_limit") == 1
            await a.send(Ping())
            await a.expect(Pong)
        await server.shutdown(1)


async def test_circuit_data_limit_and_credit_exceeded(nursery):
    with trio.fail_after(10):
        config = make_config(circuit_bytes=100, circuit_window=64 * 1024)
        server = await nursery.start(serve_relay, config)
        async with connect(server) as a, connect(server) as b:
            await a.register_legacy(str(new_peer().peer_id))
            await b.register_legacy(str(new_peer().peer_id))
            text, _ = await open_circuit(a, b)
            await a.send(RelayData(from_=a.peer_id, relay_id=text, data=b"1" * 60))
            assert (await b.expect(RelayData)).data == b"1" * 60
            await b.send(RelayData(from_=b.peer_id, relay_id=text, data=b"2" * 41))
            # Not delivered: a's next frame is the close.
            assert await a.expect(CloseRelay) == CloseRelay(text, "data_limit")
            assert await b.expect(CloseRelay) == CloseRelay(text, "data_limit")
        await still_serving(server)
        await server.shutdown(1)
        window = 256 * 1024
        server = await nursery.start(serve_relay, make_config(circuit_window=window))
        kx, ky = new_peer(), new_peer()
        async with connect(server) as x, connect(server) as y:
            await x.register_extended(kx, server.peer_id, open_mode=True)
            await y.register_extended(ky, server.peer_id, open_mode=True)
            text, rid = await open_circuit(x, y)
            frame = b"f" * (64 * 1024)
            for _ in range(window // len(frame)):
                await x.send_data(rid, frame)
            await x.send_data(rid, b"!")  # one byte beyond the credit
            for _ in range(window // len(frame)):
                assert await y.expect(CircuitData) == CircuitData(rid, frame)
            assert await y.expect(CloseRelay) == CloseRelay(text, "credit_exceeded")
            assert await x.expect(CloseRelay) == CloseRelay(text, "credit_exceeded")
            assert limit_hits(server, "circuit_credit_exceeded") == 1
        await still_serving(server)
        await server.shutdown(1)


async def test_handshake_and_idle_timeouts(nursery, autojump_clock):
    with trio.fail_after(1000):
        server = await nursery.start(
            serve_relay, make_config(handshake_timeout=10.0, idle_timeout=120.0)
        )
        async with connect(server) as silent:
            start = trio.current_time()
            await silent.expect_error("handshake_timeout")
            assert await silent.expect_closed() == 1008
            assert 10 <= trio.current_time() - start < 11
        async with connect(server) as idle, connect(server) as active:
            await idle.register_legacy(str(new_peer().peer_id))
            await active.register_legacy(str(new_peer().peer_id))
            start = trio.current_time()
            async with trio.open_nursery() as pinger:

                async def keep_alive():
                    for _ in range(30):
                        await trio.sleep(10)  # mock time: the active peer pings every 10 s
                        await active.send(Ping())
                        await active.expect(Pong)

                pinger.start_soon(keep_alive)
                await idle.expect_error("idle_timeout")
                assert await idle.expect_closed() == 1000
                assert 120 <= trio.current_time() - start < 121
            assert limit_hits(server, "idle_timeout") == 1
            assert limit_hits(server, "handshake_timeout") == 1
            assert server.statistics().registered_peers == 1  # the active one
        await server.shutdown(1)


async def test_circuit_bandwidth_paces_the_sender(nursery, autojump_clock):
    with trio.fail_after(1000):
        config = make_config(circuit_bandwidth=64 * 1024)
        server = await nursery.start(serve_relay, config)
        async with connect(server) as a, connect(server) as b:
            await a.register_legacy(str(new_peer().peer_id))
            await b.register_legacy(str(new_peer().peer_id))
            text, _ = await open_circuit(a, b)
            start = trio.current_time()
            block = b"b" * (32 * 1024)
            for _ in range(10):  # 320 KiB at 64 KiB/s after a 64 KiB burst: >= 4 s
                await a.send(RelayData(from_=a.peer_id, relay_id=text, data=block))
            for _ in range(10):
                assert (await b.expect(RelayData)).data == block
            assert 4.0 <= trio.current_time() - start < 4.5
            assert limit_hits(server, "circuit_bandwidth") > 0
        await server.shutdown(1)
