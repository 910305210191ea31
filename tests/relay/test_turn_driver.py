"""The TURN driver's own behaviour: idle when nothing is due, expiry closes sockets."""

from __future__ import annotations

import socket

import trio
import trio.testing
from turn_helpers import credentials, raw_allocate, running_turn


async def test_timer_task_sleeps_while_allocations_exist() -> None:
    with trio.fail_after(10):
        async with running_turn() as (service, _):
            sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with sock:
                await sock.bind(("127.0.0.1", 0))
                await raw_allocate(sock, service.port, *credentials())
                assert service.core.poll_timeout() is not None
                # A timer task that spins (a regression seen once) never lets every
                # task block: this would then hit fail_after.
                with trio.fail_after(2):
                    await trio.testing.wait_all_tasks_blocked()


async def test_expired_allocation_closes_its_relayed_socket(autojump_clock) -> None:
    # Real loopback sockets with the autojump clock: lifetimes pass instantly.
    with trio.fail_after(4000):
        async with running_turn() as (service, _):
            sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with sock:
                await sock.bind(("127.0.0.1", 0))
                attributes = await raw_allocate(sock, service.port, *credentials(ttl=10**6))
                relayed = attributes["XOR-RELAYED-ADDRESS"]
                assert service.core.statistics().allocations == 1
                await trio.sleep(601)
                assert service.core.statistics().allocations == 0
                assert service._relayed == {}
                await trio.testing.wait_all_tasks_blocked()
                # The port is free again: the socket was closed.
                probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                probe.bind(relayed)
                probe.close()


async def test_garbage_closes_one_tcp_connection_and_the_service_goes_on() -> None:
    with trio.fail_after(10):
        async with running_turn() as (service, _):
            sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with sock:
                await sock.bind(("127.0.0.1", 0))
                for junk in (
                    b"",
                    b"\x00",
                    b"\x40\x00\xff\xff",
                    b"\x01\x01" + bytes(30),
                    b"\xff" * 64,
                ):
                    await sock.sendto(junk, ("127.0.0.1", service.port))
                stream = await trio.open_tcp_stream("127.0.0.1", service.port)
                async with stream:
                    await stream.send_all(b"\x80\x00\x00\x04abcd")  # neither STUN nor a channel
                    assert await stream.receive_some(100) == b""  # closed by the server
                await raw_allocate(sock, service.port, *credentials())
                assert service.core.statistics().allocations == 1


async def test_unauthenticated_answers_share_the_per_ip_budget() -> None:
    import os

    from darkswap_trio.proto.turn.codec import ALLOCATE, REQUEST, encode_message
    from relay._limits import KeyedRateLimiter

    with trio.fail_after(10):
        async with running_turn(rate_limiter=KeyedRateLimiter(0.001, 2, 100)) as (service, metrics):
            sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with sock:
                await sock.bind(("127.0.0.1", 0))
                for _ in range(5):  # each would get a 401 with REALM and NONCE
                    request = encode_message(ALLOCATE, REQUEST, os.urandom(12), [])
                    await sock.sendto(request, ("127.0.0.1", service.port))
                await trio.testing.wait_all_tasks_blocked()
                assert service.core.counters["response_401"] == 5
                assert service.core.counters["drop_rate_limited"] == 3
                limit = {"limit": "turn_unauthenticated_per_ip"}
                assert metrics.value("darkswap_relay_limit_hits_total", limit) == 3


async def test_tcp_connections_per_ip_are_capped() -> None:
    from functools import partial

    from turn_helpers import settings

    from relay._metrics import RelayMetrics
    from relay._turn import serve_turn

    metrics = RelayMetrics()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            service = await nursery.start(
                partial(
                    serve_turn, "127.0.0.1", 0, settings(), metrics, max_tcp_connections_per_ip=2
                )
            )
            kept = [await trio.open_tcp_stream("127.0.0.1", service.port) for _ in range(2)]
            refused = await trio.open_tcp_stream("127.0.0.1", service.port)
            assert await refused.receive_some(10) == b""  # closed at once
            limit = {"limit": "turn_tcp_connections_per_ip"}
            assert metrics.value("darkswap_relay_limit_hits_total", limit) == 1
            for stream in [*kept, refused]:
                await stream.aclose()
            nursery.cancel_scope.cancel()
