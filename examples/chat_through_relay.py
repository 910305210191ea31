"""Two processes chatting through a standalone relay (relay path only).

Start a relay (it prints its multiaddr), then in two terminals:

    python examples/chat_through_relay.py RELAY_MULTIADDR                  # bob: prints his PeerId
    python examples/chat_through_relay.py RELAY_MULTIADDR BOB_ID hi there  # alice: says "hi there"

Bob answers every line with "bob got: ...". ``enable_direct=False`` keeps both on the
relay circuit; see direct_upgrade.py for the direct path.
"""

import sys

import trio

from darkswap_trio import P2PConfig, P2PNetwork


async def bob(relay: str) -> None:
    async with P2PNetwork(P2PConfig(relay_servers=[relay], enable_direct=False)) as network:
        await network.wait_relay_connected(timeout=10)
        print(f"bob is {network.local_peer_id}", flush=True)
        link = await network.accept_peer()  # one chat, then exit
        async for line in link:
            print(f"bob received {line.decode()!r} via {link.connection_type}", flush=True)
            await link.send(b"bob got: " + line)


async def alice(relay: str, bob_id: str, words: list[str]) -> None:
    async with P2PNetwork(P2PConfig(relay_servers=[relay], enable_direct=False)) as network:
        await network.wait_relay_connected(timeout=10)
        link = await network.connect_to_peer(bob_id)
        for word in words:
            await link.send(word.encode())
            print(f"alice got {(await link.receive()).decode()!r} via {link.connection_type}")
        await link.aclose()


if __name__ == "__main__":
    if len(sys.argv) == 2:
        trio.run(bob, sys.argv[1])
    else:
        trio.run(alice, sys.argv[1], sys.argv[2], sys.argv[3:] or ["hello"])
