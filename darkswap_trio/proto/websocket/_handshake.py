"""WebSocket opening handshake (RFC 6455 section 4) over a strict HTTP/1.1 subset.

Sans-IO: functions turn bytes into frozen dataclasses and back; no sockets, no clock.
The parsers (``*_untrusted``) read network input and raise only
:class:`~darkswap_trio.proto.errors.WebSocketParseError`. Limits are strict on purpose:
a relay server faces many untrusted peers, and a handshake has no reason to be large.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import WebSocketParseError

#: Magic GUID from RFC 6455 section 1.3.
WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

MAX_HEADER_BYTES = 16 * 1024
MAX_HEADER_COUNT = 64

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Field values: visible ASCII, obs-text, space and tab; no CR/LF/NUL/controls.
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_REQUEST_TARGET = re.compile(rb"[\x21-\x7e]+")
# Header lines, each a _TOKEN, a colon and a _FIELD_VALUE, each ended by CRLF.
_HEADER_BLOCK = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*\r\n)*")
_REASON_PHRASE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")

REASON_PHRASES = {
    101: "Switching Protocols",
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    426: "Upgrade Required",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class WebSocketHandshakeError(WebSocketParseError):
    """The handshake is malformed; ``status`` is the HTTP status a server should answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """A parsed HTTP/1.1 request head. Header names are lower-cased, values latin-1."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (lower-case), several joined by ``", "``."""
        return _header(self.headers, name)


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A parsed HTTP/1.1 response head."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        return _header(self.headers, name)


def _header(headers: tuple[tuple[str, str], ...], name: str) -> str | None:
    values = [v for k, v in headers if k == name]
    return ", ".join(values) if values else None


def _tokens(value: str | None) -> set[str]:
    if value is None:
        return set()
    return {part.strip().lower() for part in value.split(",") if part.strip()}


def find_head_end_untrusted(buffer: bytes | bytearray, limit: int = MAX_HEADER_BYTES) -> int | None:
    """Length of the HTTP head (through the blank line) in ``buffer``, or None if incomplete.

    Raises WebSocketHandshakeError (431) when ``limit`` bytes arrived without a blank line.
    """
    end = buffer.find(b"\r\n\r\n", 0, limit + 4)
    if end >= 0 and end + 4 <= limit:
        return end + 4
    if len(buffer) >= limit:
        raise WebSocketHandshakeError("HTTP head too large", 431)
    return None


def _parse_head(head: bytes) -> tuple[bytes, tuple[tuple[str, str], ...]]:
    if len(head) > MAX_HEADER_BYTES:
        raise WebSocketHandshakeError("HTTP head too large", 431)
    if not head.endswith(b"\r\n\r\n"):
        raise WebSocketHandshakeError("HTTP head is not terminated by an empty line")
    lines = head[:-4].split(b"\r\n")
    if len(lines) - 1 > MAX_HEADER_COUNT:
        raise WebSocketHandshakeError("too many header fields", 431)
    first_end = head.find(b"\r\n") + 2
    if _HEADER_BLOCK.fullmatch(head, first_end, len(head) - 2):
        # Every field checked by one match (what the loop below checks line by line,
        # two matches per line): the loop only for a head that fails, to say why.
        return lines[0], tuple(
            (name.decode("ascii").lower(), value.strip(b" \t").decode("latin-1"))
            for name, _, value in (line.partition(b":") for line in lines[1:])
        )
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):
            # Also rejects obs-fold continuation lines and whitespace before the colon.
            raise WebSocketHandshakeError("malformed header field")
        value = value.strip(b" \t")
        if not _FIELD_VALUE.fullmatch(value):
            raise WebSocketHandshakeError("invalid character in header value")
        headers.append((name.decode("ascii").lower(), value.decode("latin-1")))
    return lines[0], tuple(headers)


def parse_request_untrusted(head: bytes) -> HttpRequest:
    """Parse an HTTP/1.1 request head (as delimited by :func:`find_head_end_untrusted`)."""
    start, headers = _parse_head(bytes(head))
    parts = start.split(b" ")
    if len(parts) != 3:
        raise WebSocketHandshakeError("malformed request line")
    method, target, version = parts
    if not _TOKEN.fullmatch(method) or not _REQUEST_TARGET.fullmatch(target):
        raise WebSocketHandshakeError("malformed request line")
    if version != b"HTTP/1.1":
        # RFC 6455 4.1: the handshake MUST be HTTP/1.1 or higher; HTTP/2 does not reach here.
        raise WebSocketHandshakeError("HTTP version not supported", 505)
    return HttpRequest(method.decode("ascii"), target.decode("ascii"), headers)


def parse_response_untrusted(head: bytes) -> HttpResponse:
    """Parse an HTTP/1.1 response head."""
    start, headers = _parse_head(bytes(head))
    version, _, rest = start.partition(b" ")
    status, _, reason = rest.partition(b" ")
    if version != b"HTTP/1.1" or len(status) != 3 or not status.isdigit():
        raise WebSocketHandshakeError("malformed status line")
    if not _REASON_PHRASE.fullmatch(reason):
        raise WebSocketHandshakeError("malformed status line")
    return HttpResponse(int(status), reason.decode("latin-1"), headers)


def is_upgrade_request(request: HttpRequest) -> bool:
    """Whether the request asks for a WebSocket upgrade at all (valid or not)."""
    return "websocket" in _tokens(request.header("upgrade"))


def validate_upgrade_request(request: HttpRequest) -> str:
    """Check an upgrade request against RFC 6455 4.2.1; return its Sec-WebSocket-Key.

    Raises WebSocketHandshakeError with the status to answer (400, or 426 for a version
    other than 13 so the client can retry with ours).
    """
    if request.method != "GET":
        raise WebSocketHandshakeError("WebSocket upgrade must use GET", 405)
    if request.header("host") is None:
        raise WebSocketHandshakeError("missing Host header")
    if not is_upgrade_request(request):
        raise WebSocketHandshakeError("missing Upgrade: websocket", 426)
    if "upgrade" not in _tokens(request.header("connection")):
        raise WebSocketHandshakeError("missing Connection: Upgrade")
    if request.header("sec-websocket-version") != "13":
        raise WebSocketHandshakeError("unsupported Sec-WebSocket-Version", 426)
    key = request.header("sec-websocket-key")
    if key is None or not _valid_key(key):
        raise WebSocketHandshakeError("invalid Sec-WebSocket-Key")
    return key


def _valid_key(key: str) -> bool:
    try:
        return len(base64.b64decode(key.encode("ascii"), validate=True)) == 16
    except (ValueError, UnicodeEncodeError):
        return False


def accept_token(key: str) -> str:
    """Sec-WebSocket-Accept for ``key``: base64(SHA-1(key + GUID))."""
    digest = hashlib.sha1(key.encode("ascii") + WEBSOCKET_GUID).digest()
    return base64.b64encode(digest).decode("ascii")


def _render_headers(headers: Sequence[tuple[str, str]]) -> bytes:
    out = []
    for name, value in headers:
        raw_name = name.encode("ascii")
        raw_value = value.encode("latin-1")
        if not _TOKEN.fullmatch(raw_name) or not _FIELD_VALUE.fullmatch(raw_value):
            raise ValueError(f"invalid header {name!r}: {value!r}")
        out.append(raw_name + b": " + raw_value + b"\r\n")
    return b"".join(out)


def build_accept_response(key: str, extra_headers: Sequence[tuple[str, str]] = ()) -> bytes:
    """The 101 Switching Protocols response that completes the server handshake."""
    # The fixed fields need no validation (the token is base64): only the caller's.
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_token(key).encode("ascii") + b"\r\n"
        + _render_headers(extra_headers) + b"\r\n"
    )  # fmt: skip


def build_http_response(
    status: int,
    body: bytes = b"",
    *,
    content_type: str = "text/plain; charset=utf-8",
    extra_headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    """A complete HTTP/1.1 response with a body, after which the connection closes."""
    if not 100 <= status <= 999:
        raise ValueError(f"invalid HTTP status {status}")
    reason = REASON_PHRASES.get(status, "Status")
    headers = [("Content-Type", content_type)] if body or status >= 400 else []
    headers += [("Content-Length", str(len(body))), ("Connection", "close"), *extra_headers]
    if status == 426:
        headers.append(("Sec-WebSocket-Version", "13"))
    return f"HTTP/1.1 {status} {reason}\r\n".encode() + _render_headers(headers) + b"\r\n" + body


def build_upgrade_request(
    host: str,
    target: str,
    key: str,
    extra_headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    """The client's opening handshake. ``host`` is the Host header value (with port)."""
    if not target.isascii() or not _REQUEST_TARGET.fullmatch(target.encode("ascii")):
        raise ValueError(f"invalid request target {target!r}")
    headers = [
        ("Host", host),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", "13"),
        *extra_headers,
    ]
    return f"GET {target} HTTP/1.1\r\n".encode("ascii") + _render_headers(headers) + b"\r\n"


def validate_upgrade_response(response: HttpResponse, key: str) -> None:
    """Check the server's answer to our upgrade request (RFC 6455 4.1, client side)."""
    if response.status != 101:
        raise WebSocketHandshakeError(f"server answered {response.status} {response.reason}")
    if "websocket" not in _tokens(response.header("upgrade")):
        raise WebSocketHandshakeError("response lacks Upgrade: websocket")
    if "upgrade" not in _tokens(response.header("connection")):
        raise WebSocketHandshakeError("response lacks Connection: Upgrade")
    if response.header("sec-websocket-accept") != accept_token(key):
        raise WebSocketHandshakeError("wrong Sec-WebSocket-Accept")
    if response.header("sec-websocket-extensions") is not None:
        # We offered none, so the server must not select any (RFC 6455 9.1).
        raise WebSocketHandshakeError("server selected an extension we did not offer")
