"""The TURN server core (sans-IO) driven by a test client: auth, methods, rules, quotas."""

from __future__ import annotations

import struct

import pytest
from aioice import stun
from turn_client import Client, drain, events, make_server, peer_attr, tid

from darkswap_trio.proto.turn import AllocationClosed, LimitHit, ToClient, ToPeer
from darkswap_trio.proto.turn.codec import (
    ALLOCATE,
    INDICATION,
    SEND,
    Attr,
    encode_channel_data,
    encode_message,
    parse_channel_data_untrusted,
    uint32_attr,
)

PEER = ("192.0.2.10", 5000)  # TEST-NET-1 is not global: tests use a global address below
GLOBAL_PEER = ("8.8.8.8", 5000)
GLOBAL_PEER2 = ("1.1.1.1", 6000)
GLOBAL_PEER3 = ("9.9.9.9", 7000)


def allocated(**overrides) -> tuple[Client, object]:
    server = make_server(**overrides)
    client = Client(server)
    response = client.allocate(0.0)
    assert response.message_class == stun.Class.RESPONSE, response
    return client, server


def test_first_allocate_is_challenged_with_realm_and_nonce() -> None:
    server = make_server()
    client = Client(server)
    response = client.request(
        ALLOCATE, [uint32_attr(Attr.REQUESTED_TRANSPORT, 17 << 24)], 0.0, auth=False
    )
    assert response.error_code == 401
    assert response.attributes["REALM"] == "test.realm"
    assert response.attributes["NONCE"]
    assert "MESSAGE-INTEGRITY" not in response.attributes


def test_allocate_success_is_signed_and_carries_addresses() -> None:
    server = make_server()
    client = Client(server)
    response = client.allocate(0.0, lifetime=1200)
    assert response.message_class == stun.Class.RESPONSE
    assert response.check_message_integrity(client.key)
    assert response.attributes["LIFETIME"] == 1200
    assert response.attributes["XOR-RELAYED-ADDRESS"] == ("198.51.100.1", 50001)
    assert response.attributes["XOR-MAPPED-ADDRESS"] == ("203.0.113.7", 40000)


def test_lifetime_defaults_and_caps() -> None:
    client, server = allocated()
    assert client.refresh(1.0).attributes["LIFETIME"] == 600
    assert client.refresh(2.0, lifetime=30).attributes["LIFETIME"] == 600  # never below default
    assert client.refresh(3.0, lifetime=10**6).attributes["LIFETIME"] == 3600
    assert LimitHit("lifetime") in client.events


def test_stale_nonce_gets_438_and_a_fresh_nonce_works() -> None:
    server = make_server(nonce_lifetime=60.0)
    client = Client(server)
    client._learn_nonce(0.0)
    attrs = [uint32_attr(Attr.REQUESTED_TRANSPORT, 17 << 24)]
    response = client.request(ALLOCATE, attrs, 61.0, retry_stale=False)
    assert response.error_code == 438
    assert response.attributes["NONCE"].decode() != client.nonce
    client.nonce = response.attributes["NONCE"].decode()
    assert client.allocate(62.0).message_class == stun.Class.RESPONSE


def test_nonce_from_another_address_is_refused() -> None:
    server = make_server()
    a, b = Client(server), Client(server, addr=("203.0.113.8", 1))
    a._learn_nonce(0.0)
    b.nonce = a.nonce
    attrs = [uint32_attr(Attr.REQUESTED_TRANSPORT, 17 << 24)]
    assert b.request(ALLOCATE, attrs, 0.0, retry_stale=False).error_code == 438


def test_expired_username_and_wrong_password_are_401() -> None:
    server = make_server()
    expired = Client(server, ttl=10.0)
    assert expired.allocate(11.0).error_code == 401
    wrong = Client(server, addr=("203.0.113.9", 2))
    wrong.key = b"\x00" * 16
    assert wrong.allocate(0.0).error_code == 401
    assert server.counters["expired_credentials"] == 1
    assert server.counters["bad_integrity"] == 1


def test_requested_transport_rules() -> None:
    server = make_server()
    client = Client(server)
    assert client.allocate(0.0, transport=6).error_code == 442  # TCP relaying: not offered
    assert client.request(ALLOCATE, [], 0.0).error_code == 400  # missing


def test_unknown_comprehension_required_attribute_is_420() -> None:
    server = make_server()
    client = Client(server)
    attrs = [
        uint32_attr(Attr.REQUESTED_TRANSPORT, 17 << 24),
        (Attr.DONT_FRAGMENT, b""),
        (0x7777, b"x"),
    ]
    data = encode_message(ALLOCATE, 0, tid(), attrs)
    server.receive(client.key_tuple, data, 0.0)
    (out,) = drain(server)
    assert isinstance(out, ToClient)
    message = stun.parse_message(out.data)
    assert message.error_code == 420
    body = out.data[20:]
    pos = 0
    unknown = None
    while pos < len(body):
        t, n = struct.unpack_from("!HH", body, pos)
        if t == Attr.UNKNOWN_ATTRIBUTES:
            unknown = sorted(struct.unpack(f"!{n // 2}H", body[pos + 4 : pos + 4 + n]))
        pos += 4 + n + (-n % 4)
    assert unknown == [Attr.DONT_FRAGMENT, 0x7777]


def test_retransmitted_allocate_replays_and_another_is_437() -> None:
    server = make_server()
    client = Client(server)
    client._learn_nonce(0.0)
    t = tid()
    attrs = [uint32_attr(Attr.REQUESTED_TRANSPORT, 17 << 24)]
    first = client.request(ALLOCATE, attrs, 0.0, transaction_id=t)
    again = client.request(ALLOCATE, attrs, 0.5, transaction_id=t)
    assert bytes(first) == bytes(again) or first.attributes == again.attributes
    assert client.allocate(1.0).error_code == 437


def test_create_permission_installs_every_peer_address() -> None:
    client, server = allocated()
    assert (
        client.permit([GLOBAL_PEER, GLOBAL_PEER2, GLOBAL_PEER3], 1.0).message_class
        == stun.Class.RESPONSE
    )
    for peer in (GLOBAL_PEER, GLOBAL_PEER2, GLOBAL_PEER3):
        server.receive_from_peer(1, peer, b"hi", 2.0)
    indications = [stun.parse_message(t.data) for t in drain(server)]
    assert [m.attributes["XOR-PEER-ADDRESS"] for m in indications] == [
        GLOBAL_PEER,
        GLOBAL_PEER2,
        GLOBAL_PEER3,
    ]
    assert all(m.attributes["DATA"] == b"hi" for m in indications)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "::ffff:127.0.0.1",
        "64:ff9b::7f00:1",
        "0.0.0.0",
        "::",
        "10.1.2.3",
        "192.168.1.1",
        "172.16.0.1",
        "169.254.169.254",
        "224.0.0.1",
        "100.64.0.1",
        "198.51.100.2",  # a neighbour of the relay's address, not global
        "::1",
        "fe80::1",
    ],
)
def test_non_global_peers_are_forbidden(address: str) -> None:
    client, server = allocated()
    assert client.permit([(address, 1)], 1.0).error_code == 403
    assert client.bind(0x4000, (address, 1), 1.0).error_code == 403


def test_two_allocations_reach_each_other_in_process() -> None:
    """Relay-only peers of one server: A's relayed address is a permitted peer of B
    (relay_ip is not global here, and it is the relay's own), data goes A -> B without
    a ToPeer, and nothing else on relay_ip is reachable."""
    server = make_server()
    a = Client(server, addr=("203.0.113.7", 40000), peer_id="peerA")
    b = Client(server, addr=("203.0.113.8", 40001), peer_id="peerB")
    relayed_a = a.allocate(0.0).attributes["XOR-RELAYED-ADDRESS"]
    relayed_b = b.allocate(0.0).attributes["XOR-RELAYED-ADDRESS"]
    assert relayed_a[0] == relayed_b[0] == "198.51.100.1"
    assert a.bind(0x4000, relayed_b, 1.0).message_class == stun.Class.RESPONSE
    assert b.permit([relayed_a], 1.0).message_class == stun.Class.RESPONSE
    server.receive(a.key_tuple, encode_channel_data(0x4000, b"to b"), 2.0)
    out = drain(server)
    assert [type(t) for t in out] == [ToClient] and out[0].client == b.key_tuple
    data = stun.parse_message(out[0].data)
    assert data.attributes["XOR-PEER-ADDRESS"] == relayed_a
    assert data.attributes["DATA"] == b"to b"
    assert server.counters["hairpin_datagrams"] == 1
    # Another port of relay_ip is no allocation: dropped, never sent by the kernel.
    assert a.bind(0x4001, ("198.51.100.1", 9), 3.0).message_class == stun.Class.RESPONSE
    server.receive(a.key_tuple, encode_channel_data(0x4001, b"ssrf"), 4.0)
    assert drain(server) == []
    assert server.counters["drop_peer_denied"] == 1
    # Without B's permission for A, B gets nothing.
    c = Client(server, addr=("203.0.113.9", 40002), peer_id="peerC")
    relayed_c = c.allocate(5.0).attributes["XOR-RELAYED-ADDRESS"]
    assert a.bind(0x4002, relayed_c, 5.0).message_class == stun.Class.RESPONSE
    server.receive(a.key_tuple, encode_channel_data(0x4002, b"unasked"), 6.0)
    assert drain(server) == []


def test_own_global_address_is_forbidden() -> None:
    client, server = allocated(own_addresses=("8.8.4.4",))
    assert client.permit([("8.8.4.4", 1)], 1.0).error_code == 403


def test_allow_loopback_admits_loopback_only() -> None:
    client, server = allocated(allow_loopback_peers=True)
    assert (
        client.permit([("127.0.0.1", 1), ("64:ff9b::7f00:2", 2)], 1.0).message_class
        == stun.Class.RESPONSE
    )
    assert client.permit([("10.0.0.1", 1)], 1.0).error_code == 403
    assert client.permit([("::1", 1)], 1.0).error_code == 443  # IPv4 relayed address only


def test_one_denied_peer_refuses_the_whole_request() -> None:
    client, server = allocated()
    assert client.permit([GLOBAL_PEER, ("10.0.0.1", 1)], 1.0).error_code == 403
    server.receive_from_peer(1, GLOBAL_PEER, b"x", 2.0)
    assert drain(server) == []


def test_send_indication_and_data_indication() -> None:
    client, server = allocated()
    client.permit([GLOBAL_PEER], 1.0)
    t = tid()
    data = encode_message(
        SEND, INDICATION, t, [peer_attr(GLOBAL_PEER, t), (Attr.DATA, b"payload")], fingerprint=False
    )
    server.receive(client.key_tuple, data, 2.0)
    assert drain(server) == [ToPeer(1, GLOBAL_PEER, b"payload")]
    # No permission for another peer: dropped both ways.
    t = tid()
    data = encode_message(SEND, INDICATION, t, [peer_attr(GLOBAL_PEER2, t), (Attr.DATA, b"x")])
    server.receive(client.key_tuple, data, 2.0)
    server.receive_from_peer(1, GLOBAL_PEER2, b"x", 2.0)
    assert drain(server) == []
    assert server.counters["drop_no_permission"] == 2


def test_permission_expires_after_300_seconds() -> None:
    client, server = allocated()
    client.permit([GLOBAL_PEER], 10.0)
    server.receive_from_peer(1, GLOBAL_PEER, b"a", 309.0)
    assert len(drain(server)) == 1
    server.handle_timeout(310.0)
    server.receive_from_peer(1, GLOBAL_PEER, b"a", 310.0)
    assert drain(server) == []


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_channel_data_both_ways(transport: str) -> None:
    server = make_server()
    client = Client(server, transport=transport)
    client.allocate(0.0)
    assert client.bind(0x4001, GLOBAL_PEER, 1.0).message_class == stun.Class.RESPONSE
    stream = transport == "tcp"
    server.receive(client.key_tuple, encode_channel_data(0x4001, b"abcde", stream=stream), 2.0)
    assert drain(server) == [ToPeer(1, GLOBAL_PEER, b"abcde")]
    server.receive_from_peer(1, GLOBAL_PEER, b"xyz", 3.0)
    (out,) = drain(server)
    assert isinstance(out, ToClient) and out.payload == 3
    assert len(out.data) == (8 if stream else 7)  # padded to 4 bytes over TCP
    assert parse_channel_data_untrusted(out.data, stream=stream) == (0x4001, b"xyz")


def test_channel_bind_rules() -> None:
    client, server = allocated()
    client.refresh(0.5, lifetime=3600)
    assert client.bind(0x3FFF, GLOBAL_PEER, 1.0).error_code == 400
    assert client.bind(0x5000, GLOBAL_PEER, 1.0).error_code == 400
    assert client.bind(0x4000, GLOBAL_PEER, 1.0).message_class == stun.Class.RESPONSE
    assert client.bind(0x4000, GLOBAL_PEER, 2.0).message_class == stun.Class.RESPONSE  # refresh
    assert client.bind(0x4000, GLOBAL_PEER2, 3.0).error_code == 400  # number taken
    assert client.bind(0x4001, GLOBAL_PEER, 3.0).error_code == 400  # peer taken
    # Expired at 601, yet reserved for 5 more minutes; then free.
    client.permit([GLOBAL_PEER2], 700.0)
    assert client.bind(0x4000, GLOBAL_PEER2, 700.0).error_code == 400
    server.handle_timeout(902.0)
    assert client.bind(0x4000, GLOBAL_PEER2, 902.0).message_class == stun.Class.RESPONSE


def test_refresh_zero_deletes_and_requests_then_mismatch() -> None:
    client, server = allocated()
    assert client.refresh(1.0, lifetime=0).attributes["LIFETIME"] == 0
    assert AllocationClosed(1, client.key_tuple, "deleted") in client.events
    assert client.permit([GLOBAL_PEER], 2.0).error_code == 437
    assert server.statistics().allocations == 0


def test_allocation_expires() -> None:
    client, server = allocated()
    assert server.poll_timeout() == 600.0
    server.handle_timeout(599.0)
    assert events(server) == []
    server.handle_timeout(600.0)
    assert events(server) == [AllocationClosed(1, client.key_tuple, "expired")]
    assert server.poll_timeout() is None


def test_tcp_connection_close_deletes_allocation() -> None:
    server = make_server()
    client = Client(server, transport="tcp")
    client.allocate(0.0)
    server.client_closed(client.key_tuple, 1.0)
    assert events(server) == [AllocationClosed(1, client.key_tuple, "client_closed")]


def test_quota_per_user_per_ip_and_total() -> None:
    server = make_server(max_allocations_per_user=1, max_allocations_per_ip=2, max_allocations=3)
    a = Client(server, addr=("203.0.113.1", 1), peer_id="u1")
    assert a.allocate(0.0).message_class == stun.Class.RESPONSE
    a2 = Client(server, addr=("203.0.113.1", 2), peer_id="u1")
    response = a2.allocate(0.0)
    assert response.error_code == 486 and response.check_message_integrity(a2.key)
    assert Client(server, addr=("203.0.113.1", 3), peer_id="u2").allocate(0.0).error_code is None
    assert Client(server, addr=("203.0.113.1", 4), peer_id="u3").allocate(0.0).error_code == 486
    assert Client(server, addr=("203.0.113.2", 1), peer_id="u4").allocate(0.0).error_code is None
    last = Client(server, addr=("203.0.113.3", 1), peer_id="u5")
    assert last.allocate(0.0).error_code == 508
    hits = [e.limit for e in a2.events + last.events if isinstance(e, LimitHit)]
    assert "allocations_per_user" in hits and "allocations_total" in hits


def test_quota_permissions_and_channels() -> None:
    client, server = allocated(max_permissions_per_allocation=2, max_channels_per_allocation=1)
    assert client.permit([GLOBAL_PEER, GLOBAL_PEER2], 1.0).error_code is None
    assert client.permit([GLOBAL_PEER3], 1.0).error_code == 508
    assert client.bind(0x4000, GLOBAL_PEER, 1.0).error_code is None
    assert client.bind(0x4001, GLOBAL_PEER2, 1.0).error_code == 508


def test_bandwidth_quota_drops_and_counts() -> None:
    client, server = allocated(bandwidth_per_allocation=1000, bandwidth_burst=1500)
    client.bind(0x4000, GLOBAL_PEER, 1.0)
    for _ in range(3):
        server.receive(client.key_tuple, encode_channel_data(0x4000, b"x" * 600), 1.0)
    assert len(drain(server)) == 2
    assert LimitHit("bandwidth") in events(server)
    server.receive(client.key_tuple, encode_channel_data(0x4000, b"x" * 600), 2.0)
    assert len(drain(server)) == 1  # refilled


def test_requests_must_use_the_allocation_username() -> None:
    client, server = allocated()
    other = Client(server, peer_id="mallory")
    other.key_tuple = client.key_tuple
    assert other.permit([GLOBAL_PEER], 1.0).error_code == 441


def test_per_user_quota_counts_the_peer_id_whatever_the_expiry() -> None:
    server = make_server(max_allocations_per_user=1)
    assert Client(server, addr=("203.0.113.1", 1), ttl=100).allocate(0.0).error_code is None
    again = Client(server, addr=("203.0.113.2", 1), ttl=200)  # same peer id, new username
    assert again.allocate(0.0).error_code == 486
