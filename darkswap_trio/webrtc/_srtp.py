"""DTLS-SRTP keying (RFC 5764 §4.2) and pylibsrtp session wiring.

Our data channels never carry media, but a peer like aiortc fails the DTLS
transport unless an SRTP profile is negotiated, and whoever adds media later
needs exactly these keys. The keys come from the RFC 5705 exporter of a
connected :class:`~darkswap_trio.proto.dtls._endpoint.DtlsEndpoint`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pylibsrtp

from ..proto.dtls import DtlsEndpoint, DtlsStateError

__all__ = ["SrtpKeys", "SrtpSessions", "create_srtp_sessions", "export_srtp_keys"]

_EXPORTER_LABEL = b"EXTRACTOR-dtls_srtp"

# profile name -> (master key length, master salt length, pylibsrtp profile id)
_PROFILES = {
    "SRTP_AES128_CM_SHA1_80": (16, 14, pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80),
    "SRTP_AES128_CM_SHA1_32": (16, 14, pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32),
    "SRTP_AEAD_AES_128_GCM": (16, 12, pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM),
    "SRTP_AEAD_AES_256_GCM": (32, 12, pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM),
}


@dataclass(frozen=True)
class SrtpKeys:
    """Master key + salt for each direction, as pylibsrtp wants them (key || salt)."""

    profile: str
    local_key_salt: bytes
    remote_key_salt: bytes

    def __iter__(self) -> Iterator[str | bytes]:  # (profile, local, remote), as in the RFC
        return iter((self.profile, self.local_key_salt, self.remote_key_salt))


@dataclass(frozen=True)
class SrtpSessions:
    """An outbound session (protect) and an inbound one (unprotect)."""

    outbound: pylibsrtp.Session
    inbound: pylibsrtp.Session


def export_srtp_keys(endpoint: DtlsEndpoint) -> SrtpKeys:
    """Derive the SRTP master keys of a connected endpoint.

    The exporter output is client_key | server_key | client_salt | server_salt
    (RFC 5764 §4.2); "local" is the half belonging to this endpoint's role.
    Raises :class:`DtlsStateError` if no SRTP profile was negotiated.
    """
    profile = endpoint.srtp_profile
    if profile is None:
        raise DtlsStateError("no SRTP profile was negotiated")
    try:
        key_length, salt_length, _ = _PROFILES[profile]
    except KeyError:
        raise DtlsStateError(f"unsupported SRTP profile {profile}") from None
    material = endpoint.export_keying_material(_EXPORTER_LABEL, 2 * (key_length + salt_length))
    client_key = material[:key_length]
    server_key = material[key_length : 2 * key_length]
    client_salt = material[2 * key_length : 2 * key_length + salt_length]
    server_salt = material[2 * key_length + salt_length :]
    client, server = client_key + client_salt, server_key + server_salt
    if endpoint.role == "client":
        return SrtpKeys(profile, client, server)
    return SrtpKeys(profile, server, client)


def create_srtp_sessions(keys: SrtpKeys) -> SrtpSessions:
    """Build pylibsrtp sessions for any SSRC: outbound with our key, inbound with theirs."""
    _, _, profile_id = _PROFILES[keys.profile]
    outbound = pylibsrtp.Session(
        policy=pylibsrtp.Policy(
            key=keys.local_key_salt,
            ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
            srtp_profile=profile_id,
        )
    )
    inbound = pylibsrtp.Session(
        policy=pylibsrtp.Policy(
            key=keys.remote_key_salt,
            ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND,
            srtp_profile=profile_id,
        )
    )
    return SrtpSessions(outbound, inbound)
