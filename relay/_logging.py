"""Logging setup for the relay process: human text or JSON lines, on stderr.

Code logs with ``extra={...}`` for structured fields (``peer_id``, ``remote``,
``relay_id``, ``code``...). The JSON formatter writes one object per line with
``ts`` (ISO 8601 UTC), ``level``, ``logger``, ``msg`` and every extra field; the text
formatter appends them as ``key=value``. stdout stays free for the READY line.

Each signaling session's task runs with :data:`session_context` set (by the server, when
it accepts the connection): every record logged from that task gets a ``remote`` field,
so a limit hit or a refused registration names the address without the caller passing it.
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import sys
from dataclasses import dataclass
from typing import Any, TextIO

__all__ = [
    "JsonFormatter",
    "SessionContext",
    "TextFormatter",
    "configure_logging",
    "session_context",
]


@dataclass
class SessionContext:
    """Who the current task serves: the remote address and when its TCP connection came."""

    remote: str
    accepted_at: float  # trio clock
    last_error: str | None = None  # code of the last Error frame sent (the close reason)


session_context: contextvars.ContextVar[SessionContext | None] = contextvars.ContextVar(
    "darkswap_relay_session", default=None
)


class _SessionFields(logging.Filter):
    """Add ``remote`` to records logged inside a session's task (unless given)."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = session_context.get()
        if context is not None and not hasattr(record, "remote"):
            record.remote = context.remote
        return True


# Attributes every LogRecord has; anything else came from `extra=`.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "taskName"}


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS}


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extra_fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``ts LEVEL logger: msg key=value ...`` for humans."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        extras = _extra_fields(record)
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


_HANDLER_MARK = "_darkswap_relay_handler"


def configure_logging(
    format: str = "text", level: str | int = "INFO", *, stream: TextIO | None = None
) -> logging.Handler:
    """Install one stderr handler on the root logger (replacing ours from a previous call).

    Raises:
        ValueError: unknown ``format`` or ``level``.
    """
    if format not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', got {format!r}")
    if isinstance(level, str):
        numeric = logging.getLevelName(level.upper())
        if not isinstance(numeric, int):
            raise ValueError(f"unknown log level {level!r}")
        level = numeric
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if format == "json" else TextFormatter())
    handler.addFilter(_SessionFields())
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
