"""TLS on mesh links (``[mesh] tls``, docs/PROTOCOL.md 15.1): no PKI, the node key is the
certificate key.

Each node serves its mesh listener with a certificate it signs itself, at start, whose
public key is its node key (Ed25519, the key its PeerId inlines). A dialing node does not
validate a chain (there is none to operate); it compares the certificate's key with the
PeerId the directory gave for the node, and hangs up before saying anything when they
differ. So a link reaches the node holding that key or nothing: whoever answers must own
the key to finish TLS 1.3 (CertificateVerify), and everything after, the handshake of 15.2
and the circuit data, is encrypted to it. The dialer sends no certificate: it proves its
own key inside that channel (MeshAuth), to the only node that can read it.
"""

from __future__ import annotations

import datetime
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from darkswap_trio import Keypair, PeerId
from darkswap_trio.proto.errors import PeerIdError

_RAW = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def node_certificate(keypair: Keypair) -> tuple[bytes, bytes]:
    """(certificate, private key), PEM: self-signed with the node key, named by its PeerId."""
    key = Ed25519PrivateKey.from_private_bytes(keypair.seed())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(keypair.peer_id))])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))  # not checked: the key is
        .sign(key, None)
    )
    return (
        certificate.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def mesh_server_context(keypair: Keypair) -> ssl.SSLContext:
    """The mesh listener's context: TLS 1.3, the node's own certificate, no client cert."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    certificate, key = node_certificate(keypair)
    # The stdlib loads certificates from files only: a private directory, gone at once.
    with tempfile.TemporaryDirectory(prefix="darkswap-mesh-") as directory:
        cert_file, key_file = Path(directory, "node.crt"), Path(directory, "node.key")
        cert_file.write_bytes(certificate)
        key_file.touch(0o600)
        key_file.write_bytes(key)
        context.load_cert_chain(cert_file, key_file)
    return context


def mesh_client_context() -> ssl.SSLContext:
    """A dialing node's context: TLS 1.3; the certificate is checked by
    :func:`certificate_is_node`, against the PeerId expected, not by a chain."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def certificate_is_node(der: bytes | None, node_peer_id: str) -> bool:
    """Whether a certificate (DER, as presented) carries the key of PeerId ``node_peer_id``."""
    if not der:
        return False
    try:
        key = x509.load_der_x509_certificate(der).public_key()
        expected = PeerId.from_string(node_peer_id).ed25519_public_key()
    except (ValueError, PeerIdError, UnsupportedAlgorithm):  # whatever it is, not that key
        return False
    return isinstance(key, Ed25519PublicKey) and key.public_bytes(*_RAW) == expected.public_bytes(
        *_RAW
    )
