"""RESP2, the Redis wire format, without I/O: commands out, replies in.

Encoding is a few lines; parsing is ``hiredis.Reader`` (hiredis' C parser, sans-IO: feed
bytes, take complete replies). Replies come from a server we trust less than our own
code: :class:`RespParser` raises only :class:`RespParseError` (the project's ParseError
family). Also here: what a Redis URL says (:func:`parse_redis_url`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from darkswap_trio.proto.errors import ParseError

Arg = str | bytes | int | float
NOT_ENOUGH = object()  # what RespParser.next_reply returns until a reply is complete
MAX_BUFFERED = 64 * 1024 * 1024  # bytes of one unfinished reply before the stream is refused


class RespParseError(ParseError):
    """Bytes from Redis that are not RESP2 (or a reply too large to buffer)."""


class ReplyError(Exception):
    """An error reply (``-ERR ...``, ``-NOSCRIPT ...``); ``code`` is its first word."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = message.split(" ", 1)[0]


def encode_command(*args: Arg) -> bytes:
    """One command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        else:  # int, float
            data = repr(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class RespParser:
    """Complete replies from a byte stream: str (simple and bulk strings, UTF-8, bad bytes
    replaced), int, None (nil), list, or :class:`ReplyError` (returned, not raised)."""

    def __init__(self) -> None:
        import hiredis

        self._hiredis = hiredis
        self._reader = hiredis.Reader(encoding="utf-8", errors="replace")
        self._fed = 0  # bytes fed since the last complete reply

    def feed(self, data: bytes | bytearray) -> None:
        self._fed += len(data)
        if self._fed > MAX_BUFFERED:
            raise RespParseError(f"a Redis reply of more than {MAX_BUFFERED} bytes")
        self._reader.feed(bytes(data))

    def next_reply(self) -> Any:
        """The next complete reply, or :data:`NOT_ENOUGH`. Raises RespParseError."""
        try:
            reply = self._reader.gets()
        except self._hiredis.HiredisError as exc:
            raise RespParseError(f"bad reply from Redis: {exc}") from None
        if reply is False:
            return NOT_ENOUGH
        self._fed = 0
        return _convert(reply, self._hiredis.ReplyError)


def _convert(reply: Any, hiredis_error: type) -> Any:
    if isinstance(reply, hiredis_error):
        return ReplyError(str(reply))
    if isinstance(reply, list):
        return [_convert(item, hiredis_error) for item in reply]
    return reply


@dataclass(frozen=True)
class RedisAddress:
    """Where Redis is and how to log in (from ``cluster.redis_url``)."""

    host: str | None  # None: a unix socket
    port: int
    path: str | None  # the unix socket
    tls: bool
    username: str | None
    password: str | None
    db: int


def parse_redis_url(url: str) -> RedisAddress:
    """``redis://[user:password@]host[:port][/db]``, ``rediss://...`` (TLS) or
    ``unix:///path[?db=N]``. Raises ValueError naming what is wrong."""
    parts = urlsplit(url)
    query = {k: v for k, _, v in (item.partition("=") for item in parts.query.split("&") if item)}
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError(f"no socket path in {url!r}")
        db_text = query.get("db", "0")
        host, port, path = None, 0, parts.path
    elif parts.scheme in ("redis", "rediss"):
        if not parts.hostname:
            raise ValueError(f"no host in {url!r}")
        db_text = parts.path.lstrip("/") or query.get("db", "0")
        host, port, path = parts.hostname, parts.port or 6379, None
    else:
        raise ValueError(f"scheme must be redis, rediss or unix: {url!r}")
    if not db_text.isdigit():
        raise ValueError(f"database must be a number in {url!r}")
    return RedisAddress(
        host, port, path, parts.scheme == "rediss", username, password, int(db_text)
    )
