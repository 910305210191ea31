"""RegistrationHandshake (sync): every branch of PROTOCOL.md section 2 without I/O."""

from __future__ import annotations

import os
import time

from darkswap_trio import Keypair
from darkswap_trio.proto.signaling import (
    PROTOCOL_VERSION,
    Authenticate,
    Challenge,
    Error,
    Offer,
    Register,
    peer_auth_message,
    relay_auth_message,
)
from relay import AuthConfig
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
