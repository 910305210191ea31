"""TURN servers handed out by the relay ("ask the relay", docs/PROTOCOL.md 13.6).

With ``P2PConfig.turn_from_relay`` each direct attempt gets relay candidates from the
relay that signals it: the relay answers ``TurnCredentialsRequest`` with REST API
credentials for our (proven) peer id and its ``turn:``/``turns:`` URIs. They are kept
until a minute before they expire. A relay that serves no TURN (or refuses us) is
asked again only after a while: the attempt goes on without relay candidates.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import trio

from .._relay_client._session import RelaySession
from .._relay_client._turn_credentials import TurnCredentials, TurnUnavailable
from ..webrtc._peer_connection import PeerConnectionConfig
from ..webrtc._turn_servers import TurnServerConfig

__all__ = ["RelayTurnServers"]

logger = logging.getLogger("darkswap_trio.webrtc")
RENEW_MARGIN = 60.0  # seconds before expiry that credentials are asked for again
RETRY_AFTER = 60.0  # seconds before a relay that gave none is asked again
ASK_TIMEOUT = 5.0


class RelayTurnServers:
    """The TURN servers one relay session hands out, cached (see the module docstring)."""

    def __init__(self, session: RelaySession, relay_only: bool = False) -> None:
        self._session = session
        self._relay_only = relay_only
        self._credentials: TurnCredentials | None = None
        self._servers: list[TurnServerConfig] = []
        self._refused_until = 0.0

    async def config(self, base: PeerConnectionConfig) -> PeerConnectionConfig:
        """``base`` with the relay's TURN servers added (those ``base`` does not name),
        and the relay-only policy if asked for. Raises BrokenResourceError when that
        policy leaves no TURN server at all (the attempt fails; the relay circuit stays)."""
        servers = await self._current()
        named = {(s.parsed.host, s.parsed.port) for s in base.turn_servers}
        extra = [s for s in servers if (s.parsed.host, s.parsed.port) not in named]
        turn_servers = [*base.turn_servers, *extra]
        if self._relay_only and not turn_servers:
            raise trio.BrokenResourceError("relay-only ICE, and the relay gives no TURN server")
        if not extra:
            return base
        policy = "relay" if self._relay_only else base.ice_transport_policy
        return replace(base, turn_servers=turn_servers, ice_transport_policy=policy)

    async def _current(self) -> list[TurnServerConfig]:
        now = time.time()
        credentials = self._credentials
        if credentials is not None and now < credentials.expires_at - RENEW_MARGIN:
            return self._servers
        if now < self._refused_until:
            return []
        try:
            credentials = await self._session.turn_credentials(timeout=ASK_TIMEOUT)
        except (TurnUnavailable, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            logger.info("no TURN credentials from the relay: %s", exc)
            self._refused_until = now + RETRY_AFTER
            return []
        self._credentials = credentials
        self._servers = servers_from(credentials)
        return self._servers


def servers_from(credentials: TurnCredentials) -> list[TurnServerConfig]:
    """One TurnServerConfig per usable URI, one per (host, port): ``turn:`` over UDP
    before TCP, ``turns:`` only for a port no plain URI names (a relay's TLS port)."""

    def order(uri: str) -> int:
        return 2 if uri.startswith("turns:") else 1 if "transport=tcp" in uri else 0

    servers: list[TurnServerConfig] = []
    seen: set[tuple[str, int]] = set()
    for uri in sorted(credentials.uris, key=order):
        try:
            server = TurnServerConfig(uri, credentials.username, credentials.password)
        except ValueError as exc:  # a URI we cannot use (turns: over UDP, say)
            logger.info("TURN URI %r from the relay skipped: %s", uri, exc)
            continue
        where = (server.parsed.host, server.parsed.port)
        if where not in seen:
            seen.add(where)
            servers.append(server)
    return servers
