"""The SDK in front of a relay that demands JWTs: tokens come from a provider and are
refreshed on the live session before they expire."""

import time

import pytest
import trio

from darkswap_trio import (
    Keypair,
    RelayAuthenticationError,
    RelayManager,
    RelayManagerConfig,
    ServerConnected,
    ServerDisconnected,
    open_relay_session,
)
from darkswap_trio.testing import running_relay
from relay._auth import generate_jwt_keypair, issue_token

TTL = 60.0


@pytest.fixture
def jwt_keys():
    return generate_jwt_keypair("EdDSA")


async def test_token_is_refreshed_before_expiry_without_dropping_the_session(jwt_keys, mock_clock):
    # Virtual time runs only when every task has been idle for 50 ms of real time, so
    # loopback I/O completes normally while token lifetimes pass in an instant.
    mock_clock.autojump_threshold = 0.05
    private_pem, public_pem = jwt_keys
    issued = []

    async def provider(peer_id):
        # Token expiry is wall-clock (JWT `exp`); virtual time only decides when we ask.
        issued.append(trio.current_time())
        return issue_token(str(peer_id), private_pem, "EdDSA", TTL, now=time.time())

    with trio.fail_after(600):
        async with running_relay(auth="jwt", jwt_key=public_pem) as server:
            config = RelayManagerConfig(ping_interval=20, token_refresh_margin=20)
            async with RelayManager(
                Keypair.generate(), [server.multiaddr], config, token_provider=provider
            ) as manager:
                await manager.wait_connected()
                session = manager.servers[0].session
                # Several token lifetimes pass; the session refreshes and stays up.
                await trio.sleep(4 * TTL)
                assert manager.servers[0].session is session and not session.closed
                assert len(issued) >= 4
                assert session.token_expires_at is not None
                assert server.statistics().registered_peers == 1


async def test_missing_or_bad_token_is_refused_with_its_code(jwt_keys):
    private_pem, public_pem = jwt_keys
    other_private, _ = generate_jwt_keypair("EdDSA")
    with trio.fail_after(10):
        async with running_relay(auth="jwt", jwt_key=public_pem) as server:
            with pytest.raises(RelayAuthenticationError) as info:
                async with open_relay_session(server.multiaddr, Keypair.generate()):
                    pass
            assert info.value.code == "token_required"

            async def forged(peer_id):
                return issue_token(str(peer_id), other_private, "EdDSA", TTL, now=time.time())

            with pytest.raises(RelayAuthenticationError) as info:
                async with open_relay_session(
                    server.multiaddr, Keypair.generate(), token_provider=forged
                ):
                    pass
            assert info.value.code == "invalid_token"


async def test_expired_session_reconnects_with_a_fresh_token(jwt_keys, mock_clock):
    mock_clock.autojump_threshold = 0.05
    private_pem, public_pem = jwt_keys
    calls = 0

    async def provider(peer_id):
        nonlocal calls
        calls += 1
        # The first token is already expired on arrival at refresh time: the refresh
        # fails, the relay closes the session at expiry, the manager reconnects.
        ttl = TTL if calls != 2 else -TTL
        return issue_token(str(peer_id), private_pem, "EdDSA", ttl, now=time.time())

    with trio.fail_after(600):
        async with running_relay(auth="jwt", jwt_key=public_pem) as server:
            config = RelayManagerConfig(
                ping_interval=20, token_refresh_margin=20, reconnect_interval=1
            )
            async with RelayManager(
                Keypair.generate(), [server.multiaddr], config, token_provider=provider
            ) as manager:
                await manager.wait_connected()
                async for event in manager.events:
                    if isinstance(event, ServerDisconnected):
                        break
                async for event in manager.events:
                    if isinstance(event, ServerConnected):
                        break
                assert calls >= 3
