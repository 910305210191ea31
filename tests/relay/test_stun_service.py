"""The STUN binding service over real loopback UDP, with requests built by aioice."""

import os
import socket
import struct
from functools import partial

import pytest
import trio
from aioice import stun
from hypothesis import given
from hypothesis import strategies as st

from relay._limits import KeyedRateLimiter
from relay._metrics import RelayMetrics
from relay._stun import binding_reply, serve_stun


def binding_request() -> stun.Message:
    return stun.Message(
        message_method=stun.Method.BINDING,
        message_class=stun.Class.REQUEST,
        transaction_id=os.urandom(12),
    )


def message(method: stun.Method, klass: stun.Class) -> bytes:
    msg = stun.Message(message_method=method, message_class=klass, transaction_id=os.urandom(12))
    msg.add_fingerprint()
    return bytes(msg)


async def udp_client(family=socket.AF_INET, host="127.0.0.1") -> trio.socket.SocketType:
    sock = trio.socket.socket(family, socket.SOCK_DGRAM)
    await sock.bind((host, 0))
    return sock


async def ask(sock, server_addr, request: stun.Message) -> stun.Message:
    """Send a binding request and return the parsed (fingerprint-checked) response."""
    await sock.sendto(bytes(request), server_addr)
    data, source = await sock.recvfrom(2048)
    assert source[:2] == server_addr[:2]
    return stun.parse_message(data)  # aioice checks FINGERPRINT when present


def dropped(metrics: RelayMetrics, reason: str) -> float:
    return metrics.value("darkswap_relay_stun_dropped_total", {"reason": reason}) or 0.0


def answered(metrics: RelayMetrics) -> float:
    return metrics.value("darkswap_relay_stun_requests_total") or 0.0


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


async def test_binding_request_gets_xor_mapped_address() -> None:
    metrics = RelayMetrics()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(partial(serve_stun, "127.0.0.1", 0, metrics))
            with await udp_client() as client:
                request = binding_request()
                response = await ask(client, ("127.0.0.1", port), request)
                assert response.message_method == stun.Method.BINDING
                assert response.message_class == stun.Class.RESPONSE
                assert response.transaction_id == request.transaction_id
                assert response.attributes["XOR-MAPPED-ADDRESS"] == client.getsockname()
                # No FINGERPRINT unless asked for it: the smallest valid answer.
                assert "FINGERPRINT" not in response.attributes
                # Requests carrying their own FINGERPRINT get one back.
                request = binding_request()
                request.add_fingerprint()
                response = await ask(client, ("127.0.0.1", port), request)
                assert response.transaction_id == request.transaction_id
                assert "FINGERPRINT" in response.attributes
            assert answered(metrics) == 2
            nursery.cancel_scope.cancel()


async def test_garbage_and_non_binding_are_dropped_and_counted() -> None:
    metrics = RelayMetrics()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(partial(serve_stun, "127.0.0.1", 0, metrics))
            server = ("127.0.0.1", port)
            with await udp_client() as client:
                valid = bytes(binding_request())
                junk = [
                    b"",
                    b"\x00",
                    b"hello, world" * 10,
                    os.urandom(1400),
                    b"\xff" * 20,
                    valid[:-1],  # bad length
                    valid[:4] + b"\x00\x00\x00\x00" + valid[8:],  # bad magic cookie
                    valid + b"\x00\x01\x00\x08",  # truncated attribute
                    b"\x00" * 5000,  # truncated by recvfrom
                ]
                not_request = [
                    message(stun.Method.BINDING, stun.Class.RESPONSE),
                    message(stun.Method.BINDING, stun.Class.ERROR),
                    message(stun.Method.BINDING, stun.Class.INDICATION),
                ]
                not_binding = [
                    message(stun.Method.ALLOCATE, stun.Class.REQUEST),
                    message(stun.Method.REFRESH, stun.Class.REQUEST),
                ]
                for datagram in junk + not_request + not_binding:
                    await client.sendto(datagram, server)
                # One task reads the socket in order: this answer means all the above
                # were handled (and none of them was answered).
                request = binding_request()
                response = await ask(client, server, request)
                assert response.transaction_id == request.transaction_id
            assert dropped(metrics, "malformed") == len(junk)
            assert dropped(metrics, "not_request") == len(not_request)
            assert dropped(metrics, "not_binding") == len(not_binding)
            assert answered(metrics) == 1
            nursery.cancel_scope.cancel()


def with_raw_attributes(request: stun.Message, *attributes: tuple[int, bytes]) -> bytes:
    data = bytes(request)
    for attr_type, value in attributes:
        data += struct.pack("!HH", attr_type, len(value)) + value + bytes(-len(value) % 4)
    return data[:2] + struct.pack("!H", len(data) - 20) + data[4:]


def refingerprint(data: bytes) -> bytes:
    """Drop every FINGERPRINT attribute from a raw message and append a valid one last."""
    pos, body = 20, b""
    while pos + 4 <= len(data):
        attr_type, attr_len = struct.unpack_from("!HH", data, pos)
        end = pos + 4 + attr_len + (-attr_len % 4)
        if attr_type != 0x8028:
            body += data[pos:end]
        pos = end
    data = data[:2] + struct.pack("!H", len(body)) + data[4:20] + body
    crc = stun.message_fingerprint(data)
    data += struct.pack("!HHI", 0x8028, 4, crc)
    return data[:2] + struct.pack("!H", len(data) - 20) + data[4:]


def raw_attributes(data: bytes) -> dict[int, bytes]:
    found, pos = {}, 20
    while pos + 4 <= len(data):
        attr_type, attr_len = struct.unpack_from("!HH", data, pos)
        found[attr_type] = data[pos + 4 : pos + 4 + attr_len]
        pos += 4 + attr_len + (-attr_len % 4)
    return found


async def test_unknown_comprehension_required_attribute_gets_420() -> None:
    metrics = RelayMetrics()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(partial(serve_stun, "127.0.0.1", 0, metrics))
            server = ("127.0.0.1", port)
            with await udp_client() as client:
                request = binding_request()
                request.add_fingerprint()
                data = with_raw_attributes(
                    request, (0x0030, b"abc"), (0x8050, b"optional"), (0x8028, b"")
                )
                data = refingerprint(data)
                await client.sendto(data, server)
                raw, _ = await client.recvfrom(2048)
                assert len(raw) <= len(data)
                response = stun.parse_message(raw)  # verifies FINGERPRINT
                assert response.message_class == stun.Class.ERROR
                assert response.transaction_id == request.transaction_id
                assert response.attributes["ERROR-CODE"] == (420, "")
                # UNKNOWN-ATTRIBUTES lists the required one only.
                assert raw_attributes(raw)[0x000A] == b"\x00\x30"
                # Unknown comprehension-optional attributes are ignored.
                request = binding_request()
                await client.sendto(with_raw_attributes(request, (0x8050, b"x")), server)
                raw, _ = await client.recvfrom(2048)
                response = stun.parse_message(raw)
                assert response.message_class == stun.Class.RESPONSE
            assert metrics.value("darkswap_relay_stun_error_responses_total") == 1
            assert answered(metrics) == 1
            nursery.cancel_scope.cancel()


async def test_rate_limited_per_source_ip() -> None:
    metrics = RelayMetrics()
    limiter = KeyedRateLimiter(rate=0.001, burst=2, max_keys=100)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                partial(serve_stun, "127.0.0.1", 0, metrics, rate_limiter=limiter)
            )
            server = ("127.0.0.1", port)
            with await udp_client() as first, await udp_client(host="127.0.0.2") as second:
                for _ in range(2):
                    await ask(first, server, binding_request())
                await first.sendto(bytes(binding_request()), server)  # over the burst
                # Another source IP still gets answers, after the dropped one was handled.
                response = await ask(second, server, binding_request())
                assert response.attributes["XOR-MAPPED-ADDRESS"][0] == "127.0.0.2"
            assert dropped(metrics, "rate_limited") == 1
            assert answered(metrics) == 3
            nursery.cancel_scope.cancel()


@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback")
async def test_ipv6_and_dual_stack() -> None:
    metrics = RelayMetrics()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port6 = await nursery.start(partial(serve_stun, "::1", 0, metrics))
            with await udp_client(socket.AF_INET6, "::1") as client:
                response = await ask(client, ("::1", port6), binding_request())
                assert response.attributes["XOR-MAPPED-ADDRESS"] == client.getsockname()[:2]

            # "::" is dual-stack; an IPv4 client is told its plain IPv4 address.
            port_any = await nursery.start(partial(serve_stun, "::", 0, metrics))
            with await udp_client() as client4:
                response = await ask(client4, ("127.0.0.1", port_any), binding_request())
                assert response.attributes["XOR-MAPPED-ADDRESS"] == client4.getsockname()
            assert answered(metrics) == 2
            nursery.cancel_scope.cancel()


@given(st.binary(max_size=200))
def test_binding_reply_never_raises(data: bytes) -> None:
    response, reason = binding_reply(data, ("192.0.2.1", 4242))
    assert (response is None) == (reason != "ok")
    assert reason in ("ok", "unknown_attribute", "malformed", "not_request", "not_binding")


@given(st.binary(min_size=0, max_size=64))
def test_binding_reply_on_mutated_requests_never_raises(suffix: bytes) -> None:
    base = bytearray(bytes(binding_request()))
    data = bytes(base[:20]) + suffix
    # Fix the length field so mutations reach the attribute parser.
    data = data[:2] + len(suffix).to_bytes(2, "big") + data[4:]
    response, reason = binding_reply(data, ("2001:db8::1", 1))
    if response is not None:
        parsed = stun.parse_message(response)
        if reason == "ok":
            assert parsed.message_class == stun.Class.RESPONSE
            assert parsed.attributes["XOR-MAPPED-ADDRESS"] == ("2001:db8::1", 1)
        else:  # an unknown comprehension-required attribute: 420 (RFC 5389 7.3.1)
            assert reason == "unknown_attribute"
            assert parsed.message_class == stun.Class.ERROR
            assert parsed.attributes["ERROR-CODE"][0] == 420
