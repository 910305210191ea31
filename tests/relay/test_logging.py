"""Relay log output: JSON lines with structured fields, or text with key=value."""

import io
import json
import logging

import pytest

from relay._logging import configure_logging


@pytest.fixture
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_extra_fields(restore_root_logger) -> None:
    out = io.StringIO()
    configure_logging("json", "debug", stream=out)
    log = logging.getLogger("relay.session")
    log.info("registered %s", "peer", extra={"peer_id": "12D3KooW", "remote": "127.0.0.1:5"})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed", extra={"code": "internal", "relay_id": 7})
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["level"] == "INFO" and first["logger"] == "relay.session"
    assert first["msg"] == "registered peer"
    assert first["peer_id"] == "12D3KooW" and first["remote"] == "127.0.0.1:5"
    assert first["ts"].endswith("Z")
    assert second["code"] == "internal" and second["relay_id"] == 7
    assert "RuntimeError: boom" in second["exc"]


def test_text_format_level_filter_and_reconfigure(restore_root_logger) -> None:
    first, out = io.StringIO(), io.StringIO()
    configure_logging("json", "INFO", stream=first)
    configure_logging("text", "WARNING", stream=out)  # replaces the previous handler
    log = logging.getLogger("relay.circuits")
    log.info("hidden")
    log.warning("limit hit", extra={"limit": "circuits_per_peer"})
    assert first.getvalue() == ""
    (line,) = out.getvalue().splitlines()
    assert "WARNING" in line and "relay.circuits: limit hit" in line
    assert line.endswith("limit=circuits_per_peer")


def test_bad_format_or_level_rejected(restore_root_logger) -> None:
    with pytest.raises(ValueError):
        configure_logging("xml", "INFO")
    with pytest.raises(ValueError):
        configure_logging("text", "CHATTY")
