"""WebSocket (RFC 6455) for trio, client and server: the relay's transport and the SDK's.

A thin driver around the sans-IO core :mod:`darkswap_trio.proto.websocket`; a connection
owns no task (see ``_connection`` for why that makes idle connections cheap).
"""

from ..proto.websocket import WebSocketHandshakeError as WebSocketHandshakeError
from ._endpoints import WebSocketConnection as WebSocketConnection
from ._endpoints import WebSocketRejected as WebSocketRejected
from ._endpoints import WebSocketRequest as WebSocketRequest
from ._endpoints import WebSocketStatistics as WebSocketStatistics
from ._endpoints import open_websocket as open_websocket
from ._endpoints import serve_websocket as serve_websocket

__all__ = [
    "WebSocketConnection",
    "WebSocketHandshakeError",
    "WebSocketRejected",
    "WebSocketRequest",
    "WebSocketStatistics",
    "open_websocket",
    "serve_websocket",
]
