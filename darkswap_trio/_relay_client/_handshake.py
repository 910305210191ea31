"""Registration with a relay (docs/PROTOCOL.md section 2), SDK side.

:func:`open_connection` opens the WebSocket (a refused upgrade becomes a
:class:`RelayError` with the relay's code); :func:`register` runs the handshake on it:
the relay proves the PeerId of its multiaddr, we prove ours, optionally with a JWT.

When the relay's upgrade response announces a server nonce (2.1.1), our first frame is
the signed ``Register`` and ``Registered`` follows: one round trip after the upgrade.
Without it (an older relay, open mode) the ``Register`` is unsigned and the relay's
``Challenge`` is answered with ``Authenticate`` (two round trips).
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

import trio

from .._config import RelayAddress
from .._identity import Keypair, PeerId
from ..proto import signaling as sig
from ..proto.errors import ParseError, WebSocketParseError
from ..proto.upgrade_challenge import UpgradeChallenge, challenge_from_head_untrusted
from ..websocket._endpoints import WebSocketConnection, WebSocketRejected, open_websocket
from ._errors import RelayAuthenticationError, RelayError

log = logging.getLogger("darkswap_trio.relay")

TokenProvider = Callable[[PeerId], Awaitable[str]]


def announced_challenge(ws: WebSocketConnection, address: RelayAddress) -> UpgradeChallenge | None:
    """The challenge of the upgrade response; None if absent or malformed (2-RTT then)."""
    try:
        return challenge_from_head_untrusted(ws.handshake_head)
    except ParseError as exc:
        log.info(
            "relay %s announced a bad challenge (%s); registering in two round trips", address, exc
        )
        return None


async def register(
    ws: WebSocketConnection,
    address: RelayAddress,
    keypair: Keypair,
    token_provider: TokenProvider | None,
) -> tuple[sig.Registered, float]:
    """Register on ``ws``: the relay's ``Registered`` and the seconds from our last
    handshake frame to it (a round trip: the session's first latency figure, so that no
    Ping is needed for one). Raises RelayAuthenticationError (or RelayError) when refused."""
    peer_id = str(keypair.peer_id)
    expected = str(address.peer_id)

    def check_relay_id(relay_peer_id: str) -> None:
        if relay_peer_id != expected:
            raise RelayAuthenticationError(
                f"relay at {address.url} is {relay_peer_id}, but its multiaddr names {expected}",
                "relay_id_mismatch",
            )

    client_nonce = os.urandom(sig.NONCE_LENGTH)
    challenge = announced_challenge(ws, address)
    signature = token = None
    if challenge is not None:
        # Only a claim (the proof comes with Registered), but a relay claiming another
        # id is not the one we configured: refuse it before signing anything for it.
        check_relay_id(challenge.relay_peer_id)
        token = await token_provider(keypair.peer_id) if token_provider is not None else None
        signature = keypair.sign(sig.peer_auth_message(challenge.nonce, expected, peer_id))
    register_frame = sig.encode_message(
        sig.Register(
            peer_id=peer_id,
            protocol=sig.PROTOCOL_VERSION,
            nonce=client_nonce,
            signature=signature,
            token=token,
        )
    )
    # Nothing else writes yet: straight to the socket when it has room (no lock, no
    # task switch), which on a fresh connection it has; the receive below is the checkpoint.
    sent = trio.current_time()
    if not ws.try_send_nowait(register_frame):
        await ws.send(register_frame)
    elif ws.unsent_bytes:
        await ws.flush()

    def check_relay_proof(relay_peer_id: str, proof: bytes | None) -> None:
        check_relay_id(relay_peer_id)
        message = sig.relay_auth_message(client_nonce, relay_peer_id, peer_id)
        if proof is None or not address.peer_id.verify(message, proof):
            raise RelayAuthenticationError(
                f"relay at {address.url} could not prove it owns {expected}", "relay_auth_failed"
            )

    msg = await _receive_message(ws)
    if isinstance(msg, sig.Challenge):  # two round trips: no (usable) nonce in the upgrade
        check_relay_proof(msg.relay_peer_id, msg.signature)
        if token is None and token_provider is not None:
            token = await token_provider(keypair.peer_id)
        proof = keypair.sign(sig.peer_auth_message(msg.nonce, msg.relay_peer_id, peer_id))
        sent = trio.current_time()
        await ws.send(sig.encode_message(sig.Authenticate(signature=proof, token=token)))
        msg = await _receive_message(ws)
        if isinstance(msg, sig.Registered):
            return msg, trio.current_time() - sent
    elif isinstance(msg, sig.Registered):  # 1-RTT or open mode: the relay's proof rides here
        round_trip = trio.current_time() - sent
        check_relay_proof(msg.relay_peer_id, msg.signature)
        return msg, round_trip
    if isinstance(msg, sig.Error):
        raise RelayAuthenticationError(f"relay refused registration: {msg.message}", msg.code)
    raise RelayAuthenticationError(
        f"unexpected {sig.message_type(msg)} during the handshake", "bad_handshake"
    )


async def _receive_message(ws: WebSocketConnection) -> sig.Message:
    while True:
        frame = await ws.receive()
        if isinstance(frame, str):
            try:
                msg = sig.decode_message_untrusted(frame)
            except ParseError as exc:
                raise RelayError(
                    f"relay sent a bad frame during the handshake: {exc}", "bad_frame"
                ) from None
            if not isinstance(msg, (sig.Ping, sig.Pong)):
                return msg
            if isinstance(msg, sig.Ping):
                await ws.send(sig.encode_message(sig.Pong(nonce=msg.nonce)))


MAX_RETRY_AFTER = 300  # seconds; a longer Retry-After is taken as this


def retry_after_untrusted(headers: tuple[tuple[str, str], ...]) -> float | None:
    """A refusal's ``Retry-After`` in seconds (delay-seconds form only), or None."""
    values = [value.strip() for name, value in headers if name.lower() == "retry-after"]
    if len(values) != 1 or not values[0].isascii() or not values[0].isdigit():
        return None
    return float(min(int(values[0][:6]), MAX_RETRY_AFTER))


async def open_connection(
    stack: AsyncExitStack, address: RelayAddress, ssl_context: ssl.SSLContext | None
) -> WebSocketConnection:
    """open_websocket in ``stack``, a refused upgrade turned into a RelayError with its
    code. No deadline of its own: the caller's covers the connect and the handshake."""
    try:
        return await stack.enter_async_context(
            open_websocket(address.url, ssl_context=ssl_context, connect_timeout=None)
        )
    except WebSocketRejected as exc:
        code, message = f"http_{exc.status}", str(exc)
        try:
            refusal = sig.decode_message_untrusted(exc.body)
            if isinstance(refusal, sig.Error):
                code, message = refusal.code or code, refusal.message
        except ParseError:
            pass
        raise RelayError(
            f"relay at {address.url} refused the connection: {message}",
            code,
            retry_after=retry_after_untrusted(exc.headers),
        ) from None
    except WebSocketParseError as exc:
        raise RelayError(
            f"relay at {address.url} broke the WebSocket handshake: {exc}", "bad_handshake"
        ) from None
