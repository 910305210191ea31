"""Topic publish/subscribe core (gossipsub-v1.1-lite), sans-IO: see :mod:`.core`."""

from .core import (
    ACCEPT,
    IGNORE,
    REJECT,
    GossipConfig,
    GossipCore,
    GossipStatistics,
    TopicMessage,
    Validator,
)
from .wire import GossipParseError, parse_frame_untrusted

__all__ = [
    "ACCEPT",
    "IGNORE",
    "REJECT",
    "GossipConfig",
    "GossipCore",
    "GossipParseError",
    "GossipStatistics",
    "TopicMessage",
    "Validator",
    "parse_frame_untrusted",
]
