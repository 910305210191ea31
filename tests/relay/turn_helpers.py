"""Shared pieces of the TURN service tests: a running service, credentials, aioice client."""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import trio
from aioice.turn import create_turn_endpoint

from darkswap_trio.proto.turn import TurnServerSettings, rest_api_credentials
from relay._metrics import RelayMetrics
from relay._turn import TurnService, serve_turn

SECRET = b"test-turn-secret"
REALM = "darkswap.test"


def settings(**overrides: Any) -> TurnServerSettings:
    values: dict[str, Any] = {
        "realm": REALM,
        "secret": SECRET,
        "relay_ip": "127.0.0.1",
        "allow_loopback_peers": True,
        "rfc5766_channels": True,
    }
    values.update(overrides)
    return TurnServerSettings(**values)


def credentials(peer_id: str = "peerA", ttl: float = 3600.0) -> tuple[str, str]:
    return rest_api_credentials(SECRET, peer_id, ttl, time.time())


@asynccontextmanager
async def running_turn(rate_limiter: Any = None, ssl_context: Any = None, **overrides: Any):
    """A TURN service on 127.0.0.1 (UDP and TCP), and over TLS when given ``ssl_context``."""
    metrics = RelayMetrics()
    async with trio.open_nursery() as nursery:
        service: TurnService = await nursery.start(
            partial(
                serve_turn,
                "127.0.0.1",
                0,
                settings(**overrides),
                metrics,
                rate_limiter=rate_limiter,
                tls_port=0 if ssl_context is not None else None,
                ssl_context=ssl_context,
            )
        )
        try:
            yield service, metrics
        finally:
            nursery.cancel_scope.cancel()


def aioice_exchange(
    port: int,
    peer: tuple[str, int],
    username: str,
    password: str,
    transport: str,
    payloads: list[bytes],
    timeout: float = 5.0,
    ssl_context: Any = None,
) -> tuple[tuple[str, int], list[bytes]]:
    """In a fresh asyncio loop (run it in a thread): allocate with aioice's TURN client,
    send each payload to ``peer`` and collect what comes back. Returns the relayed
    address and the received payloads."""

    async def main() -> tuple[tuple[str, int], list[bytes]]:
        received: asyncio.Queue[bytes] = asyncio.Queue()

        class Receiver(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                received.put_nowait(data)

            def error_received(self, exc: Exception) -> None:
                received.put_nowait(b"ERROR " + str(exc).encode())

        turn, _ = await asyncio.wait_for(
            create_turn_endpoint(
                Receiver,
                ("127.0.0.1", port),
                username,
                password,
                transport=transport,
                ssl=ssl_context,
            ),
            timeout,
        )
        relayed = turn.get_extra_info("sockname")
        got = []
        try:
            for payload in payloads:
                turn.sendto(payload, peer)
                got.append(await asyncio.wait_for(received.get(), timeout))
        finally:
            turn.close()
            await asyncio.sleep(0.2)  # lets the Refresh(0) go out
        return relayed, got

    return asyncio.run(main())


async def echo_peer(
    prefix: bytes = b"echo:", host: str = "127.0.0.1", *, task_status=trio.TASK_STATUS_IGNORED
) -> None:
    """A plain UDP peer on ``host`` that echoes every datagram, prefixed ``prefix``."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    with sock:
        await sock.bind((host, 0))
        task_status.started(sock.getsockname())
        while True:
            data, source = await sock.recvfrom(65536)
            await sock.sendto(prefix + data, source)


async def raw_allocate(sock: Any, port: int, username: str, password: str) -> dict[str, Any]:
    """Allocate over a trio UDP socket with a hand-built exchange (401, then signed);
    returns the success response's attributes."""
    import os

    from aioice import stun

    from darkswap_trio.proto.turn.codec import (
        ALLOCATE,
        REQUEST,
        Attr,
        encode_message,
        long_term_key,
        uint32_attr,
    )

    transport = uint32_attr(Attr.REQUESTED_TRANSPORT, 17 << 24)

    async def ask(attrs: list[tuple[int, bytes]], key: bytes | None) -> stun.Message:
        data = encode_message(ALLOCATE, REQUEST, os.urandom(12), attrs, integrity_key=key)
        await sock.sendto(data, ("127.0.0.1", port))
        reply, _ = await sock.recvfrom(2048)
        return stun.parse_message(reply)

    challenge = await ask([transport], None)
    key = long_term_key(username, REALM, password)
    signed = [
        transport,
        (Attr.USERNAME, username.encode()),
        (Attr.REALM, REALM.encode()),
        (Attr.NONCE, challenge.attributes["NONCE"]),
    ]
    response = await ask(signed, key)
    assert response.message_class == stun.Class.RESPONSE, response
    return response.attributes
