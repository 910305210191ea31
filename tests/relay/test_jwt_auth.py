"""JWT validation: pinned algorithm, required claims, caller-supplied time, error codes."""

import base64
import hashlib
import hmac
import json

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay._auth import AuthError, JwtValidator, generate_jwt_keypair, issue_token
from relay._config import AuthConfig, ConfigError

PEER = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
OTHER = "12D3KooWRBy97UB99e3J6hiPesre1MZeuNQvfan4gBziswrRJsNK"
NOW = 1_800_000_000.0
ALGORITHMS = ("EdDSA", "ES256", "HS256")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made_token(header: dict, claims: dict, sign=lambda signing_input: b"") -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def validator(algorithm: str, key: str, **auth) -> JwtValidator:
    return JwtValidator(AuthConfig(mode="jwt", jwt_algorithm=algorithm, **auth), key)


@pytest.fixture(scope="module")
def keys() -> dict[str, tuple[str, str]]:
    return {alg: generate_jwt_keypair(alg) for alg in ALGORITHMS}


def expect(code: str, v: JwtValidator, token: str, peer: str = PEER, now: float = NOW) -> None:
    with pytest.raises(AuthError) as info:
        v.validate(token, peer, now)
    assert info.value.code == code, info.value


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_valid_token_returns_exp(keys, algorithm) -> None:
    private, public = keys[algorithm]
    token = issue_token(PEER, private, algorithm, 600, now=NOW)
    assert jwt.get_unverified_header(token)["alg"] == algorithm
    assert validator(algorithm, public).validate(token, PEER, NOW + 10) == NOW + 600


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_expiry_uses_passed_now_and_leeway(keys, algorithm) -> None:
    private, public = keys[algorithm]
    v = validator(algorithm, public, jwt_leeway=5.0)
    token = issue_token(PEER, private, algorithm, 60, now=NOW)
    assert v.validate(token, PEER, NOW + 64.9) == NOW + 60  # within leeway
    expect("token_expired", v, token, now=NOW + 65)
    expect("token_expired", v, token, now=NOW + 10_000)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_wrong_subject_is_peer_mismatch(keys, algorithm) -> None:
    private, public = keys[algorithm]
    token = issue_token(PEER, private, algorithm, 60, now=NOW)
    expect("token_peer_mismatch", validator(algorithm, public), token, peer=OTHER)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_wrong_key_is_invalid(keys, algorithm) -> None:
    private, _ = keys[algorithm]
    _, other_public = generate_jwt_keypair(algorithm)
    token = issue_token(PEER, private, algorithm, 60, now=NOW)
    expect("invalid_token", validator(algorithm, other_public), token)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_forged_claims_or_signature_are_invalid(keys, algorithm) -> None:
    private, public = keys[algorithm]
    v = validator(algorithm, public)
    header, claims, signature = issue_token(PEER, private, algorithm, 60, now=NOW).split(".")
    # Same signature over a payload naming another peer.
    forged_claims = b64(json.dumps({"sub": OTHER, "exp": int(NOW) + 60}).encode())
    expect("invalid_token", v, f"{header}.{forged_claims}.{signature}", peer=OTHER)
    # Flipped signature bits.
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[len(raw) // 2] ^= 0x01
    expect("invalid_token", v, f"{header}.{claims}.{b64(bytes(raw))}")
    expect("invalid_token", v, f"{header}.{claims}.")


def test_not_yet_valid_and_future_iat(keys) -> None:
    private, public = keys["EdDSA"]
    v = validator("EdDSA", public, jwt_leeway=5.0)
    future = jwt.encode({"sub": PEER, "exp": NOW + 600, "nbf": NOW + 100}, private, "EdDSA")
    expect("invalid_token", v, future)
    assert v.validate(future, PEER, NOW + 96) == NOW + 600  # nbf within leeway
    issued_later = jwt.encode({"sub": PEER, "exp": NOW + 600, "iat": NOW + 60}, private, "EdDSA")
    expect("invalid_token", v, issued_later)
    assert v.validate(issued_later, PEER, NOW + 60) == NOW + 600


def test_exp_and_sub_are_required(keys) -> None:
    private, public = keys["EdDSA"]
    v = validator("EdDSA", public)
    expect("invalid_token", v, jwt.encode({"sub": PEER}, private, "EdDSA"))
    expect("invalid_token", v, jwt.encode({"exp": NOW + 60}, private, "EdDSA"))
    expect("invalid_token", v, jwt.encode({"sub": PEER, "exp": "tomorrow"}, private, "EdDSA"))
    expect("invalid_token", v, jwt.encode({"sub": PEER, "exp": True}, private, "EdDSA"))
    expect("invalid_token", v, jwt.encode({"sub": 42, "exp": NOW + 60}, private, "EdDSA"))


def test_audience_and_issuer_when_configured(keys) -> None:
    private, public = keys["ES256"]
    v = validator("ES256", public, jwt_audience="relay.example", jwt_issuer="auth.example")

    def token(**extra) -> str:
        return issue_token(PEER, private, "ES256", 60, now=NOW, **extra)

    assert v.validate(token(audience="relay.example", issuer="auth.example"), PEER, NOW) == (
        NOW + 60
    )
    expect("invalid_token", v, token(audience="other", issuer="auth.example"))
    expect("invalid_token", v, token(audience="relay.example", issuer="other"))
    expect("invalid_token", v, token(issuer="auth.example"))  # aud missing
    expect("invalid_token", v, token(audience="relay.example"))  # iss missing
    # Unconfigured aud/iss are not checked.
    assert validator("ES256", public).validate(token(audience="x", issuer="y"), PEER, NOW)


@pytest.mark.parametrize("configured", ["EdDSA", "ES256"])
def test_algorithm_confusion_hs256_signed_with_public_key(keys, configured) -> None:
    """The classic attack: HMAC-sign with the (public!) verification key as the secret."""
    _, public = keys[configured]
    claims = {"sub": PEER, "exp": NOW + 60}
    for secret in (public.encode(), public.strip().encode()):
        token = hand_made_token(
            {"alg": "HS256", "typ": "JWT"},
            claims,
            lambda data, secret=secret: hmac.new(secret, data, hashlib.sha256).digest(),
        )
        expect("invalid_token", validator(configured, public), token)


@pytest.mark.parametrize("configured", ALGORITHMS)
def test_other_algorithms_refused_even_when_correctly_signed(keys, configured) -> None:
    _, public = keys[configured]
    for other in ALGORITHMS:
        if other != configured:
            token = issue_token(PEER, keys[other][0], other, 60, now=NOW)
            expect("invalid_token", validator(configured, public), token)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("alg_header", ["none", "None", "NONE", ""])
def test_none_algorithm_refused(keys, algorithm, alg_header) -> None:
    token = hand_made_token({"alg": alg_header, "typ": "JWT"}, {"sub": PEER, "exp": NOW + 60})
    expect("invalid_token", validator(algorithm, keys[algorithm][1]), token)


@pytest.mark.parametrize(
    "garbage",
    ["x", "a.b.c", "...", "e30.e30.", "eyJhbGciOiJFZERTQSJ9.!!!.###", "é.é.é", "a" * 9000],
)
def test_garbage_token_is_invalid(keys, garbage) -> None:
    expect("invalid_token", validator("EdDSA", keys["EdDSA"][1]), garbage)


def test_missing_token_is_token_required(keys) -> None:
    expect("token_required", validator("EdDSA", keys["EdDSA"][1]), "")


@given(st.text(max_size=300))
def test_any_text_raises_only_auth_error(text) -> None:
    v = validator("HS256", "s" * 32)
    try:
        v.validate(text, PEER, NOW)
    except AuthError as exc:
        assert exc.code in ("invalid_token", "token_required")


def test_private_key_file_also_works_for_verification(keys) -> None:
    private, _ = keys["EdDSA"]
    token = issue_token(PEER, private, "EdDSA", 60, now=NOW)
    assert validator("EdDSA", private).validate(token, PEER, NOW) == NOW + 60


def test_hs256_secret_surrounding_whitespace_ignored() -> None:
    secret = "0123456789abcdef0123456789abcdef"
    token = issue_token(PEER, secret + "\n", "HS256", 60, now=NOW)
    assert validator("HS256", secret).validate(token, PEER, NOW) == NOW + 60


@pytest.mark.parametrize(
    ("algorithm", "material"),
    [
        ("HS256", "short-secret"),
        ("HS256", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
        ("EdDSA", "not a pem"),
        ("RS256", "whatever"),
        ("none", ""),
    ],
)
def test_bad_key_material_is_config_error(algorithm, material) -> None:
    with pytest.raises(ConfigError):
        validator(algorithm, material)


def test_key_type_must_match_algorithm(keys) -> None:
    with pytest.raises(ConfigError):
        validator("EdDSA", keys["ES256"][1])
    with pytest.raises(ConfigError):
        validator("ES256", keys["EdDSA"][1])
    with pytest.raises(ConfigError):
        validator("HS256", keys["EdDSA"][1])  # a PEM is public: never an HMAC secret
    with pytest.raises(ConfigError):
        issue_token(PEER, keys["EdDSA"][0], "ES256", 60, now=NOW)


def test_generated_keypairs_are_distinct() -> None:
    for algorithm in ALGORITHMS:
        assert generate_jwt_keypair(algorithm) != generate_jwt_keypair(algorithm)
