"""Registration (PROTOCOL.md section 2): RegistrationHandshake's branches without I/O, then
the 1-RTT handshake (2.1.1) and its fallbacks through a real relay on loopback."""

from __future__ import annotations

import os
import time
from functools import partial

import trio
from relayclient import connect, make_config, new_peer

from darkswap_trio import Keypair, PeerId
from darkswap_trio.proto.signaling import (
    PROTOCOL_VERSION,
    Authenticate,
    Challenge,
    Error,
    Offer,
    Register,
    Registered,
    peer_auth_message,
    relay_auth_message,
)
from darkswap_trio.proto.upgrade_challenge import CHALLENGE_HEADER, challenge_from_head_untrusted
from relay import AuthConfig, serve_relay
from relay._auth import JwtValidator, generate_jwt_keypair, issue_token
from relay._handshake import (
    HandshakeAccepted,
    HandshakeRefusal,
    HandshakeReply,
    RegistrationHandshake,
)

RELAY = Keypair.from_seed(b"r" * 32)


def test_open_mode_legacy_and_extended():
    peer = Keypair.generate()
    hs = RegistrationHandshake("open", RELAY)
    assert hs.handle(Register(peer_id=str(peer.peer_id)), 0) == HandshakeAccepted(
        str(peer.peer_id), None, None
    )
    assert not hs.extended
    hs = RegistrationHandshake("open", RELAY)
    nonce = os.urandom(32)
    step = hs.handle(Register(str(peer.peer_id), PROTOCOL_VERSION, nonce), 0)
    assert isinstance(step, HandshakeAccepted) and hs.extended
    signed = relay_auth_message(nonce, str(RELAY.peer_id), str(peer.peer_id))
    assert RELAY.peer_id.verify(signed, step.proof)


def test_signature_mode_branches():
    peer = Keypair.generate()
    pid = str(peer.peer_id)
    hs = RegistrationHandshake("signature", RELAY)
    assert hs.handle(Offer(pid, pid, "x"), 0).message.code == "not_registered"
    assert hs.handle(Authenticate(b"s" * 64), 0).message.code == "not_registered"
    step = hs.handle(Register(pid, PROTOCOL_VERSION), 0)
    assert isinstance(step, HandshakeReply) and isinstance(step.message, Challenge)
    assert step.message.signature is None  # no client nonce, nothing to prove over
    again = hs.handle(Register(pid, PROTOCOL_VERSION), 0)
    assert again == HandshakeReply(Error("Register was already sent", "already_registered"))
    sig = peer.sign(peer_auth_message(step.message.nonce, str(RELAY.peer_id), pid))
    assert hs.handle(Authenticate(sig), 0) == HandshakeAccepted(pid, None, None)

    hs = RegistrationHandshake("signature", RELAY)
    hs.handle(Register(pid, PROTOCOL_VERSION), 0)  # a fresh challenge nonce
    replayed = peer.sign(peer_auth_message(os.urandom(32), str(RELAY.peer_id), pid))
    assert hs.handle(Authenticate(replayed), 0).code == "auth_failed"

    assert RegistrationHandshake("signature", RELAY).handle(Register(pid), 0).code == (
        "auth_required"
    )
    step = RegistrationHandshake("signature", RELAY).handle(Register(pid, "other/9"), 0)
    assert isinstance(step, HandshakeRefusal) and step.close_code == 1002
    bad = RegistrationHandshake("signature", RELAY).handle(Register("QmNope"), 0)
    assert bad.code == "invalid_peer_id"
    # The CIDv1 form names the same peer, but one peer has one name on the wire.
    cid = RegistrationHandshake("signature", RELAY).handle(
        Register(peer.peer_id.to_cid(), PROTOCOL_VERSION), 0
    )
    assert isinstance(cid, HandshakeRefusal) and cid.code == "invalid_peer_id"


def test_jwt_mode():
    private_pem, public_pem = generate_jwt_keypair("HS256")
    validator = JwtValidator(AuthConfig(mode="jwt", jwt_algorithm="HS256"), public_pem)
    peer = Keypair.generate()
    pid = str(peer.peer_id)
    now = time.time()

    def run(token):
        hs = RegistrationHandshake("jwt", RELAY, validator)
        ch = hs.handle(Register(pid, PROTOCOL_VERSION), now).message
        sig = peer.sign(peer_auth_message(ch.nonce, str(RELAY.peer_id), pid))
        return hs.handle(Authenticate(sig, token), now)

    assert run(None).code == "token_required"
    assert run("garbage").code == "invalid_token"
    good = issue_token(pid, private_pem, "HS256", 60, now=now)
    assert run(good) == HandshakeAccepted(pid, None, float(int(now + 60)))


# -- 1-RTT: the nonce of the upgrade response (PROTOCOL.md 2.1.1) ----------------------


def test_signed_register_is_accepted_in_one_step():
    peer = Keypair.generate()
    pid = str(peer.peer_id)
    server_nonce, client_nonce = os.urandom(32), os.urandom(32)
    hs = RegistrationHandshake("signature", RELAY, server_nonce=server_nonce)
    sig = peer.sign(peer_auth_message(server_nonce, str(RELAY.peer_id), pid))
    step = hs.handle(Register(pid, PROTOCOL_VERSION, client_nonce, sig), 0)
    assert isinstance(step, HandshakeAccepted) and step.peer_id == pid
    # The relay's proof rides on Registered, over the client's nonce.
    signed = relay_auth_message(client_nonce, str(RELAY.peer_id), pid)
    assert RELAY.peer_id.verify(signed, step.proof)
    assert hs.registered(step, {}).signature == step.proof
    # One proof per nonce: an Authenticate afterwards has no challenge to answer.
    assert hs.handle(Authenticate(sig), 0).message.code == "not_registered"


def test_signed_register_over_another_nonce_is_refused():
    peer = Keypair.generate()
    pid = str(peer.peer_id)
    hs = RegistrationHandshake("signature", RELAY, server_nonce=os.urandom(32))
    sig = peer.sign(peer_auth_message(os.urandom(32), str(RELAY.peer_id), pid))
    step = hs.handle(Register(pid, PROTOCOL_VERSION, os.urandom(32), sig), 0)
    assert isinstance(step, HandshakeRefusal) and step.code == "auth_failed"
    # Signed for another relay: refused too.
    other = Keypair.generate()
    hs = RegistrationHandshake("signature", RELAY, server_nonce=(nonce := os.urandom(32)))
    sig = peer.sign(peer_auth_message(nonce, str(other.peer_id), pid))
    assert hs.handle(Register(pid, PROTOCOL_VERSION, None, sig), 0).code == "auth_failed"


def test_unsigned_register_gets_the_upgrade_nonce_as_challenge():
    peer = Keypair.generate()
    pid = str(peer.peer_id)
    nonce = os.urandom(32)
    hs = RegistrationHandshake("signature", RELAY, server_nonce=nonce)
    step = hs.handle(Register(pid, PROTOCOL_VERSION), 0)
    assert isinstance(step, HandshakeReply) and step.message.nonce == nonce
    sig = peer.sign(peer_auth_message(nonce, str(RELAY.peer_id), pid))
    assert hs.handle(Authenticate(sig), 0) == HandshakeAccepted(pid, None, None)


def test_signed_register_in_jwt_and_open_mode():
    private_pem, public_pem = generate_jwt_keypair("HS256")
    validator = JwtValidator(AuthConfig(mode="jwt", jwt_algorithm="HS256"), public_pem)
    peer = Keypair.generate()
    pid = str(peer.peer_id)
    now = time.time()

    def run(token):
        nonce = os.urandom(32)
        hs = RegistrationHandshake("jwt", RELAY, validator, nonce)
        sig = peer.sign(peer_auth_message(nonce, str(RELAY.peer_id), pid))
        return hs.handle(Register(pid, PROTOCOL_VERSION, None, sig, token), now)

    assert run(None).code == "token_required"
    assert run("garbage").code == "invalid_token"
    good = issue_token(pid, private_pem, "HS256", 60, now=now)
    assert run(good) == HandshakeAccepted(pid, None, float(int(now + 60)))
    # Open mode announces no nonce; a signature is ignored, the Register accepted.
    hs = RegistrationHandshake("open", RELAY)
    step = hs.handle(Register(pid, PROTOCOL_VERSION, None, b"x" * 64), 0)
    assert step == HandshakeAccepted(pid, None, None)


# -- through a real relay ----------------------------------------------------------------


def relay_config(mode: str = "signature", public_pem: str | None = None):
    config = make_config()
    config.auth.mode = mode
    if mode == "jwt":
        config.auth.jwt_algorithm = "EdDSA"
        config.auth.jwt_key = public_pem
    return config


async def signed_register(client, peer: Keypair, nonce: bytes, relay_peer_id: str, **fields):
    """Send the 1-RTT Register (signed over ``nonce``); returns the client nonce."""
    client_nonce = os.urandom(32)
    pid = str(peer.peer_id)
    signature = peer.sign(peer_auth_message(nonce, relay_peer_id, pid))
    await client.send(Register(pid, PROTOCOL_VERSION, client_nonce, signature, **fields))
    return client_nonce


async def test_one_round_trip_registration(nursery):
    relay_key = Keypair.from_seed(bytes(range(32)))
    with trio.fail_after(10):
        server = await nursery.start(partial(serve_relay, relay_config(), keypair=relay_key))
        peer = new_peer()
        async with connect(server) as c:
            challenge = challenge_from_head_untrusted(c.ws.handshake_head)
            assert challenge is not None and challenge.relay_peer_id == server.peer_id
            client_nonce = await signed_register(c, peer, challenge.nonce, server.peer_id)
            reg = await c.expect(Registered)  # no Challenge in between
            assert reg.peer_id == str(peer.peer_id) and reg.auth == "signature"
            # Admission was told at once: the running count of pending connections
            # dropped without a scan (relay._admission.ConnectionAdmission.registered).
            assert server.admission._pending_total == 0
            signed = relay_auth_message(client_nonce, server.peer_id, str(peer.peer_id))
            assert PeerId.from_string(server.peer_id).verify(signed, reg.signature)
        await server.shutdown(1)


async def test_two_round_trip_client_still_registers(nursery):
    """A client that ignores the header (any client before 2.1.1) gets the Challenge,
    carrying the nonce the header announced."""
    with trio.fail_after(10):
        server = await nursery.start(serve_relay, relay_config())
        peer = new_peer()
        async with connect(server) as c:
            announced = challenge_from_head_untrusted(c.ws.handshake_head)
            await c.send(Register(str(peer.peer_id), PROTOCOL_VERSION, os.urandom(32)))
            challenge = await c.expect(Challenge)
            assert challenge.nonce == announced.nonce
        async with connect(server) as c:
            reg = await c.register_extended(new_peer(), server.peer_id)
            assert reg.auth == "signature"
        await server.shutdown(1)


async def test_replayed_and_bad_nonces_are_refused(nursery):
    with trio.fail_after(10):
        server = await nursery.start(serve_relay, relay_config())
        peer = new_peer()
        # A signed Register captured on one connection, replayed on another.
        async with connect(server) as first:
            nonce = challenge_from_head_untrusted(first.ws.handshake_head).nonce
            async with connect(server) as second:
                assert challenge_from_head_untrusted(second.ws.handshake_head).nonce != nonce
                await signed_register(second, peer, nonce, server.peer_id)
                await second.expect_error("auth_failed")
                assert await second.expect_closed() == 1008
        # Signed over a nonce of the client's own choosing.
        async with connect(server) as c:
            await signed_register(c, peer, os.urandom(32), server.peer_id)
            await c.expect_error("auth_failed")
            assert await c.expect_closed() == 1008
        # The nonce is good for one proof: the registered peer cannot reuse it.
        async with connect(server) as c:
            nonce = challenge_from_head_untrusted(c.ws.handshake_head).nonce
            await signed_register(c, peer, nonce, server.peer_id)
            await c.expect(Registered)
            await c.send(Authenticate(peer.sign(b"anything")))
            await c.expect_error("already_registered")
        await server.shutdown(1)


async def test_one_round_trip_with_jwt(nursery):
    from relay._auth import generate_jwt_keypair as keygen

    private_pem, public_pem = keygen("EdDSA")
    with trio.fail_after(10):
        server = await nursery.start(serve_relay, relay_config("jwt", public_pem))
        peer = new_peer()
        token = issue_token(str(peer.peer_id), private_pem, "EdDSA", 60, now=time.time())
        async with connect(server) as c:
            nonce = challenge_from_head_untrusted(c.ws.handshake_head).nonce
            await signed_register(c, peer, nonce, server.peer_id, token=token)
            reg = await c.expect(Registered)
            assert reg.auth == "jwt" and reg.token_expires_at is not None
        async with connect(server) as c:
            nonce = challenge_from_head_untrusted(c.ws.handshake_head).nonce
            await signed_register(c, new_peer(), nonce, server.peer_id)
            await c.expect_error("token_required")
        await server.shutdown(1)


async def test_open_mode_announces_no_nonce(nursery):
    with trio.fail_after(10):
        server = await nursery.start(serve_relay, make_config())
        async with connect(server) as c:
            assert challenge_from_head_untrusted(c.ws.handshake_head) is None
            assert CHALLENGE_HEADER.lower() not in dict(c.ws.headers)
            assert (await c.register_legacy("peer1")).peer_id == "peer1"
        await server.shutdown(1)
