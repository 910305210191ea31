"""The ``[cluster]`` section of the relay's configuration (README "Relay cluster").

Without ``redis_url`` the relay runs alone, exactly as before: nothing here is used.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import re
from dataclasses import dataclass

# Node ids name Redis keys and channels and are split on "|" in presence values.
_NODE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_KEY_PREFIX = re.compile(r"[A-Za-z0-9._:-]{0,64}")
MAX_WORKERS = 64


@dataclass
class ClusterConfig:
    # redis://[user:password@]host:port[/db], rediss://... (TLS) or unix:///path/redis.sock.
    redis_url: str | None = None
    # Unique per node; None: the relay's PeerId (so give nodes persistent key files).
    node_id: str | None = None
    # "host:port" other nodes dial for mesh links; None: derived from the bound address.
    advertise: str | None = None
    # Every key and channel starts with it: several clusters may share one Redis.
    key_prefix: str = "darkswap:"
    # A node whose liveness key is not refreshed for this long is dead: its peers may
    # register on other nodes. Refreshed every third of it.
    liveness_ttl: float = 5.0
    # TTL of a peer's presence key, refreshed every third of it by its node. A presence
    # counts only while its node is alive, so this bounds only leftovers of lost releases.
    presence_ttl: float = 60.0
    # Bound on one Redis command; past it the node counts Redis as unreachable.
    redis_timeout: float = 2.0
    # A cross-node signaling message not delivered within this is dropped (sender told).
    message_timeout: float = 5.0
    # Processes serving this node's port together (SO_REUSEPORT), each a node of the
    # cluster (README "Workers"); more than 1 needs redis_url.
    workers: int = 1

    @property
    def enabled(self) -> bool:
        return self.redis_url is not None

    def validate(self, error: type[Exception]) -> None:
        """Raise ``error`` naming the first bad ``cluster.*`` setting."""
        if self.redis_url is not None:
            from ._resp import parse_redis_url

            try:
                parse_redis_url(self.redis_url)
            except ValueError as exc:
                raise error(f"cluster.redis_url: {exc}") from None
            if importlib.util.find_spec("hiredis") is None:
                raise error(
                    "cluster.redis_url needs the cluster extra (hiredis): "
                    "pip install 'darkswap-trio[cluster]'"
                )
        if not 1 <= self.workers <= MAX_WORKERS:
            raise error(f"cluster.workers must be 1..{MAX_WORKERS}, got {self.workers}")
        if self.workers > 1 and self.redis_url is None:
            raise error(
                f"cluster.workers = {self.workers} needs a cluster: set cluster.redis_url "
                "(--cluster-redis URL); workers find each other through Redis"
            )
        if self.workers > 1 and self.node_id is not None and len(self.node_id) > 58:
            raise error(
                "cluster.node_id must be at most 58 characters with workers (-w<i> is added)"
            )
        if self.node_id is not None and not _NODE_ID.fullmatch(self.node_id):
            raise error(f"cluster.node_id must be 1..64 of A-Z a-z 0-9 . _ -, got {self.node_id!r}")
        if not _KEY_PREFIX.fullmatch(self.key_prefix):
            raise error(f"cluster.key_prefix: bad characters in {self.key_prefix!r}")
        if self.advertise is not None:
            split_advertise(self.advertise, error)
        for name in ("liveness_ttl", "presence_ttl", "redis_timeout", "message_timeout"):
            value = getattr(self, name)
            if not 0 < value < 86400:
                raise error(f"cluster.{name} must be a positive number of seconds, got {value}")
        if self.liveness_ttl < 0.3:
            raise error("cluster.liveness_ttl must be at least 0.3 seconds")
        if self.redis_timeout >= self.liveness_ttl:
            # A heartbeat that may take longer than the TTL lets a live node look dead.
            raise error("cluster.redis_timeout must be below cluster.liveness_ttl")
        if self.presence_ttl < self.liveness_ttl:
            raise error("cluster.presence_ttl must be at least cluster.liveness_ttl")


def split_advertise(advertise: str, error: type[Exception]) -> tuple[str, int]:
    """``host:port`` / ``[v6]:port`` as (host, port); raise ``error`` if it is not one."""
    text = advertise.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":") if rest.startswith(":") else ""
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            host = ""
    else:
        host, _, port_text = text.rpartition(":")
        if ":" in host:  # a bare IPv6 address needs brackets to carry a port
            host = ""
    if not host or not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise error(f"cluster.advertise must be HOST:PORT (IPv6 in brackets), got {advertise!r}")
    return host, int(port_text)


def redact_url_password(url: str) -> str:
    """``url`` with its password (if any) shown as ``<set>``, for logs and --check-config."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:<set>@{host}"
