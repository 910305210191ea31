"""Loading ``Config`` from TOML.

    python examples/config_from_toml.py RELAY_MULTIADDR [CONFIG.toml]

Reads examples/peer.toml (or the file given), adds the relay from the command line,
and connects. A wrong key or type is a ``ConfigError`` that names it.
"""

import sys
from pathlib import Path

import trio

from darkswap_trio import Config, ConfigError, P2PNetwork


async def main(relay: str, path: Path) -> None:
    config = Config.from_toml(path)
    config.p2p.relay_servers.append(relay)
    print(
        f"loaded {path.name}: key_file={config.p2p.key_file} "
        f"enable_direct={config.p2p.enable_direct} "
        f"connection_timeout={config.relay_manager.connection_timeout}"
    )
    try:
        Config.from_toml("[p2p]\nmax_conections = 5\n")
    except ConfigError as exc:
        print(f"a typo is refused: {exc}")
    async with P2PNetwork(config) as network:
        await network.wait_relay_connected(timeout=10)
        server = network.relay_manager.servers[0]
        print(f"{network.local_peer_id} connected to the relay: {server.status.name}")


if __name__ == "__main__":
    default = Path(__file__).with_name("peer.toml")
    trio.run(main, sys.argv[1], Path(sys.argv[2]) if len(sys.argv) > 2 else default)
