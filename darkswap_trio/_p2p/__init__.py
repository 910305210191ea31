"""The peer-to-peer layer: P2PNetwork, PeerLink over a direct data channel or a relay circuit,
path switching and recovery, the connection pool and metrics.

Built on ``_relay_client`` (circuits through the relay) and ``webrtc`` (direct data channels).
"""
