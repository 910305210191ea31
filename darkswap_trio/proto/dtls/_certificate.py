"""Self-signed DTLS certificates and their SDP fingerprints (RFC 8122, RFC 8827).

WebRTC authenticates DTLS peers by certificate fingerprint carried in signed or
trusted signaling, not by a CA chain, so each endpoint makes a throw-away
self-signed ECDSA P-256 certificate. Wall-clock time is passed in (the sans-IO
cores never read clocks): ``PeerConnection`` supplies it.
"""

from __future__ import annotations

import datetime
import hashlib
import secrets
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = [
    "FINGERPRINT_ALGORITHMS",
    "DtlsCertificate",
    "certificate_fingerprint",
    "fingerprint_matches",
]

#: SDP a=fingerprint hash names (RFC 8122 §5) mapped to hashlib names.
FINGERPRINT_ALGORITHMS = {
    "sha-1": "sha1",
    "sha-224": "sha224",
    "sha-256": "sha256",
    "sha-384": "sha384",
    "sha-512": "sha512",
}

# Browsers accept any validity, but a short window around "now" limits the damage
# of a leaked key and mirrors what Chrome and Firefox generate.
_VALID_BEFORE_NOW = datetime.timedelta(days=1)
_VALID_AFTER_NOW = datetime.timedelta(days=30)


def certificate_fingerprint(der: bytes, algorithm: str = "sha-256") -> str:
    """Fingerprint of a DER certificate in SDP form: upper-case hex pairs joined by ':'."""
    try:
        hash_name = FINGERPRINT_ALGORITHMS[algorithm.lower()]
    except KeyError:
        raise ValueError(f"unsupported fingerprint algorithm {algorithm!r}") from None
    digest = hashlib.new(hash_name, der).digest()
    return ":".join(f"{byte:02X}" for byte in digest)


def fingerprint_matches(der: bytes, expected: list[tuple[str, str]]) -> bool:
    """True if ``der`` matches any of the (algorithm, value) fingerprints we understand."""
    for algorithm, value in expected:
        if algorithm.lower() not in FINGERPRINT_ALGORITHMS:
            continue
        if certificate_fingerprint(der, algorithm) == value.strip().upper():
            return True
    return False


@dataclass(frozen=True)
class DtlsCertificate:
    """A certificate plus private key, ready to load into an OpenSSL context."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls, wall_clock_now: datetime.datetime) -> DtlsCertificate:
        """Make a fresh self-signed ECDSA P-256 certificate valid around ``wall_clock_now``."""
        if wall_clock_now.tzinfo is None:
            raise ValueError("wall_clock_now must be timezone-aware")
        key = ec.generate_private_key(ec.SECP256R1())
        # A random common name, as browsers do: it identifies nothing, and a fixed
        # string would make our endpoints trivially fingerprintable on the wire.
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, secrets.token_hex(8))])
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(wall_clock_now - _VALID_BEFORE_NOW)
            .not_valid_after(wall_clock_now + _VALID_AFTER_NOW)
            .sign(key, hashes.SHA256())
        )
        return cls(certificate, key)

    @property
    def der(self) -> bytes:
        """The certificate in DER form (what fingerprints are computed over)."""
        return self.certificate.public_bytes(serialization.Encoding.DER)

    def fingerprint(self, algorithm: str = "sha-256") -> str:
        """The fingerprint value, e.g. ``"AB:CD:..."``."""
        return certificate_fingerprint(self.der, algorithm)

    @property
    def sdp_fingerprint(self) -> str:
        """The SDP attribute value: ``"sha-256 AB:CD:..."``."""
        return f"sha-256 {self.fingerprint('sha-256')}"
