"""Authentication through a real relay: signature challenge, JWT, identity rules."""

from __future__ import annotations

import hashlib
import os
import time
from functools import partial

import trio
from relayclient import connect, make_config, new_peer

from darkswap_trio import Keypair, PeerId
from darkswap_trio.proto.identity import b58encode
from darkswap_trio.proto.signaling import (
    PROTOCOL_VERSION,
    Authenticate,
    Challenge,
    CloseRelay,
    DataChannel,
    Offer,
    Ping,
    Pong,
    RefreshToken,
    Register,
    Registered,
    RelayRequest,
    RelayResponse,
    TokenRefreshed,
    peer_auth_message,
    relay_auth_message,
)
from relay import serve_relay
from relay._auth import generate_jwt_keypair, issue_token


def signature_config():
    config = make_config()
    config.auth.mode = "signature"
    return config


def jwt_config(public_pem: str):
    config = make_config()
    config.auth.mode = "jwt"
    config.auth.jwt_algorithm = "EdDSA"
    config.auth.jwt_key = public_pem
    config.auth.jwt_leeway = 0.0
    return config


async def challenge_for(client, keypair: Keypair) -> Challenge:
    await client.send(
        Register(peer_id=str(keypair.peer_id), protocol=PROTOCOL_VERSION, nonce=os.urandom(32))
    )
    return await client.expect(Challenge)


async def test_relay_proves_its_identity(nursery):
    relay_key = Keypair.from_seed(bytes(range(32)))
    with trio.fail_after(10):
        server = await nursery.start(partial(serve_relay, signature_config(), keypair=relay_key))
        assert server.peer_id == str(relay_key.peer_id)
        assert server.multiaddr.endswith(f"/ws/p2p/{server.peer_id}")
        peer = new_peer()
        nonce = os.urandom(32)
        async with connect(server) as c:
            await c.send(
                Register(peer_id=str(peer.peer_id), protocol=PROTOCOL_VERSION, nonce=nonce)
            )
            ch = await c.expect(Challenge)
            assert ch.relay_peer_id == server.peer_id
            signed = relay_auth_message(nonce, server.peer_id, str(peer.peer_id))
            assert PeerId.from_string(ch.relay_peer_id).verify(signed, ch.signature)
            # Bound to this peer: the same signature does not verify for another peer id.
            other = relay_auth_message(nonce, server.peer_id, str(new_peer().peer_id))
            assert not PeerId.from_string(ch.relay_peer_id).verify(other, ch.signature)
            sig = peer.sign(peer_auth_message(ch.nonce, server.peer_id, str(peer.peer_id)))
            await c.send(Authenticate(signature=sig))
            reg = await c.expect(Registered)
            assert reg.auth == "signature" and reg.limits["max_frame_size"] == 256 * 1024
        await server.shutdown(1)


async def test_bad_signatures_and_peer_ids_are_refused(nursery):
    with trio.fail_after(10):
        server = await nursery.start(serve_relay, signature_config())
        peer = new_peer()
        # Random bytes as signature.
        async with connect(server) as c:
            await challenge_for(c, peer)
            await c.send(Authenticate(signature=os.urandom(64)))
            await c.expect_error("auth_failed")
            assert await c.expect_closed() == 1008
        # A valid signature by another key.
        async with connect(server) as c:
            ch = await challenge_for(c, peer)
            thief = new_peer()
            await c.send(
                Authenticate(
                    signature=thief.sign(
                        peer_auth_message(ch.nonce, server.peer_id, str(peer.peer_id))
                    )
                )
            )
            await c.expect_error("auth_failed")
            assert await c.expect_closed() == 1008
        # The right key over the wrong message (signed for another relay).
        async with connect(server) as c:
            ch = await challenge_for(c, peer)
            other_relay = str(new_peer().peer_id)
            await c.send(
                Authenticate(
                    signature=peer.sign(peer_auth_message(ch.nonce, other_relay, str(peer.peer_id)))
                )
            )
            await c.expect_error("auth_failed")
        # Not a peer id at all.
        async with connect(server) as c:
            await c.send(Register(peer_id="not-a-peer-id", protocol=PROTOCOL_VERSION))
            await c.expect_error("invalid_peer_id")
            assert await c.expect_closed() == 1008
        # A valid but hashed (non-Ed25519, e.g. RSA "Qm...") peer id cannot authenticate.
        sha_id = b58encode(bytes([0x12, 0x20]) + hashlib.sha256(b"rsa key").digest())
        async with connect(server) as c:
            await c.send(Register(peer_id=sha_id, protocol=PROTOCOL_VERSION))
            await c.expect_error("auth_failed")
        # A legacy Register when authentication is required.
        async with connect(server) as c:
            await c.send(Register(peer_id=str(peer.peer_id)))
            await c.expect_error("auth_required")
            assert await c.expect_closed() == 1008
        # Messages before registration.
        async with connect(server) as c:
            await c.send(Authenticate(signature=os.urandom(64)))
            await c.expect_error("not_registered")
            await c.send(Ping())
            await c.expect(Pong)
        assert server.statistics().registered_peers == 0
        await server.shutdown(1)


async def test_spoofed_from_and_duplicate_registration(nursery):
    with trio.fail_after(10):
        server = await nursery.start(serve_relay, signature_config())
        ka, kb = new_peer(), new_peer()
        async with connect(server) as a, connect(server) as b:
            await a.register_extended(ka, server.peer_id)
            await b.register_extended(kb, server.peer_id)
            # a pretends to be b: refused, not forwarded (b would otherwise see it next).
            await a.send(Offer(from_=b.peer_id, to=b.peer_id, sdp="evil"))
            err = await a.expect_error("spoofed_from")
            assert err.ref == b.peer_id
            # Someone else registers a's id: refused, a is unaffected.
            async with connect(server) as intruder:
                await intruder.send(Register(peer_id=a.peer_id))  # legacy form
                await intruder.expect_error("auth_required")
            async with connect(server) as twin:
                ch = await challenge_for(twin, ka)  # even with the right key
                await twin.send(
                    Authenticate(
                        signature=ka.sign(peer_auth_message(ch.nonce, server.peer_id, a.peer_id))
                    )
                )
                # The relay checks that the holder is alive; a answers, so it stays.
                await a.expect(Ping)
                await a.send(Pong())
                await twin.expect_error("peer_id_in_use")
                assert await twin.expect_closed() == 1008
            await a.send(Offer(from_=a.peer_id, to=b.peer_id, sdp="hello"))
            got = await b.expect(Offer)
            assert got.sdp == "hello" and got.from_ == a.peer_id
            await b.send(Offer(from_=b.peer_id, to=a.peer_id, sdp="back"))
            assert (await a.expect(Offer)).sdp == "back"
        await server.shutdown(1)


async def test_jwt_handshake_refusals(nursery):
    private_pem, public_pem = generate_jwt_keypair("EdDSA")
    forger_pem, _ = generate_jwt_keypair("EdDSA")
    with trio.fail_after(10):
        server = await nursery.start(serve_relay, jwt_config(public_pem))
        peer = new_peer()
        pid = str(peer.peer_id)
        now = time.time()
        cases = [
            (None, "token_required"),
            (issue_token(pid, private_pem, "EdDSA", 60, now=now - 120), "token_expired"),
            (issue_token(pid, forger_pem, "EdDSA", 60, now=now), "invalid_token"),
            (
                issue_token(str(new_peer().peer_id), private_pem, "EdDSA", 60, now=now),
                "token_peer_mismatch",
            ),
        ]
        for token, code in cases:
            async with connect(server) as c:
                ch = await challenge_for(c, peer)
                sig = peer.sign(peer_auth_message(ch.nonce, server.peer_id, pid))
                await c.send(Authenticate(signature=sig, token=token))
                await c.expect_error(code)
                assert await c.expect_closed() == 1008
        good = issue_token(pid, private_pem, "EdDSA", 60, now=now)
        async with connect(server) as c:
            reg = await c.register_extended(peer, server.peer_id, token=good)
            assert reg.auth == "jwt" and reg.token_expires_at == float(int(now + 60))
        await server.shutdown(1)


async def test_jwt_refresh_and_expiry_closes_session(nursery, autojump_clock):
    private_pem, public_pem = generate_jwt_keypair("EdDSA")
    with trio.fail_after(600):
        server = await nursery.start(serve_relay, jwt_config(public_pem))
        peer = new_peer()
        pid = str(peer.peer_id)
        now = time.time()
        partner_key = new_peer()
        partner_token = issue_token(str(partner_key.peer_id), private_pem, "EdDSA", 3600, now=now)
        async with connect(server) as c, connect(server) as partner:
            await c.register_extended(
                peer, server.peer_id, token=issue_token(pid, private_pem, "EdDSA", 30, now=now)
            )
            await partner.register_extended(partner_key, server.peer_id, token=partner_token)
            await partner.send(RelayRequest(from_=partner.peer_id, to=pid))
            resp = await partner.expect(RelayResponse)
            await c.expect(DataChannel)
            # A bad refresh is refused and the old token stays in force.
            other = issue_token(str(new_peer().peer_id), private_pem, "EdDSA", 300, now=now)
            await c.send(RefreshToken(token=other))
            await c.expect_error("token_peer_mismatch")
            # A good refresh moves the expiry.
            await c.send(RefreshToken(token=issue_token(pid, private_pem, "EdDSA", 90, now=now)))
            refreshed = await c.expect(TokenRefreshed)
            assert refreshed.expires_at == float(int(now + 90))
            start = trio.current_time()
            # Nothing more is sent: the session is closed when the new token expires,
            # and its circuit partner is told why.
            await c.expect_error("token_expired")
            assert await c.expect_closed() == 4001
            assert 80 <= trio.current_time() - start <= 100
            assert await partner.expect(CloseRelay) == CloseRelay(resp.relay_id, "token_expired")
            assert server.statistics().registered_peers == 1
        assert server.statistics().registered_peers == 0
        await server.shutdown(1)


async def test_silent_holder_is_replaced_by_a_proven_owner(nursery):
    """A peer whose old connection went silent can register again at once."""
    config = signature_config()
    config.limits.duplicate_probe_timeout = 0.2
    with trio.fail_after(10):
        server = await nursery.start(serve_relay, config)
        key = new_peer()
        async with connect(server) as stale, connect(server) as fresh, connect(server) as other:
            await stale.register_extended(key, server.peer_id)
            await other.register_extended(new_peer(), server.peer_id)
            await other.send(RelayRequest(from_=other.peer_id, to=stale.peer_id))
            response = await other.expect(RelayResponse)
            assert response.accepted
            # `stale` stops reading (its Pong never comes); `fresh` proves the same key.
            await fresh.register_extended(key, server.peer_id)
            assert server.statistics().registered_peers == 2
            closed = await other.expect(CloseRelay)
            assert closed.reason == "peer_disconnected"
            await stale.expect(DataChannel)
            await stale.expect(Ping)
            await stale.expect_error("session_replaced")
            # Signaling now reaches the new session.
            await other.send(Offer(from_=other.peer_id, to=fresh.peer_id, sdp="hi"))
            assert (await fresh.expect(Offer)).sdp == "hi"
        await server.shutdown(1)


async def test_open_mode_never_replaces_a_holder(nursery):
    config = make_config(duplicate_probe_timeout=0.1)
    with trio.fail_after(10):
        server = await nursery.start(serve_relay, config)
        async with connect(server) as first, connect(server) as second:
            peer_id = str(new_peer().peer_id)
            await first.register_legacy(peer_id)
            await second.send(Register(peer_id=peer_id))
            await second.expect_error("peer_id_in_use")
        await server.shutdown(1)
