"""The relay's STUN binding service (RFC 5389 section 10 "Basic server behaviour").

Peers send a Binding request and learn their server-reflexive address from the
XOR-MAPPED-ADDRESS of the response: the ``srflx`` ICE candidate. Nothing else is
served: responses, indications, other methods and garbage are dropped and counted,
never answered (answering garbage would make us a reflector) and never fatal.

The per-datagram decision is the pure function :func:`binding_reply`; the trio part
only moves datagrams. A per-IP :class:`~relay._limits.KeyedRateLimiter` and a total
:class:`~relay._limits.TokenBucket` bound what one source, and all sources together,
can make us send.

Reflection (issue #10 item 8): a Binding request carries no credentials and its source
address may be spoofed, so replies are kept as small as the RFCs allow. The success
response holds XOR-MAPPED-ADDRESS (RFC 8489 section 7.3.1: required) and FINGERPRINT
only when the request had one (section 14.7: optional; a client that multiplexes STUN
sends it and gets it back); no SOFTWARE. That is 32 bytes for a 20-byte IPv4 request
(44 for IPv6), the smallest valid answer. A 420 (unknown comprehension-required
attribute) is sent with an empty reason phrase and only when it is no larger than the
request; otherwise the request is dropped (``stun_dropped{reason="amplification"}``):
the 420 only serves a client that sent attributes we never announced, and answering
a short forged one is the largest reflection the service could give.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct

import trio
from aioice import stun as _aioice_stun

from darkswap_trio.proto.errors import StunParseError
from darkswap_trio.proto.stun import (
    Class,
    Message,
    Method,
    binding_success_response,
    is_stun,
    parse_stun_untrusted,
)

from ._limits import KeyedRateLimiter, TokenBucket, canonical_ip
from ._metrics import RelayMetrics

__all__ = ["answer_binding", "binding_reply", "serve_stun"]

logger = logging.getLogger("relay.stun")

_HEADER_LENGTH = 20
_UNKNOWN_ATTRIBUTES = 0x000A
_FINGERPRINT = 0x8028
_MAX_UNKNOWN_REPORTED = 16  # keeps the error reply no larger than needed

# Larger than any Binding request we answer; a longer datagram is truncated by
# recvfrom and then fails the length check like any other malformed message.
MAX_DATAGRAM = 1500


def binding_reply(data: bytes, source: tuple[str, int]) -> tuple[bytes | None, str]:
    """Decide what to send back for ``data`` received from ``source``.

    Returns ``(success_response, "ok")`` for a Binding request;
    ``(error_response, "unknown_attribute")`` (420) for one carrying comprehension-required
    attributes we do not know, when that answer is no larger than the request; else
    ``(None, reason)`` with reason one of ``malformed``, ``not_request``, ``not_binding``,
    ``amplification`` (a 420 that would be larger than the request).
    """
    if not is_stun(data):
        return None, "malformed"
    try:
        message = parse_stun_untrusted(data)
    except StunParseError:
        return None, "malformed"
    if message.message_class != Class.REQUEST:
        return None, "not_request"
    if message.message_method != Method.BINDING:
        return None, "not_binding"
    fingerprint = "FINGERPRINT" in message.attributes
    unknown = _unknown_required_attributes(data)
    if unknown:
        error = _unknown_attribute_response(message, unknown, fingerprint)
        if len(error) > len(data):
            return None, "amplification"
        return error, "unknown_attribute"
    host = canonical_ip(source[0])  # ::ffff:a.b.c.d seen on a dual-stack socket -> IPv4
    return _binding_success(message, (host, source[1]), fingerprint), "ok"


def _binding_success(request: Message, addr: tuple[str, int], fingerprint: bool) -> bytes:
    """XOR-MAPPED-ADDRESS, plus FINGERPRINT only if the request carried one."""
    if fingerprint:
        return binding_success_response(request, addr)
    response = Message(
        message_method=Method.BINDING,
        message_class=Class.RESPONSE,
        transaction_id=request.transaction_id,
    )
    response.attributes["XOR-MAPPED-ADDRESS"] = addr
    return bytes(response)


def _unknown_required_attributes(data: bytes) -> list[int]:
    """Comprehension-required attribute types (< 0x8000) we do not understand.

    ``data`` has passed :func:`parse_stun_untrusted`, so the attribute walk is in bounds.
    """
    unknown = []
    pos = _HEADER_LENGTH
    while pos + 4 <= len(data):
        attr_type, attr_len = struct.unpack_from("!HH", data, pos)
        if attr_type < 0x8000 and attr_type not in _aioice_stun.ATTRIBUTES_BY_TYPE:
            unknown.append(attr_type)
        pos += 4 + attr_len + (-attr_len % 4)
    return unknown


def _unknown_attribute_response(request: Message, unknown: list[int], fingerprint: bool) -> bytes:
    """420 error with UNKNOWN-ATTRIBUTES (RFC 5389 sections 7.3.1, 15.9), FINGERPRINT
    if the request had one, and an empty reason phrase (the code says it all; shorter).

    aioice cannot encode UNKNOWN-ATTRIBUTES, so the attribute is appended by hand.
    """
    response = Message(
        message_method=Method.BINDING,
        message_class=Class.ERROR,
        transaction_id=request.transaction_id,
    )
    response.attributes["ERROR-CODE"] = (420, "")
    value = b"".join(struct.pack("!H", t) for t in unknown[:_MAX_UNKNOWN_REPORTED])
    data = bytes(response) + struct.pack("!HH", _UNKNOWN_ATTRIBUTES, len(value)) + value
    data += bytes(-len(value) % 4)
    if fingerprint:
        crc = _aioice_stun.message_fingerprint(data)  # sets the length to include it
        data += struct.pack("!HHI", _FINGERPRINT, 4, crc)
    return data[:2] + struct.pack("!H", len(data) - _HEADER_LENGTH) + data[4:]


def answer_binding(
    data: bytes,
    source: tuple[str, int],
    metrics: RelayMetrics,
    rate_limiter: KeyedRateLimiter | None,
    total_limiter: TokenBucket | None,
    now: float,
) -> bytes | None:
    """The reply to send for one datagram (or TCP-framed message), after the rate
    limits, or None; counts it. Shared by :func:`serve_stun` and the TURN service,
    which routes Binding requests here (STUN and TURN share the port)."""
    try:
        response, reason = binding_reply(data, source)
    except Exception:  # never let one datagram stop the service
        logger.exception("STUN request handling failed")
        response, reason = None, "malformed"
    if response is None:
        metrics.stun_dropped.labels(reason=reason).inc()
        return None
    if rate_limiter is not None and not rate_limiter.try_take(canonical_ip(source[0]), 1, now):
        metrics.stun_dropped.labels(reason="rate_limited").inc()
        metrics.limit_hit("stun_per_ip")
        return None
    if total_limiter is not None and not total_limiter.try_take(1, now):
        metrics.stun_dropped.labels(reason="rate_limited").inc()
        metrics.limit_hit("stun_total")
        return None
    # Counted before sending: once the client has its answer, the count is visible.
    if reason == "ok":
        metrics.stun_requests.inc()
    else:
        metrics.stun_error_responses.inc()
    return response


async def _open_socket(host: str, port: int) -> trio.socket.SocketType:
    infos = await trio.socket.getaddrinfo(
        host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE
    )
    if not infos:
        raise OSError(f"cannot resolve STUN bind address {host!r}")
    family, type_, proto, _, sockaddr = infos[0]
    sock = trio.socket.socket(family, type_, proto)
    try:
        if family == socket.AF_INET6 and host in ("::", ""):
            # Dual stack: answer IPv4 clients too (seen as ::ffff:a.b.c.d).
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        await sock.bind(sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_stun(
    host: str,
    port: int,
    metrics: RelayMetrics,
    *,
    rate_limiter: KeyedRateLimiter | None = None,
    total_limiter: TokenBucket | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer STUN Binding requests on UDP ``host:port`` until cancelled.

    ``host`` ``"::"`` binds dual-stack. Calls ``task_status.started(port)`` with the
    bound port (``port=0`` picks a free one). ``rate_limiter``, when given, is charged
    one token per answered request, keyed by canonical source IP; ``total_limiter``
    one token per answer from any source. Over-limit requests are dropped
    (``stun_dropped{reason="rate_limited"}``, ``limit_hits{limit="stun_per_ip"}`` or
    ``{limit="stun_total"}``).
    """
    sock = await _open_socket(host, port)
    with sock:
        bound_port = sock.getsockname()[1]
        logger.info("STUN listening", extra={"host": host, "port": bound_port})
        task_status.started(bound_port)
        while True:
            try:
                data, source = await sock.recvfrom(MAX_DATAGRAM)
            except OSError as exc:
                # e.g. ECONNREFUSED/ECONNRESET from an ICMP error for an earlier reply.
                if exc.errno == errno.EBADF:
                    raise
                metrics.stun_dropped.labels(reason="socket_error").inc()
                continue
            response = answer_binding(
                data, source, metrics, rate_limiter, total_limiter, trio.current_time()
            )
            if response is None:
                continue
            try:
                await sock.sendto(response, source)
            except OSError:  # e.g. unreachable source; the reply is lost, the service lives
                metrics.stun_dropped.labels(reason="socket_error").inc()
