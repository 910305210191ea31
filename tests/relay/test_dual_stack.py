"""--host :: serves IPv4 and IPv6 clients on one port, with IPv4 seen canonically."""

import socket

import pytest
import trio

from darkswap_trio.proto.signaling import (
    Error,
    Ping,
    Pong,
    decode_message_untrusted,
    encode_message,
)
from darkswap_trio.websocket import WebSocketRejected, open_websocket
from relay import AuthConfig, LimitsConfig, RelayConfig, serve_relay


def ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback")
async def test_dual_stack_host_serves_both_families_on_one_port():
    # One session per IP: a mapped IPv4 address must count as the plain IPv4 one.
    config = RelayConfig(
        host="::",
        port=0,
        stun_port=None,
        metrics_port=None,
        auth=AuthConfig(mode="open"),
        limits=LimitsConfig(max_sessions_per_ip=1),
    )
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_relay, config)
            port = server.signaling_port
            for host in ("127.0.0.1", "[::1]"):
                async with open_websocket(f"ws://{host}:{port}/signaling") as ws:
                    await ws.send(encode_message(Ping()))
                    assert decode_message_untrusted(await ws.receive()) == Pong()
            async with open_websocket(f"ws://127.0.0.1:{port}/signaling") as first:
                await first.send(encode_message(Ping()))
                await first.receive()
                with pytest.raises(WebSocketRejected) as info:
                    async with open_websocket(f"ws://127.0.0.1:{port}/signaling"):
                        pass
                assert info.value.status == 503
                refusal = decode_message_untrusted(info.value.body)
                assert isinstance(refusal, Error) and refusal.code == "too_many_sessions"
                assert (
                    server.metrics.value(
                        "darkswap_relay_limit_hits_total", {"limit": "sessions_per_ip"}
                    )
                    == 1
                )
            await server.shutdown(0.5)
