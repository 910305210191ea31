"""``darkswap-peer``: diagnostics from the command line.

- ``probe RELAY``: connect and register (the handshake proves the relay's PeerId), RTT
  by Ping, then a STUN binding to the relay's STUN port: the mapped address, whether a
  NAT sits in between, and the mapping behaviour when the server offers a second
  address (RFC 5780 OTHER-ADDRESS; otherwise it says it cannot tell).
- ``listen --relay RELAY``: a peer that prints its PeerId and echoes every link.
- ``ping PEER --relay RELAY``: open a link and time echoes, with the path of each.
- ``connect PEER --relay RELAY``: open a link, report the path, the upgrade to direct
  and the RTT on the final path.

Host candidates are pinned to 127.0.0.1 when the relay is on loopback (``--host-address``
overrides), so a local try-out never announces the machine's other addresses.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import statistics
import sys

import trio

from ._config import Config, ConfigError, P2PConfig, RelayManagerConfig, parse_relay_address
from ._identity import Keypair
from ._p2p._network import P2PNetwork
from ._p2p._network_events import ConnectionUpgraded
from ._p2p._peer_link import PeerLink
from ._relay_client._session import open_relay_session
from .proto.errors import StunParseError
from .proto.stun import (
    binding_request,
    mapped_address,
    other_address_untrusted,
    parse_stun_untrusted,
)
from .webrtc._peer_connection import PeerConnectionConfig

STUN_ATTEMPT_TIMEOUTS = (0.5, 1.0, 2.0)  # seconds per Binding request, then give up


def say(text: str) -> None:
    print(text, flush=True)


async def stun_binding(
    sock: trio.socket.SocketType, server: tuple[str, int]
) -> tuple[tuple[str, int], float, tuple[str, int] | None]:
    """One Binding transaction from ``sock``: (mapped address, RTT ms, OTHER-ADDRESS)."""
    request = binding_request()
    for timeout in STUN_ATTEMPT_TIMEOUTS:
        started = trio.current_time()
        await sock.sendto(bytes(request), server)
        with trio.move_on_after(timeout):
            while True:
                data, _ = await sock.recvfrom(2048)
                try:
                    response = parse_stun_untrusted(data)
                    other = other_address_untrusted(data)
                except StunParseError:
                    continue
                if response.transaction_id != request.transaction_id:
                    continue
                mapped = mapped_address(response)
                if mapped is None:
                    raise OSError(f"STUN server {server} answered without a mapped address")
                return mapped, (trio.current_time() - started) * 1000, other
    raise TimeoutError(
        f"no STUN answer from {server[0]}:{server[1]} after {len(STUN_ATTEMPT_TIMEOUTS)} requests"
    )


def mapping_verdict(
    first: tuple[str, int], second: tuple[str, int] | None, third: tuple[str, int] | None
) -> str:
    """RFC 5780 section 4.3: mapped addresses seen by the primary address (test I), the
    alternate IP with the primary port (II) and the alternate IP and port (III)."""
    if second is None or third is None:
        return "mapping behaviour: unknown (relay offers one address)"
    if second == first:
        return "mapping behaviour: endpoint-independent"
    if third == second:
        return "mapping behaviour: address-dependent"
    return "mapping behaviour: address and port-dependent"


async def probe(args: argparse.Namespace) -> int:
    address = parse_relay_address(args.relay)
    say(f"relay      {address.multiaddr}")
    say(f"           {address.url}")
    started = trio.current_time()
    async with open_relay_session(
        address, Keypair.generate(), connect_timeout=args.timeout, ping_interval=3600
    ) as session:
        handshake_ms = (trio.current_time() - started) * 1000
        say(
            f"identity   proven: relay is {session.relay_peer_id} "
            f"(auth {session.auth_mode}, handshake {handshake_ms:.1f} ms)"
        )
        rtts = []
        for _ in range(args.count):
            with trio.fail_after(args.timeout):
                rtts.append(await session.ping())
        say(
            f"rtt        {len(rtts)} pings: min {min(rtts):.2f} ms, "
            f"median {statistics.median(rtts):.2f} ms, max {max(rtts):.2f} ms"
        )
    if args.stun_port is None:
        say("stun       skipped (--stun-port none)")
        return 0
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    infos = await trio.socket.getaddrinfo(address.host, args.stun_port, family, socket.SOCK_DGRAM)
    sockaddr = infos[0][4]
    server = (str(sockaddr[0]), int(sockaddr[1]))
    with trio.socket.socket(family, socket.SOCK_DGRAM) as sock:
        await sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        first, rtt, other = await stun_binding(sock, server)
        probe_sock = trio.socket.socket(family, socket.SOCK_DGRAM)
        await probe_sock.connect(server)  # only to learn which local address routes there
        local = (probe_sock.getsockname()[0], sock.getsockname()[1])
        probe_sock.close()
        say(
            f"stun       {server[0]}:{server[1]} mapped us to {first[0]}:{first[1]} "
            f"(rtt {rtt:.2f} ms)"
        )
        if first == local:
            say("nat        none: the mapped address is our own")
        else:
            say(f"nat        yes: local {local[0]}:{local[1]} is seen as {first[0]}:{first[1]}")
        second = third = None
        if other is not None:
            second, _, _ = await stun_binding(sock, (other[0], server[1]))
            third, _, _ = await stun_binding(sock, other)
        say(mapping_verdict(first, second, third))
    return 0


def peer_network(args: argparse.Namespace) -> P2PNetwork:
    address = parse_relay_address(args.relay)
    hosts = args.host_address
    if not hosts and _is_loopback(address.host):
        hosts = ["127.0.0.1"]
    pc_config = PeerConnectionConfig(
        host_addresses=hosts or None, include_loopback=any(_is_loopback(h) for h in hosts)
    )
    config = Config(
        p2p=P2PConfig(
            relay_servers=[address.multiaddr],
            key_file=args.key_file,
            enable_direct=not args.relay_only,
        ),
        relay_manager=RelayManagerConfig(connection_timeout=args.timeout),
    )
    return P2PNetwork(config, peer_connection_config=pc_config)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


async def listen(args: argparse.Namespace) -> int:
    async with peer_network(args) as network:
        await network.wait_relay_connected(timeout=args.timeout)
        say(f"listening  {network.local_peer_id}")
        say(f"relay      {args.relay}")

        async def echo(link: PeerLink) -> None:
            say(f"link       from {link.peer_id} via {link.connection_type}")
            async for data in link:
                await link.send(data)
            say(f"closed     {link.peer_id}")

        async def report_upgrades() -> None:
            async for event in network.events:
                if isinstance(event, ConnectionUpgraded):
                    say(f"upgraded   {event.peer_id} to direct")

        with trio.move_on_after(args.duration if args.duration else float("inf")):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(report_upgrades)
                while True:
                    link = await network.accept_peer()
                    nursery.start_soon(echo, link)
    return 0


async def _echo_rtt(link: PeerLink, payload: bytes, timeout: float) -> float:
    started = trio.current_time()
    with trio.fail_after(timeout):
        await link.send(payload)
        reply = await link.receive()
    if reply != payload:
        raise OSError("the peer answered with something other than our echo")
    return (trio.current_time() - started) * 1000


async def _open_link(network: P2PNetwork, args: argparse.Namespace) -> tuple[PeerLink, float]:
    """Wait for the relay, connect to ``args.peer`` and say how the link opened;
    returns the link and when the dial started."""
    await network.wait_relay_connected(timeout=args.timeout)
    started = trio.current_time()
    with trio.fail_after(args.timeout):
        link = await network.connect_to_peer(args.peer)
    say(
        f"link       to {link.peer_id} via {link.connection_type} "
        f"in {(trio.current_time() - started) * 1000:.1f} ms"
    )
    return link, started


async def ping(args: argparse.Namespace) -> int:
    async with peer_network(args) as network:
        link, started = await _open_link(network, args)
        rtts = []
        for seq in range(1, args.count + 1):
            rtt = await _echo_rtt(link, b"darkswap-peer ping %d" % seq, args.timeout)
            rtts.append(rtt)
            say(f"seq={seq} path={link.connection_type} rtt={rtt:.2f} ms")
            if seq < args.count:
                await trio.sleep(args.interval)
        say(
            f"summary    {len(rtts)} echoes: min {min(rtts):.2f} ms, "
            f"median {statistics.median(rtts):.2f} ms, max {max(rtts):.2f} ms"
        )
        await link.aclose()
    return 0


async def connect(args: argparse.Namespace) -> int:
    async with peer_network(args) as network:
        link, started = await _open_link(network, args)
        if link.connection_type == "relay":
            rtt = await _echo_rtt(link, b"darkswap-peer connect", args.timeout)
            say(f"rtt        {rtt:.2f} ms via relay")
        if not args.relay_only and link.connection_type != "direct":
            with trio.move_on_after(args.upgrade_timeout) as waited:
                await link.wait_direct()
            if waited.cancelled_caught:
                say(f"upgrade    none within {args.upgrade_timeout:g} s: staying on relay")
            else:
                say(
                    f"upgrade    to direct {(trio.current_time() - started) * 1000:.1f} ms "
                    "after the dial"
                )
        rtts = [
            await _echo_rtt(link, b"darkswap-peer connect %d" % i, args.timeout)
            for i in range(args.count)
        ]
        metrics = link.metrics()
        say(
            f"path       {link.connection_type}: rtt median {statistics.median(rtts):.2f} ms "
            f"over {len(rtts)} echoes"
        )
        say(
            f"bytes      sent {metrics.bytes_sent} (relay {metrics.relay_bytes_sent}, direct "
            f"{metrics.direct_bytes_sent}), received {metrics.bytes_received}"
        )
        await link.aclose()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="darkswap-peer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser, *, relay_option: bool) -> None:
        if relay_option:
            sub.add_argument("--relay", required=True, help="relay multiaddr (…/p2p/RELAY_ID)")
            sub.add_argument("--key-file", help="identity key file (created if missing)")
            sub.add_argument(
                "--host-address",
                action="append",
                default=[],
                help="IP to announce as host candidate (repeatable; default: all "
                "interfaces, or 127.0.0.1 for a loopback relay)",
            )
            sub.add_argument("--relay-only", action="store_true", help="never try direct")
        sub.add_argument("--timeout", type=float, default=10.0, help="seconds per step (10)")

    sub = commands.add_parser("probe", help="reach a relay: PeerId, RTT, STUN mapping, NAT")
    sub.add_argument("relay", help="relay multiaddr (…/p2p/RELAY_ID)")
    sub.add_argument(
        "--stun-port", default="3478", help="the relay's STUN port (3478; 'none' skips STUN)"
    )
    sub.add_argument("--count", type=int, default=3, help="pings (3)")
    common(sub, relay_option=False)
    sub = commands.add_parser("listen", help="print our PeerId and echo every link")
    sub.add_argument("--duration", type=float, default=0, help="stop after N seconds (0: never)")
    common(sub, relay_option=True)
    sub = commands.add_parser("ping", help="time echoes to a listening peer")
    sub.add_argument("peer")
    sub.add_argument("--count", type=int, default=5, help="echoes (5)")
    sub.add_argument("--interval", type=float, default=0.2, help="seconds between echoes")
    common(sub, relay_option=True)
    sub = commands.add_parser("connect", help="open a link: path, upgrade, RTT")
    sub.add_argument("peer")
    sub.add_argument("--count", type=int, default=5, help="echoes on the final path (5)")
    sub.add_argument(
        "--upgrade-timeout",
        type=float,
        default=10.0,
        help="seconds to wait for the upgrade to direct (10)",
    )
    common(sub, relay_option=True)
    return parser


COMMANDS = {"probe": probe, "listen": listen, "ping": ping, "connect": connect}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "probe":
        args.stun_port = None if args.stun_port == "none" else int(args.stun_port)
    if getattr(args, "count", 1) < 1:
        print("darkswap-peer: --count must be at least 1", file=sys.stderr)
        return 2
    try:
        return trio.run(COMMANDS[args.command], args)
    except KeyboardInterrupt:
        return 130
    except (ConfigError, OSError, trio.TooSlowError, TimeoutError, ValueError) as exc:
        print(f"darkswap-peer {args.command}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - a CLI reports, it does not dump a trace
        cause = exc.__cause__ or exc
        print(
            f"darkswap-peer {args.command}: failed: {type(exc).__name__}: {exc} "
            f"({type(cause).__name__})",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
