"""A relay session's background work: the pinger (latency, liveness) and the token refresher.

Both run in :func:`run_keepalive`, inside the session's background scope, which the
session cancels when its connection ends; neither ever raises into the caller's nursery.
They see the session through :class:`KeptAlive` (no import of the session module).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Protocol

import trio

from .._config import RelayAddress
from .._identity import Keypair
from ._handshake import TokenProvider

log = logging.getLogger("darkswap_trio.relay")


class KeptAlive(Protocol):
    """What the keepalive uses of a RelaySession."""

    address: RelayAddress
    keypair: Keypair
    frames_received: int
    token_expires_at: float | None

    async def ping(self) -> float: ...

    async def refresh_token(self, token: str) -> float: ...

    async def _abort(self, reason: str) -> None: ...


async def run_keepalive(
    session: KeptAlive,
    scope: trio.CancelScope,
    ping_interval: float,
    token_provider: TokenProvider | None,
    margin: float,
) -> None:
    with scope:
        if token_provider is None or session.token_expires_at is None:
            # The usual case: the pinger alone, in this task (no nursery, no second
            # task: each is ~5% of what a client spends on a registration).
            await _pinger(session, ping_interval)
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_pinger, session, ping_interval)
            nursery.start_soon(_refresher, session, token_provider, margin)


async def _pinger(session: KeptAlive, interval: float) -> None:
    # Never raises: a session that failed is ended by its reader, and an error
    # escaping here would take the caller's nursery (a RelayManager) with it.
    while True:
        await trio.sleep(interval)
        frames_before = session.frames_received
        with trio.move_on_after(interval) as scope:
            try:
                await session.ping()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
        if scope.cancelled_caught:
            if session.frames_received > frames_before:
                # The relay is sending (e.g. credit for our bulk data): it is alive,
                # our Ping is queued behind our own bytes in the socket buffers.
                log.info(
                    "relay %s: Pong late, but frames arrive; keeping the session",
                    session.address,
                )
                continue
            log.warning("relay %s did not answer a Ping within %.1fs", session.address, interval)
            await session._abort("ping timeout")
            return


async def _refresher(session: KeptAlive, provider: TokenProvider, margin: float) -> None:
    while session.token_expires_at is not None and math.isfinite(session.token_expires_at):
        wait = session.token_expires_at - time.time() - margin
        await trio.sleep(max(wait, 0.0))
        try:
            await session.refresh_token(await provider(session.keypair.peer_id))
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.EndOfChannel):
            return  # the session is ending; its reader reports why
        except Exception as exc:  # a RelayError, or a token provider that failed
            log.warning("token refresh at %s failed: %r", session.address, exc)
            await trio.sleep(min(margin / 2, 5.0) or 1.0)
