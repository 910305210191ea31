"""TURN credentials over signaling (PROTOCOL.md 13.6): TurnCredentialsRequest answered
with REST API credentials for the authenticated peer id and the relay's TURN URIs, which
then allocate on the relay's TURN service; refused when TURN is off or the id unproven."""

from __future__ import annotations

import time
from functools import partial

import pytest
import trio
from relayclient import connect, make_config, new_peer
from turn_helpers import SECRET, aioice_exchange, echo_peer

from darkswap_trio.proto.signaling import (
    Error,
    Ping,
    Pong,
    TurnCredentials,
    TurnCredentialsRequest,
)
from darkswap_trio.proto.turn import rest_api_password
from relay import serve_relay

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def turn_config(tmp_path, mode: str = "signature"):
    secret = tmp_path / "turn-secret"
    secret.write_bytes(SECRET)
    config = make_config()
    config.auth.mode = mode
    config.turn.enabled, config.turn.secret_file = True, str(secret)
    config.turn.allow_loopback_peers = True
    config.turn.credentials_ttl = 600
    return config


async def test_registered_peer_gets_credentials_that_allocate(nursery, tmp_path):
    with trio.fail_after(20):
        server = await nursery.start(serve_relay, turn_config(tmp_path))
        async with connect(server) as client:
            await client.send(TurnCredentialsRequest())
            await client.expect_error("not_registered")
            await client.register_extended(new_peer(), server.peer_id)
            await client.send(TurnCredentialsRequest())
            creds = await client.expect(TurnCredentials)
        expiry, _, peer = creds.username.partition(":")
        assert peer == client.peer_id and creds.ttl == 600
        assert abs(int(expiry) - (time.time() + 600)) < 5
        assert creds.password == rest_api_password(SECRET, creds.username)
        port = server.stun_port
        assert creds.uris == (
            f"turn:127.0.0.1:{port}?transport=udp",
            f"turn:127.0.0.1:{port}?transport=tcp",
        )
        peer_address = await nursery.start(echo_peer)
        _, got = await trio.to_thread.run_sync(
            partial(
                aioice_exchange, port, peer_address, creds.username, creds.password, "udp", [b"x"]
            )
        )
        assert got == [b"echo:x"]


async def test_refused_when_turn_is_off_or_the_id_unproven(nursery, tmp_path):
    with trio.fail_after(20):
        off = await nursery.start(serve_relay, make_config())
        async with connect(off) as client:
            await client.register_extended(new_peer(), off.peer_id, open_mode=True)
            await client.send(TurnCredentialsRequest())
            assert isinstance(await client.expect_error("turn_disabled"), Error)
            await client.send(Ping())
            await client.expect(Pong)  # the session goes on
        open_mode = await nursery.start(serve_relay, turn_config(tmp_path, "open"))
        async with connect(open_mode) as client:
            await client.register_extended(new_peer(), open_mode.peer_id, open_mode=True)
            await client.send(TurnCredentialsRequest())
            await client.expect_error("turn_refused")
        async with connect(open_mode) as legacy:
            await legacy.register_legacy("legacy-peer")
            await legacy.send(TurnCredentialsRequest())
            await legacy.expect_error("turn_refused")


async def test_requests_count_against_the_message_budget(nursery, tmp_path):
    config = turn_config(tmp_path)
    config.limits.messages_per_peer_rate, config.limits.messages_per_peer_burst = 1.0, 5
    with trio.fail_after(20):
        server = await nursery.start(serve_relay, config)
        async with connect(server) as client:
            await client.register_extended(new_peer(), server.peer_id)
            for _ in range(10):
                await client.send(TurnCredentialsRequest())
            answers = 0
            while True:
                frame = await client.recv()
                if isinstance(frame, Error):
                    assert frame.code == "rate_limited"
                    break
                assert isinstance(frame, TurnCredentials)
                answers += 1
            assert answers < 10


async def test_turns_uri_with_the_tls_port(nursery, tmp_path):
    from darkswap_trio.testing._tls import SelfSignedCertificate

    config = turn_config(tmp_path)
    config.tls_cert, config.tls_key = SelfSignedCertificate.generate().write(tmp_path)
    config.turn.tls_port = 0
    config.announce = "relay.example:443"
    with trio.fail_after(20):
        server = await nursery.start(serve_relay, config)
        import ssl

        from relayclient import RelayClient

        from darkswap_trio.websocket import open_websocket

        context = ssl.create_default_context(cafile=config.tls_cert)
        async with open_websocket(server.url, ssl_context=context) as ws:
            client = RelayClient(ws)
            await client.register_extended(new_peer(), server.peer_id)
            await client.send(TurnCredentialsRequest())
            creds = await client.expect(TurnCredentials)
        assert creds.uris[-1] == f"turns:relay.example:{server.turn_tls_port}?transport=tcp"
        assert creds.uris[0] == f"turn:relay.example:{server.stun_port}?transport=udp"


async def test_configured_uris_replace_the_derived_ones(nursery, tmp_path):
    config = turn_config(tmp_path)
    config.turn.uris = ["turn:turn.example:3478?transport=udp", "turns:turn.example:443"]
    with trio.fail_after(20):
        server = await nursery.start(serve_relay, config)
        async with connect(server) as client:
            await client.register_extended(new_peer(), server.peer_id)
            await client.send(TurnCredentialsRequest())
            creds = await client.expect(TurnCredentials)
    assert creds.uris == tuple(config.turn.uris)


def test_bad_configured_uris_are_refused(tmp_path):
    from relay._config import ConfigError

    config = turn_config(tmp_path)
    for uris in (["stun:x"], ["turn:a b"], ["turn:x"] * 9):
        config.turn.uris = uris
        with pytest.raises(ConfigError, match="turn.uris"):
            config.validate()
