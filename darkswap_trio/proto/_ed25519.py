"""Ed25519 signing and verification: libsodium when installed, else OpenSSL.

Every registration costs a relay one verification (the peer's proof) and one signature
(its own proof over the peer's nonce), and a peer the same two. OpenSSL's Ed25519, which
``cryptography`` ships, verifies in ~125 us on a slow core; libsodium (PyNaCl, the
``fast-crypto`` extra) in ~60 us and signs in ~26 us against ~40 (README "Registration
CPU"). Both produce the same signatures (Ed25519 is deterministic) and accept every
signature an honest signer makes; libsodium is, if anything, stricter (it also refuses
small-order keys and R values, which no honest key or signature has).

``DARKSWAP_ED25519`` chooses: ``auto`` (the default: libsodium if installed),
``libsodium`` (PyNaCl required) or ``openssl`` (the fallback; benchmarks compare both,
tests run both). Any other value fails at import.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

SIGNATURE_LENGTH = 64

CHOICES = ("auto", "libsodium", "openssl")


def _load_sodium(choice: str) -> tuple[Any, Any]:
    """(nacl.bindings, BadSignatureError) or (None, None), as ``choice`` (the value of
    ``DARKSWAP_ED25519``) asks; a misspelt choice or a missing PyNaCl that was asked for
    fails at import rather than silently measuring or running the other backend."""
    choice = choice.strip().lower() or "auto"
    if choice not in CHOICES:
        raise ValueError(f"DARKSWAP_ED25519={choice!r}: expected one of {', '.join(CHOICES)}")
    if choice == "openssl":
        return None, None
    try:
        import nacl.bindings
        import nacl.exceptions
    except ImportError:  # the fast-crypto extra is not installed
        if choice == "libsodium":
            raise ImportError(
                "DARKSWAP_ED25519=libsodium needs PyNaCl: pip install 'darkswap-trio[fast-crypto]'"
            ) from None
        return None, None
    return nacl.bindings, nacl.exceptions.BadSignatureError


_sodium, _SodiumBadSignature = _load_sodium(os.environ.get("DARKSWAP_ED25519", ""))

BACKEND = "openssl" if _sodium is None else "libsodium"


def verifier(public_key: bytes, *, backend: str = BACKEND) -> Callable[[bytes, bytes], bool]:
    """``verify(message, signature) -> bool`` for the raw 32-byte ``public_key``.

    Raises ValueError when ``public_key`` is not 32 bytes."""
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    if backend == "libsodium" and _sodium is not None:
        sign_open = _sodium.crypto_sign_open

        def verify_sodium(message: bytes, signature: bytes) -> bool:
            if len(signature) != SIGNATURE_LENGTH:
                return False
            try:
                sign_open(signature + message, public_key)
            except _SodiumBadSignature:
                return False
            return True

        return verify_sodium
    key = Ed25519PublicKey.from_public_bytes(public_key)

    def verify_openssl(message: bytes, signature: bytes) -> bool:
        try:
            key.verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True

    return verify_openssl


def signer(seed: bytes, openssl_sign: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
    """``sign(message) -> signature`` for the 32-byte ``seed``; ``openssl_sign`` (the
    ``cryptography`` key's) when libsodium is not in use."""
    if _sodium is None:
        return openssl_sign
    _, secret = _sodium.crypto_sign_seed_keypair(seed)
    crypto_sign = _sodium.crypto_sign

    def sign_sodium(message: bytes) -> bytes:
        return crypto_sign(message, secret)[:SIGNATURE_LENGTH]  # type: ignore[no-any-return]

    return sign_sodium
