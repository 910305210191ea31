"""The server's challenge in the WebSocket upgrade response (docs/PROTOCOL.md 2.1.1).

A relay that requires proof of peer-id ownership puts what its ``Challenge`` message
would carry (its nonce and its peer id; not its signature, which needs the client's
nonce) in a header of its ``101 Switching Protocols`` response. A client that reads it
sends the signed ``Register`` as its first frame: registration takes one round trip
after the upgrade instead of two. Sans-IO: no trio, no sockets.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from .errors import SignalingParseError
from .signaling import MAX_ID_LENGTH, NONCE_LENGTH

CHALLENGE_HEADER = "Darkswap-Relay-Challenge"
# Matched in the raw head, lower-cased: the WebSocket client has already parsed the
# head, so a second full parse would only find what one search finds.
_NEEDLE = b"\r\n" + CHALLENGE_HEADER.lower().encode("ascii") + b":"
_NONCE_TEXT = 4 * ((NONCE_LENGTH + 2) // 3)  # base64 with padding: 44 characters
_PEER_ID = re.compile(rb"[1-9A-HJ-NP-Za-km-z]{1,%d}" % MAX_ID_LENGTH)  # base58btc text


@dataclass(frozen=True, slots=True)
class UpgradeChallenge:
    nonce: bytes  # the server nonce the peer signs (peer-auth, 2.3)
    relay_peer_id: str  # the relay's claim; its proof comes in Registered.signature


def challenge_header(nonce: bytes, relay_peer_id: str) -> tuple[str, str]:
    """The (name, value) header field announcing a challenge in a 101 response."""
    if len(nonce) != NONCE_LENGTH:
        raise ValueError(f"a server nonce is {NONCE_LENGTH} bytes")
    return CHALLENGE_HEADER, base64.b64encode(nonce).decode("ascii") + " " + relay_peer_id


def challenge_from_head_untrusted(head: bytes | bytearray) -> UpgradeChallenge | None:
    """The challenge announced in an HTTP response head, or None without the header.

    ``head`` is the response head through its blank line. Raises only
    SignalingParseError: the header is repeated, or its value is not
    ``<base64 of NONCE_LENGTH bytes> <base58 peer id>``.
    """
    lower = bytes(head).lower()
    start = lower.find(_NEEDLE)
    if start < 0:
        return None
    if lower.find(_NEEDLE, start + 1) >= 0:
        raise SignalingParseError(f"{CHALLENGE_HEADER} is repeated")
    value_start = start + len(_NEEDLE)
    end = lower.find(b"\r\n", value_start)
    if end < 0:
        raise SignalingParseError(f"{CHALLENGE_HEADER} is not terminated")
    encoded, sep, peer_id = bytes(head[value_start:end]).strip(b" \t").partition(b" ")
    if not sep or len(encoded) != _NONCE_TEXT or not _PEER_ID.fullmatch(peer_id):
        raise SignalingParseError(f"{CHALLENGE_HEADER} must be '<base64 nonce> <peer id>'")
    try:
        nonce = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise SignalingParseError(f"{CHALLENGE_HEADER} nonce is not valid base64") from None
    if len(nonce) != NONCE_LENGTH:
        raise SignalingParseError(f"{CHALLENGE_HEADER} nonce must hold {NONCE_LENGTH} bytes")
    return UpgradeChallenge(nonce, peer_id.decode("ascii"))
