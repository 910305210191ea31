"""Session registration (docs/PROTOCOL.md section 2) as a small synchronous state machine.

:class:`RegistrationHandshake` takes the client's ``Register`` / ``Authenticate`` and says
what to do: :class:`HandshakeReply` (send a frame, go on), :class:`HandshakeRefusal` (send
the error, close the session) or :class:`HandshakeAccepted` (the peer proved its id; the
session registers it and answers ``Registered``). No I/O, no clock: the wall-clock time
for JWT checks is passed in, so every branch is easy to see and to test.

In signature and jwt modes the server nonce exists before the first frame: it rides in
the upgrade response (:func:`upgrade_nonce`, PROTOCOL.md 2.1.1), so a client that read
it sends a signed ``Register`` and is answered ``Registered`` at once (one round trip);
a ``Register`` without a signature gets the ``Challenge`` with the same nonce (two).
Either way the nonce is good for one proof.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from darkswap_trio import Keypair, PeerId
from darkswap_trio.proto.errors import PeerIdError
from darkswap_trio.proto.signaling import (
    NONCE_LENGTH,
    PROTOCOL_VERSION,
    Authenticate,
    Challenge,
    Error,
    Message,
    Register,
    Registered,
    message_type,
    peer_auth_message,
    relay_auth_message,
)

if TYPE_CHECKING:
    from ._auth import JwtValidator

CLOSE_PROTOCOL_ERROR = 1002
CLOSE_POLICY = 1008


def upgrade_nonce(mode: str) -> bytes | None:
    """A fresh server nonce for the upgrade response, or None in open mode (no proof)."""
    return None if mode == "open" else secrets.token_bytes(NONCE_LENGTH)


@dataclass(frozen=True)
class HandshakeReply:
    message: Message


@dataclass(frozen=True)
class HandshakeRefusal:
    code: str
    message: str
    close_code: int = CLOSE_POLICY


@dataclass(frozen=True)
class HandshakeAccepted:
    peer_id: str
    proof: bytes | None  # Registered.signature (open mode or 1-RTT, a client nonce sent)
    expires_at: float | None  # the JWT's exp (jwt mode)


HandshakeStep = HandshakeReply | HandshakeRefusal | HandshakeAccepted


class RegistrationHandshake:
    """One session's registration in ``mode`` ("open", "signature" or "jwt")."""

    __slots__ = (
        "mode",
        "keypair",
        "relay_peer_id",
        "jwt_validator",
        "extended",
        "_claimed",
        "_server_nonce",
        "_challenged",
    )

    def __init__(
        self,
        mode: str,
        keypair: Keypair,
        jwt_validator: JwtValidator | None = None,
        server_nonce: bytes | None = None,  # announced in the upgrade response
    ) -> None:
        self.mode = mode
        self.keypair = keypair
        self.relay_peer_id = str(keypair.peer_id)
        self.jwt_validator = jwt_validator
        self.extended = False  # the client speaks darkswap-relay/1
        self._claimed: PeerId | None = None
        self._server_nonce = server_nonce  # None once used (one proof per nonce)
        self._challenged = False

    def registered(self, accepted: HandshakeAccepted, limits: dict[str, float]) -> Registered:
        """The Registered message answering ``accepted`` (``limits`` as announced)."""
        return Registered(
            peer_id=accepted.peer_id,
            relay_peer_id=self.relay_peer_id,
            auth=self.mode,
            protocol=PROTOCOL_VERSION if self.extended else None,
            signature=accepted.proof,
            token_expires_at=accepted.expires_at,
            limits=limits,
        )

    def handle(self, msg: Message, wall_now: float) -> HandshakeStep:
        if isinstance(msg, Register):
            if self._claimed is not None:
                return HandshakeReply(Error("Register was already sent", "already_registered"))
            return self._register(msg, wall_now)
        if isinstance(msg, Authenticate):
            if not self._challenged or self._server_nonce is None:
                return HandshakeReply(Error("Authenticate before Register", "not_registered"))
            return self._prove(msg.signature, msg.token, None, wall_now)
        return HandshakeReply(Error(f"{message_type(msg)} before registration", "not_registered"))

    def _register(self, msg: Register, wall_now: float) -> HandshakeStep:
        self.extended = msg.protocol is not None
        if not self.extended and self.mode == "open":
            # Legacy mode (PROTOCOL.md 2.2): any id the codec accepts, as the original
            # relay took any string ("peer1"); only darkswap-relay/1 requires PeerIds.
            return HandshakeAccepted(msg.peer_id, None, None)
        try:
            self._claimed = claimed = PeerId.from_string(msg.peer_id)
        except PeerIdError as exc:
            return HandshakeRefusal("invalid_peer_id", str(exc))
        if str(claimed) != msg.peer_id:
            # The SDK parses the CIDv1 form too; on the wire one peer has one name.
            return HandshakeRefusal(
                "invalid_peer_id", "peer ids on the wire are base58btc, not CIDv1"
            )
        if msg.protocol is None:
            return HandshakeRefusal(
                "auth_required", "this relay requires darkswap-relay/1 authentication"
            )
        if msg.protocol != PROTOCOL_VERSION:
            return HandshakeRefusal(
                "bad_frame", f"unsupported protocol {msg.protocol[:64]!r}", CLOSE_PROTOCOL_ERROR
            )
        proof = None
        if msg.nonce is not None:
            proof = self.keypair.sign(
                relay_auth_message(msg.nonce, self.relay_peer_id, msg.peer_id)
            )
        if self.mode == "open":
            return HandshakeAccepted(msg.peer_id, proof, None)
        if not claimed.is_ed25519:
            return HandshakeRefusal("auth_failed", "only Ed25519 peer ids can authenticate")
        if msg.signature is not None and self._server_nonce is not None:
            # 1-RTT: signed over the nonce of the upgrade response; the relay's own
            # proof rides on Registered, as in open mode.
            return self._prove(msg.signature, msg.token, proof, wall_now)
        if self._server_nonce is None:  # no upgrade nonce (a session built without one)
            self._server_nonce = secrets.token_bytes(NONCE_LENGTH)
        self._challenged = True
        return HandshakeReply(
            Challenge(nonce=self._server_nonce, relay_peer_id=self.relay_peer_id, signature=proof)
        )

    def _prove(
        self, signature: bytes, token: str | None, proof: bytes | None, wall_now: float
    ) -> HandshakeStep:
        """Check the peer's signature over the server nonce (and its token in jwt mode)."""
        assert self._claimed is not None and self._server_nonce is not None
        peer_id = str(self._claimed)
        signed = peer_auth_message(self._server_nonce, self.relay_peer_id, peer_id)
        # One attempt per nonce: a failure closes the session anyway.
        self._server_nonce = None
        if not self._claimed.verify(signed, signature):
            return HandshakeRefusal("auth_failed", "signature does not match the peer id")
        if self.mode != "jwt":
            return HandshakeAccepted(peer_id, proof, None)
        if token is None:
            return HandshakeRefusal("token_required", "this relay requires a token")
        result = self.validate_token(token, peer_id, wall_now)
        if isinstance(result, HandshakeRefusal):
            return result
        return HandshakeAccepted(peer_id, proof, result)

    def validate_token(self, token: str, peer_id: str, wall_now: float) -> float | HandshakeRefusal:
        """The token's ``exp``, or the refusal to send (also used for RefreshToken)."""
        from ._auth import AuthError

        if self.jwt_validator is None:
            return HandshakeRefusal("invalid_token", "this relay does not use tokens")
        try:
            return float(self.jwt_validator.validate(token, peer_id, wall_now))
        except AuthError as exc:
            return HandshakeRefusal(exc.code, str(exc))
