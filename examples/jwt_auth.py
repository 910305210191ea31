"""JWT authentication with a token provider.

    darkswap-relay keygen --jwt-algorithm EdDSA --out keys
    darkswap-relay --auth jwt --jwt-algorithm EdDSA --jwt-key-file keys/jwt_public.pem ...
    python examples/jwt_auth.py RELAY_MULTIADDR keys/jwt_private.pem

A relay in ``jwt`` mode wants a token whose ``sub`` is our PeerId (on top of the key
signature). ``token_provider`` is called for the first token and again before each
expires (``relay_manager.token_refresh_margin``). Here it signs tokens itself with
PyJWT (installed with the relay extra); a real application asks its auth service.
"""

import sys
import time
from pathlib import Path

import jwt
import trio

from darkswap_trio import P2PConfig, P2PNetwork, PeerId


def token_provider_from(private_key_pem: str, ttl: float = 300.0):
    async def token_provider(peer_id: PeerId) -> str:
        now = int(time.time())
        print(f"issuing a token for {peer_id}", flush=True)
        return jwt.encode(
            {"sub": str(peer_id), "iat": now, "exp": now + int(ttl)},
            private_key_pem,
            algorithm="EdDSA",
        )

    return token_provider


async def main(relay: str, key_path: str) -> None:
    provider = token_provider_from(Path(key_path).read_text())
    async with P2PNetwork(P2PConfig(relay_servers=[relay]), token_provider=provider) as network:
        await network.wait_relay_connected(timeout=10)
        server = network.relay_manager.servers[0]
        print(
            f"authenticated with a JWT: {server.status.name}, "
            f"latency {server.latency_ms or 0:.2f} ms",
            flush=True,
        )
    async with P2PNetwork(P2PConfig(relay_servers=[relay])) as anonymous:
        try:
            await anonymous.wait_relay_connected(timeout=10)
        except Exception as exc:  # NoRelayAvailable, cause: RelayAuthenticationError
            print(f"without a token: {type(exc).__name__}: {exc.__cause__}")


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2])
