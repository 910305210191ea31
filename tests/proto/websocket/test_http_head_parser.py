"""The HTTP head parser's one-match fast path gives what the line-by-line checks give:
the same fields for a valid head, the same error for an invalid one."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from darkswap_trio.proto.errors import WebSocketParseError
from darkswap_trio.proto.websocket._handshake import _parse_head

TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")


def reference(head: bytes) -> tuple[bytes, tuple[tuple[str, str], ...]] | str:
    """The checks line by line (the parser before its fast path); an error as its text."""
    lines = head[:-4].split(b"\r\n")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not TOKEN.fullmatch(name):
            return "malformed header field"
        value = value.strip(b" \t")
        if not FIELD_VALUE.fullmatch(value):
            return "invalid character in header value"
        headers.append((name.decode("ascii").lower(), value.decode("latin-1")))
    return lines[0], tuple(headers)


field_bytes = st.sampled_from([b"a", b"Host", b"X-1", b":", b" ", b"\t", b"v", b"\xe9", b"\r",
                               b"\n", b"\x00", b"\x7f", b"(", b"1"])  # fmt: skip
line = st.lists(field_bytes, max_size=8).map(b"".join)


@given(st.lists(line, max_size=6), st.booleans())
def test_fast_path_agrees_with_the_line_checks(lines, well_formed_names):
    if well_formed_names:
        lines = [b"X-" + each if b":" in each else b"X-h: " + each for each in lines]
    head = b"GET / HTTP/1.1\r\n" + b"".join(each + b"\r\n" for each in lines) + b"\r\n"
    expected = reference(head)
    try:
        got: object = _parse_head(head)
    except WebSocketParseError as exc:
        got = str(exc)
    assert got == expected
