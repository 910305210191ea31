"""The darkswap relay server: WebSocket signaling, circuit relay, STUN, metrics.

Run it with ``python -m relay`` / ``darkswap-relay``, or in-process::

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_relay, RelayConfig(port=0, stun_port=0))
        ...
        await server.shutdown(grace=5)
"""

from . import _requirements  # noqa: F401  (first: a clear error without the relay extra)
from ._config import AuthConfig as AuthConfig
from ._config import ConfigError as ConfigError
from ._config import LimitsConfig as LimitsConfig
from ._config import RelayConfig as RelayConfig
from ._config import load_config as load_config
from ._server import RelayServer as RelayServer
from ._server import RelayStatistics as RelayStatistics
from ._server import serve_relay as serve_relay

__all__ = [
    "AuthConfig",
    "ConfigError",
    "LimitsConfig",
    "RelayConfig",
    "RelayServer",
    "RelayStatistics",
    "load_config",
    "serve_relay",
]
