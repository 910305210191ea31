"""A relay with TURN on loopback for the interop tests, and credentials from it over
signaling (our SDK's RelaySession.turn_credentials): what a WebRTC stack puts in
``iceServers``. ``allow_loopback_peers`` lets relay candidates on 127.0.0.1 reach each
other; nothing leaves loopback."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from darkswap_trio import Keypair, TurnCredentials, open_relay_session
from darkswap_trio.testing._tls import SelfSignedCertificate
from relay import RelayConfig, serve_relay

SECRET = b"interop-turn-secret-0123456789"


@asynccontextmanager
async def relay_with_turn(directory: Path, *, tls: bool = False, allow_loopback: bool = True):
    """``(server, credentials, cert_file)``: a relay serving TURN on 127.0.0.1 (UDP, TCP,
    and TLS with ``tls``), and credentials one registered peer got from it. Without
    ``allow_loopback`` its allocations still reach each other (127.0.0.1 is its relay
    address), and nothing else on loopback."""
    secret = directory / "turn-secret"
    secret.write_bytes(SECRET)
    config = RelayConfig(host="127.0.0.1", port=0, stun_port=0, metrics_port=None)
    config.turn.enabled, config.turn.secret_file = True, str(secret)
    config.turn.allow_loopback_peers = allow_loopback
    config.turn.bandwidth_per_allocation = 0  # the benchmark measures the relay, not the cap
    config.turn.rfc5766_channels = True
    cert_file = None
    if tls:
        config.tls_cert, config.tls_key = SelfSignedCertificate.generate().write(directory)
        config.turn.tls_port = 0
        cert_file = config.tls_cert
    async with trio.open_nursery() as nursery:
        server: Any = await nursery.start(serve_relay, config)
        import ssl

        context = ssl.create_default_context(cafile=cert_file) if tls else None
        async with open_relay_session(
            server.multiaddr, Keypair.generate(), ssl_context=context
        ) as session:
            credentials: TurnCredentials = await session.turn_credentials()
        yield server, credentials, cert_file
        nursery.cancel_scope.cancel()


def ice_server(credentials: TurnCredentials, scheme: str) -> dict[str, Any]:
    """The ``iceServers`` entry for one of the relay's URIs: ``udp``, ``tcp`` or ``tls``."""
    suffix = {"udp": "?transport=udp", "tcp": "?transport=tcp", "tls": "?transport=tcp"}[scheme]
    prefix = "turns:" if scheme == "tls" else "turn:"
    (uri,) = [u for u in credentials.uris if u.startswith(prefix) and u.endswith(suffix)]
    return {"urls": uri, "username": credentials.username, "credential": credentials.password}
