"""TURN credentials over signaling (docs/PROTOCOL.md 13.6): the relay answers a
registered, authenticated session's ``TurnCredentialsRequest`` with REST API credentials
for its peer id and the ``turn:``/``turns:`` URIs of its TURN service."""

from __future__ import annotations

import time
from dataclasses import dataclass

from darkswap_trio import parse_relay_address
from darkswap_trio.proto.signaling import TurnCredentials

__all__ = ["TurnCredentialIssuer", "turn_uris"]


def turn_uris(multiaddr: str, port: int, tls_port: int | None) -> tuple[str, ...]:
    """RFC 7065 URIs on the host peers dial for signaling (the announced one), UDP and
    TCP on ``port``, TLS on ``tls_port``."""
    host = parse_relay_address(multiaddr).host
    host = f"[{host}]" if ":" in host else host
    uris = [f"turn:{host}:{port}?transport=udp", f"turn:{host}:{port}?transport=tcp"]
    if tls_port is not None:
        uris.append(f"turns:{host}:{tls_port}?transport=tcp")
    return tuple(uris)


@dataclass(frozen=True)
class TurnCredentialIssuer:
    secret: bytes
    ttl: float
    uris: tuple[str, ...]

    def issue(self, peer_id: str, unix_now: float | None = None) -> TurnCredentials | None:
        """Credentials for ``peer_id``, or None when it cannot be a REST API username
        (a ``:`` or a space in an id some JWT issuer chose)."""
        # Imported here: the TURN codec (and aioice under it) loads only on relays that
        # issue credentials, not at every relay's start.
        from darkswap_trio.proto.turn import rest_api_credentials

        now = time.time() if unix_now is None else unix_now
        try:
            username, password = rest_api_credentials(self.secret, peer_id, self.ttl, now)
        except ValueError:
            return None
        return TurnCredentials(username, password, self.ttl, self.uris)
