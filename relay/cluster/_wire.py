"""What the cluster keeps in Redis and sends through it (docs/PROTOCOL.md section 16).

Pure and synchronous: key and channel names, the inbox message codec and the Lua
scripts. Inbox messages come from Redis, that is from other nodes: they are parsed as
untrusted input (:func:`decode_inbox_untrusted` raises only :class:`ClusterParseError`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from darkswap_trio.proto.errors import ParseError

INBOX_VERSION = 1
MAX_INBOX_MESSAGE = 256 * 1024  # a signaling frame (max_frame_size) plus the envelope


class ClusterParseError(ParseError):
    """An inbox message (from another node, through Redis) is malformed."""


def node_key(prefix: str, node_id: str) -> str:
    return f"{prefix}node:{node_id}"


def node_peer_key(prefix: str, node_peer_id: str) -> str:
    return f"{prefix}nodepeer:{node_peer_id}"


def peer_key(prefix: str, peer_id: str) -> str:
    return f"{prefix}peer:{peer_id}"


def inbox_channel(prefix: str, node_id: str) -> str:
    return f"{prefix}inbox:{node_id}"


def presence_value(node_id: str, epoch: str) -> str:
    return f"{node_id}|{epoch}"


@dataclass(frozen=True, slots=True)
class SignalEnvelope:
    """A signaling frame for peer ``to``, registered on the receiving node."""

    id: str  # unique per sending node incarnation: a repeat is dropped
    reply_to: str  # the sending node (told if the frame cannot be delivered)
    expires: float  # Unix time after which the frame is dropped, not delivered
    sender: str  # the authenticated peer id that sent it
    extended: bool  # whether the sender speaks darkswap-relay/1 (incompatible_peer rule)
    libp2p: bool  # whether the sender's id is a libp2p PeerId
    to: str
    frame: str  # the JSON message exactly as the addressee receives it


@dataclass(frozen=True, slots=True)
class Undeliverable:
    """Signal ``id`` from ``sender`` could not be given to ``to``: tell ``sender``."""

    id: str
    sender: str
    to: str
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class ReleaseRequest:
    """A proven owner of ``peer`` registers on node ``reply_to``; the receiving node holds
    it as ``holder``: it probes its session and releases the peer if the session is silent
    (the single-node rule of ``duplicate_probe_timeout``, across nodes)."""

    id: str
    reply_to: str
    peer: str
    holder: str  # the presence value the claimant saw ("<node>|<epoch>")


@dataclass(frozen=True, slots=True)
class ReleaseAnswer:
    """The answer to ReleaseRequest ``id``: whether ``peer`` was released."""

    id: str
    peer: str
    released: bool


@dataclass(frozen=True, slots=True)
class OtherEnvelope:
    """A kind this node does not handle itself (for the mesh half, or a later version)."""

    kind: str
    body: dict[str, Any]


KnownMessage = SignalEnvelope | Undeliverable | ReleaseRequest | ReleaseAnswer
InboxMessage = KnownMessage | OtherEnvelope

# kind -> (class, its fields and their JSON types)
_KINDS: dict[str, tuple[type, dict[str, type]]] = {
    "signal": (
        SignalEnvelope,
        {"id": str, "reply_to": str, "expires": float, "sender": str, "extended": bool,
         "libp2p": bool, "to": str, "frame": str},
    ),
    "undeliverable": (
        Undeliverable, {"id": str, "sender": str, "to": str, "code": str, "message": str}
    ),
    "release": (ReleaseRequest, {"id": str, "reply_to": str, "peer": str, "holder": str}),
    "released": (ReleaseAnswer, {"id": str, "peer": str, "released": bool}),
}  # fmt: skip
_KIND_OF = {cls: kind for kind, (cls, _) in _KINDS.items()}


def encode_inbox(msg: KnownMessage) -> str:
    kind = _KIND_OF[type(msg)]
    body: dict[str, Any] = {"v": INBOX_VERSION, "kind": kind}
    for name in _KINDS[kind][1]:
        body[name] = getattr(msg, name)
    return json.dumps(body, separators=(",", ":"))


def _field(body: dict[str, Any], name: str, kind: type) -> Any:
    value: Any = body.get(name)
    if not (type(value) is kind or (kind is float and type(value) is int)):
        raise ClusterParseError(f"inbox message: {name!r} must be {kind.__name__}")
    if isinstance(value, str) and not 0 < len(value) <= MAX_INBOX_MESSAGE:
        raise ClusterParseError(f"inbox message: {name!r} is empty or too long")
    result: Any = value
    return float(result) if kind is float else result


def decode_inbox_untrusted(data: bytes | str) -> InboxMessage:
    """Parse an inbox message; raises only :class:`ClusterParseError`."""
    if len(data) > MAX_INBOX_MESSAGE:
        raise ClusterParseError("inbox message too large")
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ClusterParseError(f"inbox message is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ClusterParseError("inbox message is not a JSON object")
    if type(body.get("v")) is not int or body["v"] != INBOX_VERSION:
        raise ClusterParseError(f"inbox message version {body.get('v')!r} is not {INBOX_VERSION}")
    kind = _field(body, "kind", str)
    known = _KINDS.get(kind)
    if known is None:
        return OtherEnvelope(kind, body)
    cls, fields = known
    message: KnownMessage = cls(**{name: _field(body, name, t) for name, t in fields.items()})
    return message


# -- Lua (atomic on the Redis server; ARGV[1] is the key prefix where other keys are
# derived, so the cluster needs a standalone Redis or a single shard) ------------------

# The liveness heartbeat. KEYS: node key, node-peer key (its PeerId -> node id, for
# NodeAuthority); ARGV: epoch, advertise, peer id, ttl ms, node id. Returns 0
# (refreshed), 1 (created: first beat, or Redis lost it) or 2 (it held another epoch: a
# second process uses this node id).
HEARTBEAT = """
local current = redis.call('HGET', KEYS[1], 'epoch')
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'advertise', ARGV[2], 'peer_id', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('SET', KEYS[2], ARGV[5], 'PX', ARGV[4])
if current == ARGV[1] then return 0 elseif current then return 2 else return 1 end
"""

# Whether presence value v ("node|epoch") names a live node incarnation; its node key.
_LIVE_HOLDER = """
local function live_node(prefix, v)
  local sep = string.find(v, '|', 1, true)
  if not sep then return nil end
  local node = string.sub(v, 1, sep - 1)
  local key = prefix .. 'node:' .. node
  if redis.call('HGET', key, 'epoch') == string.sub(v, sep + 1) then return node, key end
  return nil
end
"""

# Claim a peer id. KEYS[1] peer key; ARGV: prefix, our value, ttl ms. Returns "" when
# ours (new, already ours, or taken over from a dead node), else the live holder's value.
CLAIM = (
    _LIVE_HOLDER
    + """
if redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PX', ARGV[3]) then return '' end
local v = redis.call('GET', KEYS[1])
if v == ARGV[2] then redis.call('PEXPIRE', KEYS[1], ARGV[3]) return '' end
if v and live_node(ARGV[1], v) then return v end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return ''
"""
)

# Refresh our presences (compare-and-refresh; a missing one is claimed again, e.g. after
# Redis restarted empty). KEYS: peer keys; ARGV: prefix, our value, ttl ms. Returns the
# 1-based indexes of the keys a live other node holds now (those peers moved).
REFRESH = (
    _LIVE_HOLDER
    + """
local lost = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if v == ARGV[2] then
    redis.call('PEXPIRE', key, ARGV[3])
  elseif v and live_node(ARGV[1], v) then
    table.insert(lost, i)
  else
    redis.call('SET', key, ARGV[2], 'PX', ARGV[3])
  end
end
return lost
"""
)

# Release our presences (compare-and-delete). KEYS: peer keys; ARGV[1]: our value.
RELEASE = """
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then n = n + redis.call('DEL', key) end
end
return n
"""

# Where a peer is. KEYS[1] peer key; ARGV[1] prefix. Returns {} (nobody holds it, or
# its node is dead) or {node id, advertise, node peer id}.
LOCATE = (
    _LIVE_HOLDER
    + """
local v = redis.call('GET', KEYS[1])
if not v then return {} end
local node, key = live_node(ARGV[1], v)
if not node then return {} end
local info = redis.call('HMGET', key, 'advertise', 'peer_id')
return {node, info[1] or '', info[2] or ''}
"""
)

# Publish to the inbox of the node holding a peer, in one round trip. KEYS[1] peer key;
# ARGV: prefix, message. Returns {-1, ""} (nobody live holds the peer) or {number of
# subscribers that got it, holder node id}.
ROUTE = (
    _LIVE_HOLDER
    + """
local v = redis.call('GET', KEYS[1])
if not v then return {-1, ''} end
local node = live_node(ARGV[1], v)
if not node then return {-1, ''} end
return {redis.call('PUBLISH', ARGV[1] .. 'inbox:' .. node, ARGV[2]), node}
"""
)

# Leave the cluster. KEYS: node key, node-peer key; ARGV[1] our epoch. Deleting the
# node key ends every presence of this incarnation at once.
LEAVE = """
if redis.call('HGET', KEYS[1], 'epoch') == ARGV[1] then
  redis.call('DEL', KEYS[2])
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# Whether a PeerId is a live node's. KEYS[1] node-peer key; ARGV: prefix, the PeerId.
# Returns the node id or "".
NODE_OF_PEER = """
local node = redis.call('GET', KEYS[1])
if not node then return '' end
if redis.call('HGET', ARGV[1] .. 'node:' .. node, 'peer_id') == ARGV[2] then return node end
return ''
"""
