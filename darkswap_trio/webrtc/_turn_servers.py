"""TURN servers for a peer connection: ``turn:`` URLs (RFC 7065) with credentials.

The URL is checked where the configuration is made, so a typo fails at once with a
clear message rather than as a connection that never finds a relay path.
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["TurnServerConfig", "TurnUrl", "parse_turn_url"]

DEFAULT_PORT = 3478
DEFAULT_TLS_PORT = 5349
_TRANSPORTS = ("udp", "tcp")


@dataclass(frozen=True)
class TurnUrl:
    """A parsed ``turn:``/``turns:`` URL: the host (name or IP literal), port,
    transport, and whether the connection is TLS (``turns:``, always over TCP)."""

    host: str
    port: int
    transport: Literal["udp", "tcp"]
    tls: bool = False


def parse_turn_url(url: str) -> TurnUrl:
    """Parse ``turn:host[:port][?transport=udp|tcp]`` or ``turns:host[:port]``
    (RFC 7065; IPv6 in brackets; ``turns:`` is TLS over TCP, port 5349 by default).

    Raises:
        ValueError: not such a URL, or one we cannot use (``turns:...?transport=udp``
            would be DTLS, which we do not speak).
    """
    if not isinstance(url, str):
        raise ValueError(f"a TURN URL is a string, not {type(url).__name__}")
    scheme, sep, rest = url.partition(":")
    scheme = scheme.lower()
    if not sep or scheme not in ("turn", "turns"):
        raise ValueError(f"TURN URL {url!r} must start with 'turn:'")
    tls = scheme == "turns"
    address, _, query = rest.partition("?")
    transport = "tcp" if tls else "udp"
    if query:
        key, eq, value = query.partition("=")
        if key != "transport" or not eq or value.lower() not in _TRANSPORTS:
            raise ValueError(f"TURN URL {url!r}: the query may only be transport=udp or tcp")
        transport = value.lower()
        if tls and transport != "tcp":
            raise ValueError(f"TURN URL {url!r}: turns: over UDP (DTLS) is not supported")
    if address.startswith("["):
        host, bracket, port_text = address[1:].partition("]")
        if not bracket or (port_text and not port_text.startswith(":")):
            raise ValueError(f"TURN URL {url!r}: bad bracketed IPv6 address")
        port_text = port_text[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise ValueError(f"TURN URL {url!r}: {host!r} is not an IPv6 address") from exc
    else:
        host, _, port_text = address.partition(":")
        if ":" in port_text:
            raise ValueError(f"TURN URL {url!r}: put an IPv6 address in brackets")
    if not host or any(c in host for c in "/@ "):
        raise ValueError(f"TURN URL {url!r} has no valid host")
    port = DEFAULT_TLS_PORT if tls else DEFAULT_PORT
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"TURN URL {url!r}: port {port_text!r} is not 1-65535")
        port = int(port_text)
    return TurnUrl(host, port, transport, tls)  # type: ignore[arg-type]


@dataclass(frozen=True)
class TurnServerConfig:
    """A TURN server for relay candidates, as W3C ``RTCIceServer`` has it.

    ``url``: ``turn:host[:port][?transport=udp|tcp]`` (port 3478 by default; the
    transport is how we reach the server, what it relays is UDP either way).
    ``turns:host[:port]``: TLS over TCP (port 5349 by default), the server's certificate
    checked against ``ssl_context`` (default: the system's trust store) and the URL's
    host. ``username``/``credential``: long-term credentials, e.g. the TURN REST API pair
    ``darkswap-relay turn-credentials`` prints. Raises ValueError for a bad URL or
    empty credentials.
    """

    url: str
    username: str
    credential: str
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)
    parsed: TurnUrl = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parsed = parse_turn_url(self.url)
        if not isinstance(self.username, str) or not self.username:
            raise ValueError(f"TURN server {self.url!r} needs a username")
        if not isinstance(self.credential, str) or not self.credential:
            raise ValueError(f"TURN server {self.url!r} needs a credential")
        object.__setattr__(self, "parsed", parsed)
