"""The cluster's inbox codec (untrusted: only ClusterParseError), its config, and the
Lua scripts against a real Redis (docs/PROTOCOL.md 16)."""

from __future__ import annotations

import json

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from redis_helpers import running_redis

from darkswap_trio.proto.errors import ParseError
from relay import ConfigError, load_config
from relay.cluster import ClusterConfig, ClusterDirectory, NodeAddress, _wire
from relay.cluster._redis import open_redis_link

SIGNAL = _wire.SignalEnvelope(
    id="n1:ab:1", reply_to="n1", expires=1.5e9, sender="p1", extended=False, libp2p=False,
    to="p2", frame='{"type":"Offer","payload":{"from":"p1","to":"p2","sdp":"x"}}',
)  # fmt: skip
NOTICE = _wire.Undeliverable(id="n1:ab:1", sender="p1", to="p2", code="unknown_peer", message="m")


def test_round_trip() -> None:
    assert _wire.decode_inbox_untrusted(_wire.encode_inbox(SIGNAL)) == SIGNAL
    assert _wire.decode_inbox_untrusted(_wire.encode_inbox(NOTICE).encode()) == NOTICE
    release = _wire.ReleaseRequest("n2:e:7", "n2", "peer", "n1|e1")
    assert _wire.decode_inbox_untrusted(_wire.encode_inbox(release)) == release
    answer = _wire.ReleaseAnswer("n2:e:7", "peer", True)
    assert _wire.decode_inbox_untrusted(_wire.encode_inbox(answer)) == answer
    other = _wire.decode_inbox_untrusted('{"v":1,"kind":"mesh_hello","x":2}')
    assert other == _wire.OtherEnvelope("mesh_hello", {"v": 1, "kind": "mesh_hello", "x": 2})


@pytest.mark.parametrize(
    "text",
    [
        "", "[]", "null", '{"v":2,"kind":"signal"}', '{"v":1}', '{"v":1,"kind":""}',
        '{"v":1,"kind":"signal","id":"x"}', '{"v":true,"kind":"x"}', "\xff", '{"v":1,"kind":"undeliverable","id":1}',
        json.dumps({**json.loads(_wire.encode_inbox(SIGNAL)), "extended": "yes"}),
        json.dumps({**json.loads(_wire.encode_inbox(SIGNAL)), "expires": True}),
        "[" * 100_000,
    ],
)  # fmt: skip
def test_bad_messages_raise_parse_errors(text: str) -> None:
    with pytest.raises(_wire.ClusterParseError):
        _wire.decode_inbox_untrusted(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(st.binary(max_size=300) | st.text(max_size=300))
def test_any_input_raises_only_parse_errors(data: bytes | str) -> None:
    try:
        _wire.decode_inbox_untrusted(data)
    except ParseError:
        pass


@given(
    st.fixed_dictionaries(
        {
            "v": st.just(1),
            "kind": st.sampled_from(["signal", "undeliverable", "release", "released", "x"]),
        },
        optional={
            name: json_values
            for name in ("id", "reply_to", "expires", "sender", "extended", "libp2p", "to",
                         "frame", "code", "message", "peer", "holder", "released")
        },
    )
)  # fmt: skip
def test_near_valid_objects_raise_only_parse_errors(body: dict) -> None:
    try:
        _wire.decode_inbox_untrusted(json.dumps(body))
    except ParseError:
        pass


def test_cluster_config_from_toml_and_flags(tmp_path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text('[cluster]\nredis_url = "redis://127.0.0.1:6379/0"\nnode_id = "a-1"\n')
    config = load_config(path, cluster_advertise="10.0.0.1:9002")
    assert config.cluster.enabled
    assert (config.cluster.node_id, config.cluster.advertise) == ("a-1", "10.0.0.1:9002")
    assert not load_config().cluster.enabled  # single node by default


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"redis_url": "http://x"}, "redis_url"),
        ({"node_id": "a|b"}, "node_id"),
        ({"node_id": ""}, "node_id"),
        ({"advertise": "nohost"}, "advertise"),
        ({"advertise": "::1:9000"}, "advertise"),
        ({"advertise": "h:0"}, "advertise"),
        ({"liveness_ttl": 0.0}, "liveness_ttl"),
        ({"presence_ttl": 1.0}, "presence_ttl"),
        ({"key_prefix": "a b"}, "key_prefix"),
        ({"liveness_ttl": 2.0}, "redis_timeout"),
    ],
)
def test_cluster_config_rejects(changes: dict, match: str) -> None:
    config = ClusterConfig(redis_url="redis://localhost")
    for key, value in changes.items():
        setattr(config, key, value)
    with pytest.raises(ConfigError, match=match):
        config.validate(ConfigError)


def test_advertise_forms() -> None:
    config = ClusterConfig(advertise="[::1]:9002")
    config.validate(ConfigError)
    config.advertise = "relay.example:443"
    config.validate(ConfigError)


async def test_scripts_claim_refresh_release_locate() -> None:
    """The Lua rules by themselves: a dead epoch frees its peers at once."""
    prefix, ttl = "w:", 10_000
    with trio.fail_after(10):
        async with running_redis() as redis, open_redis_link(redis.url, 2.0) as link:

            async def beat(node: str, epoch: str) -> int:
                keys = [_wire.node_key(prefix, node), _wire.node_peer_key(prefix, f"pid-{node}")]
                return await link.script(
                    _wire.HEARTBEAT, keys, [epoch, f"{node}:1", f"pid-{node}", ttl, node]
                )

            def node_keys(node: str) -> list[str]:
                return [_wire.node_key(prefix, node), _wire.node_peer_key(prefix, f"pid-{node}")]

            async def claim(peer: str, node: str, epoch: str) -> str:
                value = _wire.presence_value(node, epoch)
                return await link.script(
                    _wire.CLAIM, [_wire.peer_key(prefix, peer)], [prefix, value, ttl]
                )

            assert await beat("a", "e1") == 1
            assert await beat("a", "e1") == 0
            assert await beat("b", "e1") == 1
            assert await claim("p", "a", "e1") == ""
            assert await claim("p", "a", "e1") == ""  # ours already: refreshed
            assert await claim("p", "b", "e1") == "a|e1"  # a lives: refused
            located = await link.script(_wire.LOCATE, [_wire.peer_key(prefix, "p")], [prefix])
            assert located == ["a", "a:1", "pid-a"]
            directory = ClusterDirectory(link, prefix)
            assert await directory.is_cluster_node("pid-a")
            assert not await directory.is_cluster_node("pid-z")
            assert await directory.node("b") == NodeAddress("b", "b:1", "pid-b")
            # a restarts (new epoch): its old presences no longer count.
            assert await beat("a", "e2") == 2
            assert await link.script(_wire.LOCATE, [_wire.peer_key(prefix, "p")], [prefix]) == []
            assert await claim("p", "b", "e1") == ""
            # Only the holder refreshes and releases; others' keys are reported lost.
            keys = [_wire.peer_key(prefix, "p"), _wire.peer_key(prefix, "q")]
            lost = await link.script(_wire.REFRESH, keys, [prefix, "a|e2", ttl])
            assert lost == [1]  # p is b's now; q (missing) was claimed for a
            assert await link.script(_wire.RELEASE, keys, ["a|e2"]) == 1
            assert await claim("q", "b", "e1") == ""
            assert await link.script(_wire.LEAVE, node_keys("b"), ["e0"]) == 0
            assert await link.script(_wire.LEAVE, node_keys("b"), ["e1"]) == 1
            assert await claim("q", "a", "e2") == ""  # b left: its peers are free
            assert not await directory.is_cluster_node("pid-b")
            assert await directory.node("b") is None
