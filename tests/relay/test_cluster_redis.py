"""The cluster's Redis client (relay/cluster/_redis.py, _resp.py): RESP parsing of
untrusted bytes, pipelining, cancellation, failures and reconnection, scripts after a
Redis restart, AUTH and SELECT from the URL."""

from __future__ import annotations

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from redis_helpers import running_redis

from darkswap_trio.proto.errors import ParseError
from relay.cluster._redis import ClusterUnavailable, open_redis_link
from relay.cluster._resp import (
    NOT_ENOUGH,
    RedisAddress,
    ReplyError,
    RespParseError,
    RespParser,
    encode_command,
    parse_redis_url,
)


def replies(data: bytes, step: int = 1) -> list:
    parser = RespParser()
    out = []
    for i in range(0, len(data), step):
        parser.feed(data[i : i + step])
        while (reply := parser.next_reply()) is not NOT_ENOUGH:
            out.append(reply)
    return out


def test_replies_fed_one_byte_at_a_time() -> None:
    data = b"+OK\r\n:-3\r\n$-1\r\n$3\r\n\xffab\r\n*2\r\n$1\r\na\r\n*0\r\n-NOSCRIPT none\r\n"
    got = replies(data)
    assert got[:5] == ["OK", -3, None, "\ufffdab", ["a", []]]
    assert isinstance(got[5], ReplyError) and got[5].code == "NOSCRIPT"


def test_encode_command() -> None:
    assert encode_command("SET", "k", b"\x00", 5, 1.5) == (
        b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n\x00\r\n$1\r\n5\r\n$3\r\n1.5\r\n"
    )


@given(st.binary(max_size=200), st.integers(min_value=1, max_value=16))
def test_any_bytes_raise_only_parse_errors(data: bytes, step: int) -> None:
    try:
        replies(data, step)
    except ParseError:
        pass


@given(st.lists(st.sampled_from([b"*", b"$", b":", b"+", b"-", b"1", b"-1", b"\r\n", b"x"])))
def test_near_resp_raises_only_parse_errors(parts: list[bytes]) -> None:
    try:
        replies(b"".join(parts))
    except RespParseError:
        pass


def test_redis_urls() -> None:
    assert parse_redis_url("redis://u:p%40ss@h.example:7000/2") == RedisAddress(
        "h.example", 7000, None, False, "u", "p@ss", 2
    )
    assert parse_redis_url("rediss://h").tls
    assert parse_redis_url("unix:///run/r.sock?db=3") == RedisAddress(
        None, 0, "/run/r.sock", False, None, None, 3
    )
    for bad in ("http://h", "redis://", "redis://h/x", "unix://"):
        with pytest.raises(ValueError):
            parse_redis_url(bad)


async def test_pipelined_commands_cancellation_and_reconnect() -> None:
    with trio.fail_after(20):
        async with running_redis() as redis, open_redis_link(redis.url, 2.0) as link:
            results: dict[int, str] = {}

            async def set_get(i: int) -> None:
                await link.command("SET", f"k{i}", f"v{i}")
                results[i] = await link.command("GET", f"k{i}")

            async with trio.open_nursery() as nursery:
                for i in range(50):
                    nursery.start_soon(set_get, i)
            assert results == {i: f"v{i}" for i in range(50)}
            # A caller cancelled while Redis blocks: its reply is dropped, the
            # connection goes on (BLPOP answers nil after 0.3 s).
            with trio.move_on_after(0.05):
                await link.command("BLPOP", "nothing", "0.3")
            assert await link.command("GET", "k1") == "v1"
            with pytest.raises(ClusterUnavailable, match="WRONGTYPE|wrong"):
                await link.command("LPUSH", "k1", "x")  # an error reply
            await redis.kill()
            with pytest.raises(ClusterUnavailable):
                await link.command("GET", "k1")
            assert not link.up and link.errors == 1  # an error reply is an answer
            with pytest.raises(ClusterUnavailable):
                await link.command("GET", "k1")  # known down: fails at once
            await redis.start()
            with trio.fail_after(5):
                while True:  # after RECONNECT_PAUSE the next command connects again
                    try:
                        assert await link.command("GET", "k1") is None  # a new, empty Redis
                        break
                    except ClusterUnavailable:
                        await trio.sleep(0.05)
            assert link.up


async def test_a_pipeline_answers_each_command_in_order() -> None:
    with trio.fail_after(20):
        async with running_redis() as redis, open_redis_link(redis.url, 2.0) as link:
            script = link.script_command("return ARGV[1] .. KEYS[1]", ["k"], ["a"])
            replies = await link.pipeline(
                encode_command("SET", "p", "1"), script, encode_command("LPUSH", "p", "x")
            )
            assert replies[0] == "OK"
            assert isinstance(replies[1], ReplyError) and replies[1].code == "NOSCRIPT"
            assert isinstance(replies[2], ReplyError)  # WRONGTYPE: returned, not raised
            await link.command("SCRIPT", "LOAD", "return ARGV[1] .. KEYS[1]")
            assert await link.pipeline(script, encode_command("GET", "p")) == ["ak", "1"]
            assert link.up
            await redis.kill()
            with pytest.raises(ClusterUnavailable):
                await link.pipeline(script)


async def test_scripts_survive_a_redis_restart_and_slow_redis_times_out() -> None:
    with trio.fail_after(20):
        async with running_redis() as redis, open_redis_link(redis.url, 0.5) as link:
            assert await link.script("return ARGV[1] .. KEYS[1]", ["k"], ["a"]) == "ak"
            await link.command("SCRIPT", "FLUSH")
            assert await link.script("return ARGV[1] .. KEYS[1]", ["k"], ["b"]) == "bk"
            await link.command("CLIENT", "PAUSE", "1500")
            with pytest.raises(ClusterUnavailable, match="within"):
                await link.ping()


async def test_subscription_ends_with_the_connection() -> None:
    with trio.fail_after(20):
        async with running_redis() as redis, open_redis_link(redis.url, 2.0) as link:
            async with link.subscription("ch") as messages:
                assert await link.publish("ch", "one") == 1
                assert await messages.__anext__() == "one"
                await redis.kill()
                with pytest.raises(ClusterUnavailable):
                    await messages.__anext__()
            with pytest.raises(ClusterUnavailable):
                async with link.subscription("ch"):
                    pass


async def test_password_and_database_from_the_url() -> None:
    with trio.fail_after(20):
        async with running_redis("--requirepass", "s3cret") as redis:
            async with open_redis_link(redis.url, 2.0) as link:
                with pytest.raises(ClusterUnavailable, match="NOAUTH"):
                    await link.ping()
            url = f"unix://:s3cret@{redis.socket}?db=5"
            async with open_redis_link(url, 2.0) as link:
                await link.command("SET", "k", "in-5")
                async with link.subscription("ch") as messages:
                    assert await link.publish("ch", "m") == 1
                    assert await messages.__anext__() == "m"
            async with open_redis_link(f"unix://:s3cret@{redis.socket}", 2.0) as link:
                assert await link.command("GET", "k") is None
                assert await link.command("SELECT", "5") == "OK"
            async with open_redis_link(f"unix://:wrong@{redis.socket}", 2.0) as link:
                with pytest.raises(ClusterUnavailable, match="AUTH"):
                    await link.ping()
