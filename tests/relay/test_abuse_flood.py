"""Issue #10 item 7 at a small scale: message floods and handshake churn, real relay.

Attackers bind their sockets to other 127.0.0.x addresses (all loopback on Linux) and
speak raw WebSocket frames, so a test controls exactly what reaches the relay. The
full-scale run with honest throughput is benchmarks/bench_abuse.py.
"""

from __future__ import annotations

import os
import time

import trio
from relayclient import connect, make_config, new_peer
from test_abuse import RawClient, limit_hits, tcp_from, upgrade_request

from darkswap_trio.proto.signaling import (
    Error,
    Offer,
    Ping,
    Pong,
    Register,
    Registered,
    encode_message,
)
from darkswap_trio.proto.websocket._connection import CloseReceived, Opcode, encode_frame
from relay import serve_relay
from relay._session import RATE_LIMIT_STRIKES


def text_frame(text: str) -> bytes:
    return encode_frame(Opcode.TEXT, text.encode(), mask_key=os.urandom(4))


PING = text_frame(encode_message(Ping()))


async def open_raw(source_ip: str, port: int) -> RawClient:
    stream = await tcp_from(source_ip, port)
    await stream.send_all(upgrade_request(port))
    head = b""
    while b"\r\n\r\n" not in head:
        data = await stream.receive_some(1)
        if not data:
            await stream.aclose()
            raise ConnectionError("closed by the relay")
        head += data
    assert head.startswith(b"HTTP/1.1 101"), head
    return RawClient(stream)


async def registered_raw(source_ip: str, port: int) -> RawClient:
    client = await open_raw(source_ip, port)
    await client.stream.send_all(text_frame(encode_message(Register(str(new_peer().peer_id)))))
    assert isinstance(await client.expect_message(), Registered)
    return client


async def closed_at_accept(source_ip: str, port: int) -> bool:
    """Whether a new connection from ``source_ip`` is closed before any answer."""
    stream = await tcp_from(source_ip, port)
    async with stream:
        try:
            await stream.send_all(upgrade_request(port))
            return await stream.receive_some(100) == b""
        except trio.BrokenResourceError:
            return True


async def test_a_flooders_reconnects_do_not_refill_its_budget(nursery):
    with trio.fail_after(20):
        config = make_config(messages_per_ip_rate=0.001, messages_per_ip_burst=10, abuse_penalty=0)
        server = await nursery.start(serve_relay, config)
        port = server.signaling_port
        flooder = await registered_raw("127.0.0.2", port)
        await flooder.stream.send_all(PING * 10)
        for _ in range(10):
            assert isinstance(await flooder.expect_message(), Pong)
        await flooder.stream.send_all(PING)
        error = await flooder.expect_message()
        assert isinstance(error, Error) and error.code == "rate_limited"
        await flooder.stream.aclose()
        # A new session (a new peer id) from the same address: no fresh burst.
        for _ in range(3):
            again = await registered_raw("127.0.0.2", port)
            await again.stream.send_all(PING)
            error = await again.expect_message()
            assert isinstance(error, Error) and error.code == "rate_limited"
            await again.stream.aclose()
        assert limit_hits(server, "messages_per_ip") == 4
        # Another address still has its whole budget.
        other = await registered_raw("127.0.0.3", port)
        await other.stream.send_all(PING)
        assert isinstance(await other.expect_message(), Pong)
        await other.stream.aclose()
        await server.shutdown(1)


async def test_a_flood_is_shed_before_json_decoding_then_closed_and_penalized(nursery):
    with trio.fail_after(20):
        config = make_config(messages_per_ip_rate=0.001, messages_per_ip_burst=10)
        server = await nursery.start(serve_relay, config)
        port = server.signaling_port
        flooder = await registered_raw("127.0.0.4", port)
        garbage = text_frame("{not json")
        # Within the budget the garbage is decoded (and answered bad_frame) ...
        await flooder.stream.send_all(garbage * 10)
        for _ in range(10):
            error = await flooder.expect_message()
            assert isinstance(error, Error) and error.code == "bad_frame"
        # ... beyond it, frames are dropped undecoded: one rate_limited for the streak.
        await flooder.stream.send_all(garbage * (RATE_LIMIT_STRIKES - 1))
        error = await flooder.expect_message()
        assert isinstance(error, Error) and error.code == "rate_limited"
        await trio.testing.wait_all_tasks_blocked()
        assert server.router.abuse.frames_shed == RATE_LIMIT_STRIKES - 1
        bad_frames = server.metrics.value("darkswap_relay_errors_sent_total", {"code": "bad_frame"})
        assert bad_frames == 10
        # One more strike: the session is closed (policy violation) ...
        await flooder.stream.send_all(garbage * 100)
        error = await flooder.expect_message()
        assert isinstance(error, Error) and error.code == "rate_limited"
        event = await flooder.next_event()
        assert isinstance(event, CloseReceived) and event.code == 1008, event
        await flooder.stream.aclose()
        # ... the frames behind the last strike were never looked at ...
        assert server.router.abuse.frames_shed == RATE_LIMIT_STRIKES
        # ... and the address is closed at accept for abuse_penalty seconds.
        assert await closed_at_accept("127.0.0.4", port)
        assert limit_hits(server, "abuse_penalty") == 1
        async with connect(server) as honest:  # 127.0.0.1 is not penalized
            await honest.register_legacy(str(new_peer().peer_id))
            await honest.send(Ping())
            await honest.expect(Pong)
        await server.shutdown(1)


async def test_handshake_budget_per_address_survives_reconnects(nursery):
    with trio.fail_after(20):
        config = make_config(handshakes_per_ip_rate=0.001, handshakes_per_ip_burst=3)
        server = await nursery.start(serve_relay, config)
        port = server.signaling_port
        for _ in range(3):
            client = await registered_raw("127.0.0.5", port)
            await client.stream.aclose()
        churner = await open_raw("127.0.0.5", port)
        await churner.stream.send_all(text_frame(encode_message(Register("peer-x"))))
        error = await churner.expect_message()
        assert isinstance(error, Error) and error.code == "rate_limited"
        event = await churner.next_event()
        assert isinstance(event, CloseReceived) and event.code == 1008
        await churner.stream.aclose()
        assert limit_hits(server, "handshakes_per_ip") == 1
        assert await closed_at_accept("127.0.0.5", port)
        await server.shutdown(1)


async def flood(source_ip: str, port: int, stop: trio.Event, counts: dict) -> None:
    """Register, write Pings without pause, reconnect when closed, until ``stop``."""
    burst = PING * 256
    while not stop.is_set():
        try:
            client = await registered_raw(source_ip, port)
        except (OSError, trio.BrokenResourceError):
            counts["refused"] += 1
            await trio.sleep(0.05)
            continue
        async with client.stream:
            async with trio.open_nursery() as drain:
                drain.start_soon(discard, client.stream, drain.cancel_scope)
                try:
                    while not stop.is_set():
                        await client.stream.send_all(burst)
                        counts["frames"] += 256
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                drain.cancel_scope.cancel()


async def discard(stream: trio.SocketStream, scope: trio.CancelScope) -> None:
    try:
        while await stream.receive_some(65536):
            pass
    except trio.BrokenResourceError:
        pass
    scope.cancel()


async def test_honest_peers_keep_exchanging_messages_during_a_flood(nursery):
    """Four flooders against an honest pair on 127.0.0.1 (default limits, but no
    penalty: the flooders reconnect and flood all along): every honest Offer arrives,
    none is refused, and most in well under a second."""
    with trio.fail_after(60):
        server = await nursery.start(serve_relay, make_config(abuse_penalty=0))
        port = server.signaling_port
        stop = trio.Event()
        counts = {"frames": 0, "refused": 0}
        async with trio.open_nursery() as attack:
            for i in range(4):
                attack.start_soon(flood, f"127.0.0.{10 + i}", port, stop, counts)
            while server.router.abuse.frames_shed < 1000:  # the flood is on
                await trio.sleep(0.01)
            async with connect(server) as a, connect(server) as b:
                a_id, b_id = str(new_peer().peer_id), str(new_peer().peer_id)
                await a.register_legacy(a_id)
                await b.register_legacy(b_id)
                latencies = []
                for i in range(200):
                    start = time.perf_counter()
                    await a.send(Offer(from_=a_id, to=b_id, sdp=f"offer {i}"))
                    offer = await b.expect(Offer)
                    assert offer.sdp == f"offer {i}"
                    latencies.append(time.perf_counter() - start)
                    await trio.sleep(0.005)  # paced, as a trading peer would be
            stop.set()
        assert limit_hits(server, "messages_per_peer") > 0  # the flooders were shed
        assert server.router.abuse.frames_shed > 0
        assert server.metrics.value("darkswap_relay_errors_sent_total", {"code": "rate_limited"})
        assert sorted(latencies)[int(0.9 * len(latencies))] < 0.5, sorted(latencies)[-20:]
        await server.shutdown(1)


def test_relay_wide_budget_sheds_heavy_addresses_only():
    from relay import LimitsConfig
    from relay._abuse import AbuseGuard

    limits = LimitsConfig(
        messages_per_ip_rate=10, messages_per_ip_burst=100,
        messages_total_rate=10, messages_total_burst=150, abuse_penalty=5,
    )  # fmt: skip
    guard = AbuseGuard(limits)
    assert all(guard.message_allowed("198.51.100.1", 0.0) is None for _ in range(100))
    assert guard.message_allowed("198.51.100.1", 0.0) == "messages_per_ip"
    # 100 of the 150 relay-wide tokens are spent; a heavy second address uses the rest,
    # then is shed by the relay-wide budget once it has spent half of its own burst.
    verdicts = [guard.message_allowed("198.51.100.2", 0.0) for _ in range(60)]
    assert verdicts[:50] == [None] * 50 and set(verdicts[50:]) == {"messages_total"}
    # A light address still passes while the relay is over its total budget.
    assert guard.message_allowed("203.0.113.7", 0.0) is None
    # Penalties end by themselves.
    guard.penalize("198.51.100.2", 1.0)
    assert guard.penalized("198.51.100.2", 5.9) and not guard.penalized("198.51.100.2", 6.0)
    assert guard.penalized_count == 0
