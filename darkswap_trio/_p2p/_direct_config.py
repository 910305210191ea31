"""The PeerConnectionConfig of a network's direct attempts, from its P2PConfig."""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from .._config import P2PConfig, stun_host_port
from ..webrtc._peer_connection import PeerConnectionConfig

__all__ = ["direct_path_config"]


def direct_path_config(p2p: P2PConfig, given: PeerConnectionConfig | None) -> PeerConnectionConfig:
    """``p2p.stun_servers``, ``p2p.turn_servers`` and ``p2p.ice_transport_policy`` apply
    unless the given peer connection config names its own servers."""
    config = given or PeerConnectionConfig()
    stun_servers = [stun_host_port(s) for s in p2p.stun_servers]
    if not config.stun_servers and stun_servers:
        config = replace(config, stun_servers=stun_servers)
    turn_servers = p2p.turn_server_configs()  # checks ice_transport_policy too
    if not config.turn_servers and turn_servers:
        policy: Literal["all", "relay"] = "relay" if p2p.ice_transport_policy == "relay" else "all"
        config = replace(config, turn_servers=turn_servers, ice_transport_policy=policy)
    return config
