"""WebSocket (RFC 6455) as a sans-IO connection: opening handshake, frames, close.

Drivers use only the names below; the underscored modules are the connection's parts."""

from ._connection import CloseCode as CloseCode
from ._connection import CloseReceived as CloseReceived
from ._connection import ConnectionState as ConnectionState
from ._connection import MessageDiscarded as MessageDiscarded
from ._connection import MessageReceived as MessageReceived
from ._connection import PingReceived as PingReceived
from ._connection import ProtocolFailed as ProtocolFailed
from ._connection import WebSocketCore as WebSocketCore
from ._handshake import MAX_HEADER_BYTES as MAX_HEADER_BYTES
from ._handshake import HttpRequest as HttpRequest
from ._handshake import WebSocketHandshakeError as WebSocketHandshakeError
from ._handshake import build_accept_response as build_accept_response
from ._handshake import build_http_response as build_http_response
from ._handshake import build_upgrade_request as build_upgrade_request
from ._handshake import find_head_end_untrusted as find_head_end_untrusted
from ._handshake import is_upgrade_request as is_upgrade_request
from ._handshake import parse_request_untrusted as parse_request_untrusted
from ._handshake import parse_response_untrusted as parse_response_untrusted
from ._handshake import validate_upgrade_request as validate_upgrade_request
from ._handshake import validate_upgrade_response as validate_upgrade_response
