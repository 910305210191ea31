"""RelaySession.turn_credentials / RelayManager.turn_credentials against a real relay
serving TURN (PROTOCOL.md 13.6), and the refusals as TurnUnavailable."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from darkswap_trio import (
    Keypair,
    RelayManager,
    TurnCredentials,
    TurnUnavailable,
    open_relay_session,
)
from darkswap_trio.proto.turn import rest_api_password
from relay import RelayConfig, serve_relay

SECRET = b"sdk-turn-secret-0123456789"


@asynccontextmanager
async def relay_with_turn(tmp_path, enabled: bool = True):
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    config = RelayConfig(host="127.0.0.1", port=0, stun_port=0, metrics_port=None)
    config.turn.enabled, config.turn.secret_file = enabled, str(secret)
    async with trio.open_nursery() as nursery:
        server: Any = await nursery.start(serve_relay, config)
        yield server
        nursery.cancel_scope.cancel()


async def test_session_gets_frozen_credentials(tmp_path):
    keypair = Keypair.generate()
    with trio.fail_after(10):
        async with (
            relay_with_turn(tmp_path) as server,
            open_relay_session(server.multiaddr, keypair) as session,
        ):
            creds = await session.turn_credentials()
    assert isinstance(creds, TurnCredentials)
    assert creds.username.endswith(":" + str(keypair.peer_id))
    assert creds.password == rest_api_password(SECRET, creds.username)
    assert creds.ttl == 86400 and abs(creds.expires_at - time.time() - 86400) < 5
    assert creds.uris[0] == f"turn:127.0.0.1:{server.stun_port}?transport=udp"
    with pytest.raises(AttributeError):
        creds.password = "x"  # type: ignore[misc]


async def test_manager_raises_turn_unavailable_without_turn(tmp_path):
    with trio.fail_after(10):
        async with relay_with_turn(tmp_path, enabled=False) as server:
            async with RelayManager(Keypair.generate(), [server.multiaddr]) as manager:
                await manager.wait_connected()
                with pytest.raises(TurnUnavailable) as info:
                    await manager.turn_credentials()
                assert info.value.code == "turn_disabled"


async def test_manager_asks_a_named_relay(tmp_path):
    with trio.fail_after(10):
        async with relay_with_turn(tmp_path) as server:
            async with RelayManager(Keypair.generate(), [server.multiaddr]) as manager:
                await manager.wait_connected()
                relay = manager.connected_servers()[0].id
                creds = await manager.turn_credentials(relay)
                assert creds.uris[1].endswith("?transport=tcp")
