"""The cluster's metrics, in the relay's own registry (``darkswap_relay_cluster_*``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_PREFIX = "darkswap_relay_cluster_"
ROUND_TRIP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class ClusterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.redis_up = Gauge(
            _PREFIX + "redis_up",
            "1 while this node reaches Redis (its heartbeat succeeds).",
            registry=r,
        )
        self.redis_round_trip = Histogram(
            _PREFIX + "redis_round_trip_seconds",
            "Round trip of Redis commands that succeeded.",
            buckets=ROUND_TRIP_BUCKETS,
            registry=r,
        )
        self.redis_errors = Counter(
            _PREFIX + "redis_errors", "Redis commands that failed or timed out.", registry=r
        )
        self.peers = Gauge(
            _PREFIX + "peers",
            "Peers registered on this node (each with a presence key).",
            registry=r,
        )
        self.messages_sent = Counter(
            _PREFIX + "messages_sent",
            "Signaling messages for peers on other nodes, by result (delivered = published "
            "to a subscribed inbox; unknown_peer; unavailable).",
            ("result",),
            registry=r,
        )
        self.messages_received = Counter(
            _PREFIX + "messages_received",
            "Inbox messages from other nodes, by result (delivered, unknown_peer, "
            "incompatible_peer, duplicate, expired, undeliverable, release, bad).",
            ("result",),
            registry=r,
        )
        self.registrations_refused = Counter(
            _PREFIX + "registrations_refused",
            "Registrations refused because a live other node holds the peer id.",
            registry=r,
        )
        self.sessions_lost = Counter(
            _PREFIX + "sessions_lost",
            "Local sessions closed because another node took their peer id while this "
            "node could not reach Redis.",
            registry=r,
        )
