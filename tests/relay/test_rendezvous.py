"""The relay's topic rendezvous table: samples, expiry, bounds, and the wire messages."""

import copy
import random

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from relayclient import connect, make_config, new_peer

from darkswap_trio.proto.errors import SignalingParseError
from darkswap_trio.proto.signaling import (
    TopicPeers,
    TopicRegister,
    decode_message_untrusted,
    encode_message,
)
from relay import serve_relay
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


def test_unbounded_copy_of_a_cluster_registration():
    """In a cluster Redis checks the bounds; the node's copy takes what Redis accepted."""
    table = TopicRendezvous(max_topics_per_peer=1, max_peers_per_topic=1, max_topics=1)
    table.register(PEERS[0], "a", 0.0)
    table.register(PEERS[0], "b", 0.0, bounded=False)
    assert table.register(PEERS[1], "a", 0.0, bounded=False) == [PEERS[0]]
    assert sorted(table.entries()) == [(PEERS[0], "a"), (PEERS[0], "b"), (PEERS[1], "a")]
    with pytest.raises(TopicLimit):
        table.register(PEERS[2], "a", 0.0)


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


def test_stale_registrations_are_swept_and_counted():
    table = TopicRendezvous(ttl=10, max_topics=2)
    table.register(PEERS[0], "a", 0.0)
    table.register(PEERS[1], "a", 0.0)
    table.register(PEERS[1], "a", 5.0)  # a renewal is not a second registration
    assert table.registrations == 2
    # A topic's own traffic sweeps it: PEERS[0] stopped renewing and is gone.
    assert table.register(PEERS[2], "a", 12.0) == [PEERS[1]]
    assert table.registrations == 2 and "a" not in table.topics_of(PEERS[0])
    table.register(PEERS[3], "b", 12.0)
    # The table is full, but every entry of "a" and "b" expired by 30: a full sweep runs.
    assert table.register(PEERS[4], "c", 30.0) == []
    assert len(table) == 1 and table.registrations == 1 and table.refused == 0


async def test_limits_from_config_errors_metrics_and_reload(nursery):
    """A real relay: the bounds come from LimitsConfig, a refusal is a topic_limit error and a
    limit_hits sample, the gauges follow the table, and a reload applies new bounds."""

    def value(server, name, labels=None):
        return server.metrics.value(name, labels) or 0.0

    with trio.fail_after(10):
        config = make_config(max_topics_per_peer=1, max_peers_per_topic=2, topic_sample=1)
        server = await nursery.start(serve_relay, config)
        relay_id = server.peer_id
        async with connect(server) as a, connect(server) as b, connect(server) as c:
            for client in (a, b, c):
                await client.register_extended(new_peer(), relay_id, open_mode=True)
            await a.send(TopicRegister("t"))
            assert (await a.expect(TopicPeers)).peers == ()
            await b.send(TopicRegister("t"))
            assert (await b.expect(TopicPeers)).peers == (a.peer_id,)
            await a.send(TopicRegister("u"))
            err = await a.expect_error("topic_limit")
            assert "1 topics per peer" in err.message
            await c.send(TopicRegister("t"))
            await c.expect_error("topic_limit")
            hits = "darkswap_relay_limit_hits_total"
            assert value(server, hits, {"limit": "topics_per_peer"}) == 1
            assert value(server, hits, {"limit": "peers_per_topic"}) == 1
            assert value(server, "darkswap_relay_topics") == 1
            assert value(server, "darkswap_relay_topic_registrations") == 2
            new = copy.deepcopy(config)
            new.limits.max_peers_per_topic = 3
            applied, _ = server.reload(new)  # what SIGHUP does after reading the file
            assert applied == ["limits.max_peers_per_topic"]
            await c.send(TopicRegister("t"))
            assert len((await c.expect(TopicPeers)).peers) == 1  # topic_sample
            assert value(server, "darkswap_relay_topic_registrations") == 3
        # Sessions ended: their registrations went with them.
        with trio.fail_after(5):
            while value(server, "darkswap_relay_topic_registrations"):
                await trio.sleep(0.01)
        assert value(server, "darkswap_relay_topics") == 0
        await server.shutdown(1)


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [("topic_ttl", 0.0, "topic_ttl must be positive"), ("topic_sample", 65, "at most 64")],
)
def test_bad_rendezvous_limits_are_config_errors(key, value, says):
    from relay._config import ConfigError

    with pytest.raises(ConfigError, match=says):
        make_config(**{key: value}).validate()
