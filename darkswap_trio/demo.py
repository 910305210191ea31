"""Self-contained demo of the mission: two peers that find each other through a relay, start
talking on a relay circuit at once, and move to a direct path without losing a message.

Run with ``python -m darkswap_trio.demo`` (``./scripts/demo.sh`` does this). It starts a
relay (WebSocket signaling + STUN) on free loopback ports and two peers whose ICE host
candidates are pinned to 127.0.0.1, so it needs no network beyond loopback. It prints a
timeline (relay up, peers registered, link open on the relay, upgrade to direct, every
message with its path) and a one-screen summary of times, bytes and paths.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

import trio

from . import (
    Config,
    ConnectionUpgraded,
    P2PConfig,
    P2PNetwork,
    RelayManagerConfig,
)
from .webrtc import PeerConnectionConfig

LOOPBACK = PeerConnectionConfig(host_addresses=["127.0.0.1"], include_loopback=True)


class Timeline:
    """Prints ``+   12.3 ms  who  what`` lines relative to the demo's start."""

    def __init__(self) -> None:
        self.start = trio.current_time()

    def ms(self) -> float:
        return (trio.current_time() - self.start) * 1000

    def say(self, who: str, what: str) -> None:
        print(f"+{self.ms():8.1f} ms  {who:<6} {what}", flush=True)


async def run_demo(
    messages: int = 20, size: int = 1024, upgrade_timeout: float = 10.0
) -> dict[str, Any]:
    """Run the demo; returns the summary figures (also printed)."""
    from relay import AuthConfig, RelayConfig, serve_relay

    relay_config = RelayConfig(
        host="127.0.0.1", port=0, stun_port=0, metrics_port=0, auth=AuthConfig(mode="signature")
    )
    async with trio.open_nursery() as nursery:
        clock = Timeline()
        server = await nursery.start(serve_relay, relay_config)
        clock.say("relay", f"up: {server.multiaddr}")
        clock.say(
            "relay",
            f"STUN udp/{server.stun_port}, metrics http://127.0.0.1:{server.metrics_port}/metrics",
        )
        # direct_delay gives the relay circuit a head start, so the link visibly opens
        # on the relay and then upgrades (on loopback direct would often win outright).
        peer_config = Config(
            p2p=P2PConfig(
                relay_servers=[server.multiaddr],
                direct_delay=0.2,
                stun_servers=[f"127.0.0.1:{server.stun_port}"],
            ),
            relay_manager=RelayManagerConfig(ping_interval=5),
        )
        async with (
            P2PNetwork(peer_config, peer_connection_config=LOOPBACK) as alice,
            P2PNetwork(peer_config, peer_connection_config=LOOPBACK) as bob,
        ):
            await alice.wait_relay_connected(timeout=10)
            clock.say("alice", f"registered as {alice.local_peer_id}")
            await bob.wait_relay_connected(timeout=10)
            clock.say("bob", f"registered as {bob.local_peer_id}")
            dialled = clock.ms()
            link = await alice.connect_to_peer(bob.local_peer_id)
            link_open_ms = clock.ms() - dialled
            clock.say(
                "alice",
                f"link to bob open via {link.connection_type} "
                f"({link_open_ms:.1f} ms after the dial)",
            )
            incoming = await bob.accept_peer()
            clock.say("bob", f"accepted alice's link via {incoming.connection_type}")
            upgrade_ms: float | None = None

            async def watch_upgrade() -> None:
                nonlocal upgrade_ms
                async for event in alice.events:
                    if isinstance(event, ConnectionUpgraded):
                        upgrade_ms = clock.ms() - dialled
                        clock.say(
                            "alice",
                            f"ConnectionUpgraded: direct data channel "
                            f"({upgrade_ms:.1f} ms after the dial)",
                        )
                        return

            async def bob_echoes() -> None:
                async for data in incoming:
                    await incoming.send(data)

            nursery.start_soon(bob_echoes)
            rtts: dict[str, list[float]] = {"relay": [], "direct": []}
            payload = b"x" * size
            async with trio.open_nursery() as watch:
                if link.connection_type == "relay":
                    watch.start_soon(watch_upgrade)
                # Half the messages right away (on the relay, unless direct already won),
                # the rest once the link is direct: each line says which path it took.
                for n in range(messages):
                    if n == messages // 2 and link.connection_type != "direct":
                        with trio.move_on_after(upgrade_timeout):
                            await link.wait_direct()
                    path = link.connection_type
                    sent = trio.current_time()
                    await link.send(payload)
                    reply = await link.receive()
                    assert reply == payload
                    rtt = (trio.current_time() - sent) * 1000
                    rtts[path].append(rtt)
                    clock.say(
                        "alice", f"message {n + 1:>2}: {size} B echoed via {path}, rtt {rtt:.2f} ms"
                    )
                watch.cancel_scope.cancel()
            metrics = link.metrics()
            relay_latency = alice.relay_manager.servers[0].latency_ms or 0.0
            final_path = link.connection_type
            await link.aclose()
            result = {
                "relay_latency_ms": relay_latency,
                "link_open_ms": link_open_ms,
                "upgrade_ms": upgrade_ms,
                "path": final_path,
                "rtt_relay_p50_ms": statistics.median(rtts["relay"]) if rtts["relay"] else None,
                "rtt_direct_p50_ms": statistics.median(rtts["direct"]) if rtts["direct"] else None,
                "messages_relay": len(rtts["relay"]),
                "messages_direct": len(rtts["direct"]),
                "bytes_sent": metrics.bytes_sent,
                "bytes_received": metrics.bytes_received,
                "relay_bytes_sent": metrics.relay_bytes_sent,
                "direct_bytes_sent": metrics.direct_bytes_sent,
            }
            print_summary(result)
        with trio.move_on_after(2):
            await server.shutdown(0.5)
        nursery.cancel_scope.cancel()
    return result


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def print_summary(r: dict[str, Any]) -> None:
    upgrade = (
        "no upgrade (direct path not ready)"
        if r["upgrade_ms"] is None
        else f"{r['upgrade_ms']:.1f} ms after the dial"
    )
    print()
    print("summary")
    print(f"  relay ping latency     {_ms(r['relay_latency_ms'])}")
    print(f"  link open (relay)      {r['link_open_ms']:.1f} ms after the dial")
    print(f"  upgrade to direct      {upgrade}")
    print(f"  final path             {r['path']}")
    print(
        f"  messages via relay     {r['messages_relay']:>4}   echo rtt p50 {_ms(r['rtt_relay_p50_ms'])}"
    )
    print(
        f"  messages via direct    {r['messages_direct']:>4}   echo rtt p50 {_ms(r['rtt_direct_p50_ms'])}"
    )
    print(
        f"  bytes alice sent       {r['bytes_sent']:>8}   (relay {r['relay_bytes_sent']}, "
        f"direct {r['direct_bytes_sent']})"
    )
    print(f"  bytes alice received   {r['bytes_received']:>8}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20, help="echo round trips (default 20)")
    parser.add_argument("--size", type=int, default=1024, help="bytes per message (default 1024)")
    args = parser.parse_args(argv)
    if args.messages < 1 or not 0 < args.size <= 1 << 20:
        parser.error("--messages must be >= 1 and --size between 1 and 1048576")
    trio.run(run_demo, args.messages, args.size)
    print("demo done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
