"""TURN long-term credentials in the coturn "TURN REST API" form, and stateless nonces.

A username is ``"<unix-expiry>:<peer-id>"`` and its password is
``base64(HMAC-SHA1(secret, username))``, so whoever holds the shared secret (the
relay, or ``darkswap-relay turn-credentials``) can hand out credentials without the
TURN server storing any. A username whose expiry has passed is refused.

Nonces are stateless too: ``<expiry hex>.<MAC>`` where the MAC binds the expiry and
the client's IP to a per-server key, so a nonce cannot be reused from another address
or past its lifetime (then the answer is 438 Stale Nonce).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
from dataclasses import dataclass

from .codec import Attr, TurnMessage, long_term_key

__all__ = [
    "AuthRefusal",
    "LongTermAuth",
    "NonceIssuer",
    "rest_api_credentials",
    "rest_api_password",
    "username_expiry",
]

MAX_USERNAME = 513  # RFC 8489 section 14.3: fewer than 509 bytes; a little slack


def rest_api_password(secret: bytes, username: str) -> str:
    """``base64(HMAC-SHA1(secret, username))`` (coturn's ``use-auth-secret``)."""
    mac = hmac.new(secret, username.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(mac).decode("ascii")


def rest_api_credentials(
    secret: bytes, peer_id: str, ttl: float, unix_now: float
) -> tuple[str, str]:
    """``(username, password)`` valid for ``ttl`` seconds from ``unix_now``."""
    if not peer_id or ":" in peer_id or any(ord(c) < 0x21 for c in peer_id):
        raise ValueError("a peer id for TURN credentials is non-empty, printable, without ':'")
    if not 0 < ttl < 10 * 365 * 86400:
        raise ValueError("ttl must be a positive number of seconds")
    username = f"{math.ceil(unix_now + ttl)}:{peer_id}"
    return username, rest_api_password(secret, username)


def username_expiry(username: str) -> int | None:
    """The unix expiry of a REST API username, or None if it is not in that form."""
    if len(username) > MAX_USERNAME:
        return None
    expiry, sep, peer = username.partition(":")
    if not sep or not peer or not expiry.isdigit() or len(expiry) > 12:
        return None
    return int(expiry)


class NonceIssuer:
    """Stateless nonces bound to a client IP, valid for ``lifetime`` seconds of ``now``."""

    def __init__(self, key: bytes, lifetime: float) -> None:
        self._key = key
        self.lifetime = lifetime

    def _mac(self, expiry: str, client_ip: str) -> str:
        message = f"{expiry}|{client_ip}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:24]

    def issue(self, client_ip: str, now: float) -> str:
        expiry = format(max(0, math.ceil((now + self.lifetime) * 1000)), "x")
        return f"{expiry}.{self._mac(expiry, client_ip)}"

    def check(self, nonce: str, client_ip: str, now: float) -> str:
        """``"ok"``, ``"stale"`` (ours but expired) or ``"invalid"`` (not ours)."""
        expiry, sep, mac = nonce.partition(".")
        if not sep or len(expiry) > 16 or not all(c in "0123456789abcdef" for c in expiry):
            return "invalid"
        if not expiry or not hmac.compare_digest(mac, self._mac(expiry, client_ip)):
            return "invalid"
        return "ok" if int(expiry, 16) / 1000 > now else "stale"


@dataclass(frozen=True)
class AuthRefusal:
    """Why a request is not authenticated: the error to answer (400, 401, 438) and
    the counter to bump (None for a plain first challenge)."""

    code: int
    counter: str | None = None


class LongTermAuth:
    """The long-term credential check of RFC 8489 section 9.2.4 with REST API passwords."""

    def __init__(self, realm: str, secret: bytes, nonces: NonceIssuer) -> None:
        self.realm = realm
        self._secret = secret
        self._nonces = nonces

    def challenge(self, client_ip: str, now: float) -> list[tuple[int, bytes]]:
        """REALM and a fresh NONCE, for a 401 or 438 answer."""
        nonce = self._nonces.issue(client_ip, now)
        return [(Attr.REALM, self.realm.encode()), (Attr.NONCE, nonce.encode())]

    def verify(
        self, message: TurnMessage, client_ip: str, now: float, unix_now: float
    ) -> tuple[str, bytes] | AuthRefusal:
        """``(username, key)`` of an authenticated request, else the refusal.

        Raises:
            TurnParseError: USERNAME, REALM or NONCE is not UTF-8 or too long.
        """
        if message.integrity_offset is None:
            return AuthRefusal(401)
        username = message.text(Attr.USERNAME)
        realm = message.text(Attr.REALM)
        nonce = message.text(Attr.NONCE)
        if username is None or realm is None or nonce is None:
            return AuthRefusal(400)
        if self._nonces.check(nonce, client_ip, now) != "ok":
            return AuthRefusal(438, "stale_nonce")
        expiry = username_expiry(username)
        if expiry is None or expiry <= unix_now:
            return AuthRefusal(401, "expired_credentials")
        if realm != self.realm:
            return AuthRefusal(401, "wrong_realm")
        key = long_term_key(username, self.realm, rest_api_password(self._secret, username))
        if not message.check_integrity(key):
            return AuthRefusal(401, "bad_integrity")
        return username, key
