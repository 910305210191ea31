"""Ed25519 through libsodium (the fast-crypto extra) and through OpenSSL (the fallback):
the same signatures, the same verdicts, never an exception for untrusted bytes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from darkswap_trio.proto import _ed25519
from darkswap_trio.proto.identity import Keypair

BACKENDS = ["openssl", "libsodium"]


def backend_or_skip(backend: str) -> str:
    if backend == "libsodium":
        pytest.importorskip("nacl.bindings", reason="the fast-crypto extra (PyNaCl)")
    return backend


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=30, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32), message=st.binary(max_size=300))
def test_signatures_verify_and_tampering_is_refused(backend, seed, message):
    backend_or_skip(backend)
    key = Ed25519PrivateKey.from_private_bytes(seed)
    public = Keypair(key).public_key.public_bytes_raw()
    verify = _ed25519.verifier(public, backend=backend)
    signature = key.sign(message)
    assert verify(message, signature)
    assert not verify(message + b"x", signature)
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    assert not verify(message, flipped)
    assert not verify(message, signature[:63])
    assert not verify(message, signature + b"\0")


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=50, deadline=None)
@given(signature=st.binary(max_size=100), message=st.binary(max_size=100))
def test_any_signature_bytes_give_a_verdict_not_an_exception(backend, signature, message):
    backend_or_skip(backend)
    public = Keypair.generate().public_key.public_bytes_raw()
    assert _ed25519.verifier(public, backend=backend)(message, signature) is False


def test_keypair_signs_as_openssl_does_whatever_the_backend():
    pair = Keypair.generate()
    message = b"peer auth message"
    assert pair.sign(message) == pair._private_key.sign(message)  # Ed25519 is deterministic
    assert pair.peer_id.verify(message, pair.sign(message))


def test_verifier_refuses_a_public_key_of_the_wrong_length():
    with pytest.raises(ValueError):
        _ed25519.verifier(b"\0" * 31)


def test_environment_forces_the_openssl_fallback():
    code = "from darkswap_trio.proto import _ed25519; print(_ed25519.BACKEND)"
    env = {**os.environ, "DARKSWAP_ED25519": "openssl"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip() == "openssl", out.stderr


@pytest.mark.parametrize("value", ["openssl", " OpenSSL ", "auto", "", "libsodium"])
def test_environment_choices_are_accepted(value):
    if value == "libsodium":
        pytest.importorskip("nacl.bindings", reason="the fast-crypto extra (PyNaCl)")
    sodium, _ = _ed25519._load_sodium(value)
    assert (sodium is None) == (value.strip().lower() == "openssl")


@pytest.mark.parametrize("value", ["opensll", "sodium", "nacl", "1"])
def test_a_misspelt_backend_fails_loudly(value):
    with pytest.raises(ValueError, match="DARKSWAP_ED25519"):
        _ed25519._load_sodium(value)


def test_libsodium_asked_for_without_pynacl_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "nacl.bindings", None)  # import fails
    with pytest.raises(ImportError, match="fast-crypto"):
        _ed25519._load_sodium("libsodium")
    assert _ed25519._load_sodium("auto") == (None, None)
