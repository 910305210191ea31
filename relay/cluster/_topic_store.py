"""The topic rendezvous in Redis (docs/PROTOCOL.md 16.5): keys, Lua scripts, replies.

Pure and synchronous, like :mod:`relay.cluster._wire`. Per topic a sorted set
``topic:<topic>`` (member: peer id, score: expiry in Redis server milliseconds), per peer
a set ``ptopics:<peer id>`` of its topics (the per-peer bound and the cleanup when its
session ends), and one index ``topics`` (member: topic, score: its latest expiry) for the
cluster-wide bound on topics. Every script reads the clock of the Redis server (TIME),
so nodes with skewed clocks agree on what has expired.

A script's reply comes from Redis: :func:`decode_register_reply_untrusted` checks it and
raises only :class:`~relay.cluster._wire.ClusterParseError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._wire import _LIVE_HOLDER, ClusterParseError

LIMIT_LABELS = frozenset({"topics_per_peer", "topics", "peers_per_topic"})
MAX_REPLY_PEERS = 1024  # far above what a register asks for (2 * topic_sample + 1)
MAX_PEER_ID = 256


def topic_key(prefix: str, topic: str) -> str:
    return f"{prefix}topic:{topic}"


def peer_topics_key(prefix: str, peer_id: str) -> str:
    return f"{prefix}ptopics:{peer_id}"


def topic_index_key(prefix: str) -> str:
    return f"{prefix}topics"


@dataclass(frozen=True, slots=True)
class Registered:
    """The registration holds; ``candidates``: other members whose presence is live."""

    candidates: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Refused:
    """A bound refused the registration; ``limit`` is its ``limit_hits`` label."""

    limit: str


def _text(item: Any) -> str:
    if isinstance(item, bytes):
        try:
            item = item.decode()
        except UnicodeDecodeError:
            raise ClusterParseError("topic reply: a peer id is not UTF-8") from None
    if not isinstance(item, str) or not 0 < len(item) <= MAX_PEER_ID:
        raise ClusterParseError("topic reply: a peer id must be a non-empty short string")
    return item


def decode_register_reply_untrusted(reply: Any) -> Registered | Refused:
    """Parse the REGISTER script's reply; raises only ClusterParseError."""
    if not isinstance(reply, list) or not reply:
        raise ClusterParseError("topic reply: not a non-empty array")
    if len(reply) > MAX_REPLY_PEERS + 1:
        raise ClusterParseError("topic reply: too many peers")
    status = _text(reply[0])
    if status == "limit":
        if len(reply) != 2 or _text(reply[1]) not in LIMIT_LABELS:
            raise ClusterParseError("topic reply: unknown limit")
        return Refused(_text(reply[1]))
    if status != "ok":
        raise ClusterParseError(f"topic reply: unknown status {status[:32]!r}")
    return Registered(tuple(_text(item) for item in reply[1:]))


# Current Redis server time in milliseconds (scripts are effect-replicated in Redis 7).
_NOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

# Register (or renew) a peer for a topic, bounds checked atomically, then draw random
# candidates among the other members. KEYS: topic key, peer-topics key, topic index;
# ARGV: prefix, peer id, topic, ttl ms, max topics per peer, max peers per topic, max
# topics, candidates to draw. Returns {'limit', label} or {'ok', peer id...} (members
# whose presence is live; the others are removed: their node died or they left).
REGISTER = (
    _LIVE_HOLDER
    + _NOW
    + """
local prefix, peer, topic = ARGV[1], ARGV[2], ARGV[3]
local ttl = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], peer) then
  local per_peer = tonumber(ARGV[5])
  if redis.call('SISMEMBER', KEYS[2], topic) == 0 and redis.call('SCARD', KEYS[2]) >= per_peer then
    for _, other in ipairs(redis.call('SMEMBERS', KEYS[2])) do
      local until_ms = redis.call('ZSCORE', prefix .. 'topic:' .. other, peer)
      if not until_ms or tonumber(until_ms) <= now then redis.call('SREM', KEYS[2], other) end
    end
    if redis.call('SCARD', KEYS[2]) >= per_peer then return {'limit', 'topics_per_peer'} end
  end
  if redis.call('EXISTS', KEYS[1]) == 0 then
    if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[7]) then
      redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
      if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[7]) then return {'limit', 'topics'} end
    end
  elseif redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[6]) then
    return {'limit', 'peers_per_topic'}
  end
end
redis.call('ZADD', KEYS[1], now + ttl, peer)
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('SADD', KEYS[2], topic)
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('ZADD', KEYS[3], 'GT', now + ttl, topic)
local out = {'ok'}
for _, other in ipairs(redis.call('ZRANDMEMBER', KEYS[1], tonumber(ARGV[8]))) do
  if other ~= peer then
    local v = redis.call('GET', prefix .. 'peer:' .. other)
    if v and live_node(prefix, v) then
      table.insert(out, other)
    else
      redis.call('ZREM', KEYS[1], other)
      redis.call('SREM', prefix .. 'ptopics:' .. other, topic)
    end
  end
end
return out
"""
)

# Leave a topic. KEYS: topic key, peer-topics key, topic index; ARGV: peer id, topic.
UNREGISTER = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('ZREM', KEYS[3], ARGV[2]) end
return 0
"""

# Sessions ended: drop the peers' registrations. KEYS: topic index, then one peer-topics
# key per peer; ARGV: prefix, our presence value, then the peer ids. A peer a live other
# node holds now registered there meanwhile: its registrations are that node's, kept.
# Returns how many peers were dropped.
DROP = (
    _LIVE_HOLDER
    + """
local prefix, ours = ARGV[1], ARGV[2]
local dropped = 0
for i = 2, #KEYS do
  local peer = ARGV[i + 1]
  local v = redis.call('GET', prefix .. 'peer:' .. peer)
  if not (v and v ~= ours and live_node(prefix, v)) then
    for _, topic in ipairs(redis.call('SMEMBERS', KEYS[i])) do
      local key = prefix .. 'topic:' .. topic
      redis.call('ZREM', key, peer)
      if redis.call('EXISTS', key) == 0 then redis.call('ZREM', KEYS[1], topic) end
    end
    redis.call('DEL', KEYS[i])
    dropped = dropped + 1
  end
end
return dropped
"""
)
