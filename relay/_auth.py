"""JWT authentication of signaling sessions (the ``jwt`` auth mode).

The relay validates tokens, it does not hand them out: an operator's service issues
short-lived tokens whose ``sub`` is the peer's PeerId. :func:`issue_token` and
:func:`generate_jwt_keypair` exist for the CLI (``darkswap-relay token|keygen``) and tests.

Security decisions:

- The algorithm is pinned to the configured one (``EdDSA``, ``ES256`` or ``HS256``).
  A token whose header names any other algorithm -- ``none``, or HS256 signed with the
  relay's *public* key as the HMAC secret (algorithm confusion) -- is refused.
- The verification key is loaded once and type-checked against the algorithm
  (Ed25519 for EdDSA, P-256 for ES256, a secret of at least 32 bytes for HS256 that
  is not a PEM key).
- ``exp`` and ``sub`` are required; ``sub`` must equal the peer id the session proves.
  ``aud`` / ``iss`` are required and checked when configured.
- Time comes from the caller (``now``), not the wall clock inside PyJWT: PyJWT cannot
  take a "now", so it decodes with its exp/nbf/iat checks disabled and
  :meth:`JwtValidator.validate` applies them itself, with the configured leeway, exactly
  as PyJWT would (expired when ``now >= exp + leeway``; not yet valid when
  ``nbf > now + leeway``; refused when ``iat > now + leeway``).
"""

from __future__ import annotations

import math
import secrets
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from ._config import JWT_ALGORITHMS, AuthConfig, ConfigError, RelayConfig

__all__ = [
    "AuthError",
    "JwtValidator",
    "generate_jwt_keypair",
    "issue_token",
]

# Tokens are small; refuse to spend CPU on megabytes of base64.
MAX_TOKEN_LENGTH = 8192
MIN_HMAC_SECRET_BYTES = 32  # RFC 7518 section 3.2: at least the hash output size


class AuthError(Exception):
    """Authentication failed; ``code`` is the machine-readable reason sent to the peer.

    Codes: ``token_required``, ``invalid_token``, ``token_expired``,
    ``token_peer_mismatch`` (the session code adds its own for the nonce signature).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"AuthError({self.code!r}, {self.message!r})"


def _hmac_secret(key_material: str) -> bytes:
    # A key file's trailing newline is not part of the secret.
    secret = key_material.strip().encode()
    if secret.startswith(b"-----BEGIN") or secret.startswith(b"ssh-"):
        raise ConfigError("HS256 secret looks like a PEM/SSH key; use a random shared secret")
    if len(secret) < MIN_HMAC_SECRET_BYTES:
        raise ConfigError(f"HS256 secret must be at least {MIN_HMAC_SECRET_BYTES} bytes")
    return secret


def _check_key_type(key: Any, algorithm: str, what: str) -> None:
    if algorithm == "EdDSA":
        ok = isinstance(key, (ed25519.Ed25519PublicKey, ed25519.Ed25519PrivateKey))
        expected = "an Ed25519"
    else:
        ok = isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)) and (
            isinstance(key.curve, ec.SECP256R1)
        )
        expected = "a P-256 (secp256r1)"
    if not ok:
        raise ConfigError(f"{algorithm} needs {expected} {what} key")


def _verification_key(algorithm: str, key_material: str) -> Any:
    """The PyJWT key for ``algorithm``: a public key object, or the HMAC secret."""
    if algorithm not in JWT_ALGORITHMS:
        raise ConfigError(f"JWT algorithm must be one of {JWT_ALGORITHMS}, got {algorithm!r}")
    if algorithm == "HS256":
        return _hmac_secret(key_material)
    data = key_material.strip().encode()
    try:
        key: Any = serialization.load_pem_public_key(data)
    except ValueError:
        # A private key file also works: validate with its public half.
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"cannot load the {algorithm} JWT key: {exc}") from exc
    _check_key_type(key, algorithm, "public")
    return key


def _numeric_claim(payload: dict[str, Any], name: str) -> float | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise AuthError("invalid_token", f"claim {name!r} must be a number")
    return float(value)


class JwtValidator:
    """Validates session tokens against one key and algorithm (see module docstring).

    Raises:
        ConfigError: at construction, when the key does not suit the algorithm.
    """

    def __init__(self, auth: AuthConfig, key_material: str) -> None:
        self.algorithm = auth.jwt_algorithm
        self.audience = auth.jwt_audience
        self.issuer = auth.jwt_issuer
        self.leeway = float(auth.jwt_leeway)
        self._key = _verification_key(self.algorithm, key_material)
        require = ["exp", "sub"]
        if self.audience is not None:
            require.append("aud")
        if self.issuer is not None:
            require.append("iss")
        self._options: Any = {
            "verify_signature": True,
            # Time-based checks are done in validate() against the caller's `now`.
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
            "verify_aud": self.audience is not None,
            "verify_iss": self.issuer is not None,
            "require": require,
        }

    @classmethod
    def from_config(cls, config: RelayConfig) -> JwtValidator:
        """The validator for ``config.auth``, reading the key file if one is configured.

        Raises:
            ConfigError: the key cannot be read or does not suit the algorithm.
        """
        try:
            material = config.jwt_key_material()
        except OSError as exc:
            raise ConfigError(f"cannot read auth.jwt_key_file: {exc}") from exc
        return cls(config.auth, material)

    def validate(self, token: str, peer_id: str, now: float) -> float:
        """Check ``token`` for session ``peer_id`` at time ``now`` (Unix seconds).

        Returns the token's ``exp`` (Unix seconds): the session must re-authenticate
        (refresh) before then.

        Raises:
            AuthError: the only exception, whatever the token contains.
        """
        if not token:
            raise AuthError("token_required", "a JWT is required to register with this relay")
        if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
            raise AuthError("invalid_token", "token is not a string of reasonable length")
        try:
            payload = jwt.decode(
                token,
                self._key,
                algorithms=[self.algorithm],  # pinned: never trust the header's alg
                options=self._options,
                audience=self.audience,
                issuer=self.issuer,
            )
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise AuthError("invalid_token", f"invalid token: {exc}") from None
        exp = _numeric_claim(payload, "exp")
        assert exp is not None  # required above
        if now >= exp + self.leeway:
            raise AuthError("token_expired", "token has expired")
        nbf = _numeric_claim(payload, "nbf")
        if nbf is not None and nbf > now + self.leeway:
            raise AuthError("invalid_token", "token is not yet valid (nbf)")
        iat = _numeric_claim(payload, "iat")
        if iat is not None and iat > now + self.leeway:
            raise AuthError("invalid_token", "token was issued in the future (iat)")
        sub = payload.get("sub")
        if not isinstance(sub, str):
            raise AuthError("invalid_token", "claim 'sub' must be a string")
        if sub != peer_id:
            raise AuthError("token_peer_mismatch", "token subject is not this peer id")
        return exp


def _signing_key(algorithm: str, key_material: str) -> Any:
    if algorithm not in JWT_ALGORITHMS:
        raise ConfigError(f"JWT algorithm must be one of {JWT_ALGORITHMS}, got {algorithm!r}")
    if algorithm == "HS256":
        return _hmac_secret(key_material)
    try:
        key = serialization.load_pem_private_key(key_material.strip().encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"cannot load the {algorithm} private key: {exc}") from exc
    _check_key_type(key, algorithm, "private")
    return key


def issue_token(
    peer_id: str,
    key_material: str,
    algorithm: str,
    ttl: float,
    *,
    now: float,
    audience: str | None = None,
    issuer: str | None = None,
) -> str:
    """A token for ``peer_id`` valid from ``now`` for ``ttl`` seconds.

    ``key_material`` is a PEM private key (EdDSA, ES256) or the shared secret (HS256).

    Raises:
        ConfigError: the key does not suit the algorithm.
    """
    claims: dict[str, Any] = {"sub": peer_id, "iat": int(now), "exp": int(now + ttl)}
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    return jwt.encode(claims, _signing_key(algorithm, key_material), algorithm=algorithm)


def generate_jwt_keypair(algorithm: str) -> tuple[str, str]:
    """A fresh ``(private_pem, public_pem)`` for ``algorithm``.

    For HS256 both halves are the same random shared secret (64 url-safe characters).
    """
    if algorithm == "HS256":
        secret = secrets.token_urlsafe(48)
        return secret, secret
    if algorithm == "EdDSA":
        private: Any = ed25519.Ed25519PrivateKey.generate()
    elif algorithm == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        raise ConfigError(f"JWT algorithm must be one of {JWT_ALGORITHMS}, got {algorithm!r}")
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private_pem, public_pem
