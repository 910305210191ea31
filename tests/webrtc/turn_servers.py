"""TURN servers for peer-connection tests: our relay (``serve_relay`` with TURN) in
this process, or coturn's ``turnserver`` as a subprocess; both on loopback, REST
API credentials, loopback peers allowed (tests only)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import socket
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from aioice import stun

from darkswap_trio.proto.turn import rest_api_credentials
from darkswap_trio.webrtc import TurnServerConfig

SECRET = b"turn-ice-client-test-secret"
REALM = "darkswap.test"
TURNSERVER = shutil.which("turnserver")


def turn_config(
    port: int, peer_id: str = "alice", transport: str = "udp", tls: ssl.SSLContext | None = None
) -> TurnServerConfig:
    username, password = rest_api_credentials(SECRET, peer_id, 3600, time.time())
    if tls is not None:
        return TurnServerConfig(f"turns:127.0.0.1:{port}", username, password, ssl_context=tls)
    return TurnServerConfig(f"turn:127.0.0.1:{port}?transport={transport}", username, password)


def self_signed_certificate(tmp_path: Any) -> tuple[Any, Any, ssl.SSLContext]:
    """(cert file, key file, a client context trusting it) for 127.0.0.1."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "turn-cert.pem", tmp_path / "turn-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(cafile=str(cert_file))
    return cert_file, key_file, context


@asynccontextmanager
async def running_our_turn(tmp_path: Any, tls: tuple[Any, Any] | None = None) -> AsyncIterator[Any]:
    """``serve_relay`` with TURN on its STUN port; yields the server handle. With
    ``tls`` (cert file, key file), TURN over TLS too, on ``server.turn_tls_port``."""
    from relay import RelayConfig, serve_relay

    secret_file = tmp_path / "turn_secret"
    secret_file.write_bytes(SECRET + b"\n")
    config = RelayConfig(host="127.0.0.1", port=0, stun_port=0, metrics_port=None)
    config.auth.mode = "open"
    config.turn.enabled = True
    config.turn.realm = REALM
    config.turn.secret_file = str(secret_file)
    config.turn.allow_loopback_peers = True
    config.turn.bandwidth_per_allocation = 0
    if tls is not None:
        config.tls_cert, config.tls_key = str(tls[0]), str(tls[1])
        config.turn.tls_port = 0
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_relay, config.validate())
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


def _free_port_pair() -> int:
    """A port free for UDP and TCP, with the next one free for TCP (coturn's TLS)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            if port >= 65535:
                continue
            try:
                for candidate in (port, port + 1):
                    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                        tcp.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return port


async def _answers_binding(port: int) -> bool:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        await sock.bind(("127.0.0.1", 0))
        message = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, os.urandom(12))
        try:
            await sock.sendto(bytes(message), ("127.0.0.1", port))
        except OSError:
            return False
        with trio.move_on_after(0.2):
            try:
                await sock.recvfrom(2048)
            except OSError:
                return False
            return True
    return False


@asynccontextmanager
async def running_coturn(tmp_path: Any, tls: tuple[Any, Any] | None = None) -> AsyncIterator[int]:
    """coturn on a free loopback port with ``use-auth-secret``; yields the port. With
    ``tls`` (cert file, key file) it also serves TLS, on the port after that one."""
    assert TURNSERVER is not None
    port = _free_port_pair()
    if tls is None:
        tls_flags = ["--no-tls"]
    else:
        tls_flags = ["--tls-listening-port", str(port + 1), "--cert", str(tls[0]),
                     "--pkey", str(tls[1])]  # fmt: skip
    command = [
        TURNSERVER, "-n",
        "--listening-ip", "127.0.0.1", "-p", str(port), "--relay-ip", "127.0.0.1",
        "--use-auth-secret", "--static-auth-secret", SECRET.decode(), "--realm", REALM,
        "--allow-loopback-peers", *tls_flags, "--no-dtls", "--no-cli",
        "--no-stdout-log", "--simple-log", "--log-file", str(tmp_path / "coturn.log"),
        "--min-port", "41000", "--max-port", "41999",
        "--pidfile", str(tmp_path / "coturn.pid"),
    ]  # fmt: skip
    async with trio.open_nursery() as nursery:
        process = await nursery.start(trio.run_process, command)
        try:
            for _ in range(50):
                if await _answers_binding(port):
                    break
            else:
                raise RuntimeError("coturn did not start: " + _log(tmp_path))
            yield port
        finally:
            process.terminate()
            nursery.cancel_scope.cancel()


def _log(tmp_path: Any) -> str:
    try:
        return (tmp_path / "coturn.log").read_text()[-2000:]
    except OSError:
        return "(no log)"
