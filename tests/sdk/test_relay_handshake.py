"""The SDK's registration (darkswap_trio/_relay_client/_handshake.py): one round trip
with a relay that announces its challenge in the upgrade response, two without."""

from __future__ import annotations

import os
import time

import trio

from darkswap_trio import Keypair, PeerId, RelayAuthenticationError, open_relay_session
from darkswap_trio.proto import signaling as sig
from darkswap_trio.testing import running_relay
from darkswap_trio.websocket import serve_websocket


def frames(relay, kind: str) -> float:
    value = relay.metrics.value("darkswap_relay_frames_received_total", {"kind": kind})
    return value or 0.0


async def test_sdk_registers_in_one_round_trip():
    with trio.fail_after(10):
        async with running_relay() as relay:
            async with open_relay_session(relay.multiaddr, Keypair.generate()) as session:
                assert session.auth_mode == "signature"
                assert session.relay_peer_id == relay.peer_id
            assert frames(relay, "Register") == 1
            assert frames(relay, "Authenticate") == 0  # no Challenge was needed


async def test_sdk_registers_in_one_round_trip_with_a_token():
    from relay._auth import generate_jwt_keypair, issue_token

    private_pem, public_pem = generate_jwt_keypair("EdDSA")

    async def token(peer_id: PeerId) -> str:
        return issue_token(str(peer_id), private_pem, "EdDSA", 600, now=time.time())

    with trio.fail_after(10):
        async with running_relay(auth="jwt", jwt_key=public_pem) as relay:
            async with open_relay_session(
                relay.multiaddr, Keypair.generate(), token_provider=token
            ) as session:
                assert session.token_expires_at is not None
            assert frames(relay, "Authenticate") == 0


async def serve_old_relay(relay_key: Keypair, seen: list[str], *, task_status) -> None:
    """A relay from before PROTOCOL.md 2.1.1: no header, Challenge then Registered."""

    async def handle(request) -> None:
        ws = await request.accept()
        register = sig.decode_message_untrusted(await ws.receive())
        seen.append(type(register).__name__)
        assert isinstance(register, sig.Register) and register.signature is None
        relay_id = str(relay_key.peer_id)
        proof = relay_key.sign(sig.relay_auth_message(register.nonce, relay_id, register.peer_id))
        nonce = os.urandom(32)
        await ws.send(sig.encode_message(sig.Challenge(nonce, relay_id, proof)))
        auth = sig.decode_message_untrusted(await ws.receive())
        seen.append(type(auth).__name__)
        signed = sig.peer_auth_message(nonce, relay_id, register.peer_id)
        assert PeerId.from_string(register.peer_id).verify(signed, auth.signature)
        registered = sig.Registered(register.peer_id, relay_id, "signature", sig.PROTOCOL_VERSION)
        await ws.send(sig.encode_message(registered))
        await trio.sleep_forever()

    await serve_websocket(handle, "127.0.0.1", 0, task_status=task_status)


async def test_sdk_falls_back_to_two_round_trips(nursery):
    relay_key = Keypair.generate()
    seen: list[str] = []
    with trio.fail_after(10):
        listeners = await nursery.start(serve_old_relay, relay_key, seen)
        port = listeners[0].socket.getsockname()[1]
        address = f"/ip4/127.0.0.1/tcp/{port}/ws/p2p/{relay_key.peer_id}"
        async with open_relay_session(address, Keypair.generate()) as session:
            assert session.relay_peer_id == str(relay_key.peer_id)
        assert seen == ["Register", "Authenticate"]


async def test_relay_claiming_another_id_in_the_header_is_refused_before_signing():
    with trio.fail_after(10):
        async with running_relay() as relay:
            wrong = f"{relay.multiaddr.rsplit('/p2p/', 1)[0]}/p2p/{Keypair.generate().peer_id}"
            try:
                async with open_relay_session(wrong, Keypair.generate()):
                    raise AssertionError("registered with the wrong relay")
            except RelayAuthenticationError as exc:
                assert exc.code == "relay_id_mismatch"
            assert frames(relay, "Register") == 0  # nothing was sent, nothing signed


async def test_session_latency_comes_from_the_registration_round_trip():
    with trio.fail_after(10):
        async with running_relay() as relay:
            async with open_relay_session(relay.multiaddr, Keypair.generate()) as session:
                assert session.latency_ms is not None and session.latency_ms > 0
            assert frames(relay, "Ping") == 0


async def test_manager_counts_as_connected_without_a_first_ping():
    """A relay restart is met by every peer at once: no Ping per peer before Connected
    (the registration's round trip is the first latency figure)."""
    from darkswap_trio import RelayManager, RelayManagerConfig, ServerConnected

    config = RelayManagerConfig(ping_interval=3600)
    with trio.fail_after(10):
        async with running_relay() as relay:
            async with RelayManager(Keypair.generate(), [relay.multiaddr], config) as manager:
                async for event in manager.events:
                    if isinstance(event, ServerConnected):
                        break
                (server,) = manager.servers
                assert server.latency_ms is not None and server.latency_ms > 0
                assert frames(relay, "Register") == 1
                assert frames(relay, "Ping") == 0


async def test_manager_copies_the_pingers_latency_every_ping_interval():
    from darkswap_trio import RelayManager, RelayManagerConfig

    config = RelayManagerConfig(ping_interval=0.1)
    with trio.fail_after(10):
        async with running_relay() as relay:
            async with RelayManager(Keypair.generate(), [relay.multiaddr], config) as manager:
                (server,) = manager.servers
                while server.last_ping is None:  # set from the first periodic Pong
                    await trio.sleep(0.05)
                assert server.latency_ms is not None and frames(relay, "Ping") >= 1
