"""The relay's topic rendezvous table: samples, expiry, bounds, and the wire messages."""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from darkswap_trio.proto.errors import SignalingParseError
from darkswap_trio.proto.signaling import (
    TopicPeers,
    TopicRegister,
    decode_message_untrusted,
    encode_message,
)
from relay._rendezvous import TopicLimit, TopicRendezvous

PEERS = [f"12D3KooWpeer{i:03d}" for i in range(40)]


def test_sample_excludes_self_expired_and_dead_peers():
    table = TopicRendezvous(ttl=10, sample=5, rng=random.Random(1))
    assert table.register(PEERS[0], "t", 0.0) == []
    for peer in PEERS[1:20]:
        table.register(peer, "t", 1.0)
    sample = table.register(PEERS[0], "t", 2.0, live=lambda p: p != PEERS[1])
    assert len(sample) == 5 and PEERS[0] not in sample and PEERS[1] not in sample
    assert table.register(PEERS[30], "t", 11.5) == [PEERS[0]]  # the others expired at 11.0
    table.drop_peer(PEERS[0])
    assert table.register(PEERS[31], "t", 11.5) == [PEERS[30]]
    table.unregister(PEERS[30], "t")
    table.unregister(PEERS[31], "t")
    assert "t" not in table.topics_of(PEERS[31])


def test_bounds():
    table = TopicRendezvous(max_topics_per_peer=2, max_peers_per_topic=3, max_topics=4, ttl=10)
    table.register(PEERS[0], "a", 0.0)
    table.register(PEERS[0], "b", 0.0)
    table.register(PEERS[0], "b", 0.0)  # a renewal is not a new topic
    with pytest.raises(TopicLimit):
        table.register(PEERS[0], "c", 0.0)
    for peer in PEERS[1:3]:
        table.register(peer, "a", 0.0)
    with pytest.raises(TopicLimit):
        table.register(PEERS[3], "a", 0.0)
    assert table.register(PEERS[3], "a", 10.0) == []  # expired entries make room
    table.register(PEERS[5], "c", 0.0)
    table.register(PEERS[5], "d", 0.0)
    with pytest.raises(TopicLimit):
        table.register(PEERS[6], "e", 0.0)
    assert table.refused == 3


def test_wire_round_trip():
    for msg in (
        TopicRegister("orders/BTC-USDT"),
        TopicRegister("ü", leave=True),
        TopicPeers("t", (PEERS[0], PEERS[1])),
        TopicPeers("t"),
    ):
        assert decode_message_untrusted(encode_message(msg)) == msg


@pytest.mark.parametrize(
    "text",
    [
        '{"type":"TopicRegister","payload":{"topic":""}}',
        '{"type":"TopicRegister","payload":{"topic":"' + "x" * 256 + '"}}',
        '{"type":"TopicRegister","payload":{"topic":"\\ud800"}}',
        '{"type":"TopicRegister","payload":{"topic":7}}',
        '{"type":"TopicPeers","payload":{"topic":"t","peers":"x"}}',
        '{"type":"TopicPeers","payload":{"topic":"t","peers":[""]}}',
        '{"type":"TopicPeers","payload":{"topic":"t","peers":[' + ",".join(['"p"'] * 65) + "]}}",
    ],
)
def test_malformed(text):
    with pytest.raises(SignalingParseError):
        decode_message_untrusted(text)


@given(
    st.one_of(
        st.text(max_size=40), st.lists(st.one_of(st.text(max_size=10), st.integers()), max_size=5)
    ),
    st.sampled_from(["TopicRegister", "TopicPeers"]),
)
def test_any_payload_only_parse_error(value, kind):
    import json

    for payload in (
        {"topic": value},
        {"topic": "t", "peers": value},
        {"topic": value, "leave": value},
    ):
        try:
            decode_message_untrusted(json.dumps({"type": kind, "payload": payload}))
        except SignalingParseError:
            pass
