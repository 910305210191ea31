"""A NAT-lab peer: the public SDK driven by JSON lines on stdin, reporting JSON on stdout.

Run inside a host namespace: ``python netlab_peer.py --relay MULTIADDR --stun IP:PORT
--host LAN_IP``. Every output line is one JSON object with ``ev`` and ``t`` (the
system monotonic clock, shared by every process on the machine, so the test can
subtract times taken in different peers). Commands (one JSON object per line):

* ``{"cmd": "connect", "peer": ID}``: ``connect_to_peer``; reports ``link`` (with the
  path type), then ``direct`` when the link switches to direct.
* ``{"cmd": "send", "count": N, "interval": S, "size": B}``: N more numbered messages
  on the link (one every S seconds); reports ``sent`` with the hash of all sent so far.
* ``{"cmd": "stats"}``: what arrived so far (count, order, duplicates, hash, gaps).
* ``{"cmd": "subscribe", "topic": T}``: ``network.subscribe``; every message reports
  ``topic_msg`` (topic, publisher, data as text).
* ``{"cmd": "topic_peers", "topic": T}``: reports ``topic_peers`` (``network.topic_peers``).
* ``{"cmd": "publish", "topic": T, "count": N}``: N messages ``"<own id> <i>"``; reports
  ``published``.
* ``{"cmd": "quit"}``.

Options: ``--direct-timeout S`` (``direct_connect_timeout``), ``--no-direct``
(``enable_direct=False``: such a peer never answers an Offer), ``--turn URL
--turn-username U --turn-credential P`` (``P2PConfig.turn_servers``: relay candidates),
``--relay-only`` (``ice_transport_policy="relay"``). The selected direct path's
candidate types (``local_type``/``remote_type``: "relay" is through TURN) in ``stats``.

Incoming links (``accept_peer``) are reported as ``accepted``. Network events are
reported as ``net`` (by class name) and the SDK's INFO logs as ``log``, so the test can
see when a direct attempt gives up. Only public API is used.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time

import trio

from darkswap_trio import Config, P2PConfig, P2PNetwork, RelayManagerConfig
from darkswap_trio.webrtc import PeerConnectionConfig

SEQ_BYTES = 8


def emit(ev: str, **fields) -> None:
    print(json.dumps({"ev": ev, "t": time.monotonic(), **fields}), flush=True)


class ReportLogs(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        emit("log", name=record.name, msg=record.getMessage())


def payload(seq: int, size: int) -> bytes:
    body = hashlib.sha256(b"%d" % seq).digest() * (size // 32 + 1)
    return seq.to_bytes(SEQ_BYTES, "big") + body[: max(0, size - SEQ_BYTES)]


class Peer:
    def __init__(self, network: P2PNetwork) -> None:
        self.network = network
        self.link = None
        self.link_ready = trio.Event()
        # Send commands run one after another: a link takes one sender at a time
        # (BusyResourceError), and a second batch may arrive while the first is sending.
        self.send_lock = trio.Lock()
        self.sent = 0
        self.sent_hash = hashlib.sha256()
        self.received: list[int] = []
        self.received_hash = hashlib.sha256()
        self.receive_times: list[float] = []
        self.receive_ended: str | None = None

    async def watch_direct(self, link) -> None:
        try:
            await link.wait_direct()
        except trio.BrokenResourceError as exc:
            emit("direct_failed", error=str(exc))
            return
        emit("direct")

    async def use_link(self, link, nursery: trio.Nursery) -> None:
        self.link = link
        self.link_ready.set()
        nursery.start_soon(self.watch_direct, link)
        nursery.start_soon(self.receive_loop, link)

    async def receive_loop(self, link) -> None:
        try:
            async for message in link:
                now = time.monotonic()
                if not self.received:
                    emit("first_byte")
                self.received.append(int.from_bytes(message[:SEQ_BYTES], "big"))
                self.received_hash.update(message)
                self.receive_times.append(now)
            self.receive_ended = "end of channel"
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.receive_ended = repr(exc)
        emit("receive_ended", reason=self.receive_ended)

    async def accept_loop(self, nursery: trio.Nursery) -> None:
        while True:
            link = await self.network.accept_peer()
            emit("accepted", peer=link.peer_id, type=link.connection_type)
            await self.use_link(link, nursery)

    async def events_loop(self) -> None:
        async for event in self.network.events:
            emit(
                "net",
                kind=type(event).__name__,
                peer=getattr(event, "peer_id", None),
                reason=getattr(event, "reason", None),
            )

    async def send(self, count: int, interval: float, size: int) -> None:
        await self.link_ready.wait()
        async with self.send_lock:
            await self._send(count, interval, size)

    async def _send(self, count: int, interval: float, size: int) -> None:
        for _ in range(count):
            message = payload(self.sent, size)
            await self.link.send(message)
            self.sent += 1
            self.sent_hash.update(message)
            if interval:
                await trio.sleep(interval)
        emit(
            "sent", count=self.sent, sha=self.sent_hash.hexdigest(), type=self.link.connection_type
        )

    async def subscribe(self, topic: str) -> None:
        async with self.network.subscribe(topic) as subscription:
            emit("subscribed", topic=topic)
            async for message in subscription:
                emit(
                    "topic_msg",
                    topic=message.topic,
                    publisher=str(message.from_),
                    data=message.data.decode(),
                )

    async def publish(self, topic: str, count: int) -> None:
        for i in range(count):
            await self.network.publish(topic, f"{self.network.local_peer_id} {i}".encode())
        emit("published", topic=topic, count=count)

    def stats(self) -> None:
        seqs = self.received
        gaps = [b - a for a, b in zip(self.receive_times, self.receive_times[1:], strict=False)]
        metrics = self.link.metrics() if self.link is not None else None
        emit(
            "stats",
            count=len(seqs),
            in_order=seqs == sorted(seqs),
            duplicates=len(seqs) - len(set(seqs)),
            sha=self.received_hash.hexdigest(),
            max_gap=max(gaps, default=0.0),
            ended=self.receive_ended,
            type=self.link.connection_type if self.link is not None else None,
            local_type=metrics.local_candidate_type if metrics else None,
            remote_type=metrics.remote_candidate_type if metrics else None,
        )

    async def commands(self, nursery: trio.Nursery) -> None:
        stdin = trio.lowlevel.FdStream(0)
        buffer = b""
        while True:
            chunk = await stdin.receive_some(65536)
            if not chunk:
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                command = json.loads(line)
                name = command["cmd"]
                if name == "quit":
                    return
                if name == "connect":
                    nursery.start_soon(self.connect, command["peer"], nursery)
                elif name == "send":
                    nursery.start_soon(
                        self.send,
                        command["count"],
                        command.get("interval", 0.0),
                        command.get("size", 64),
                    )
                elif name == "stats":
                    self.stats()
                elif name == "subscribe":
                    nursery.start_soon(self.subscribe, command["topic"])
                elif name == "topic_peers":
                    peers = self.network.topic_peers(command["topic"])
                    emit("topic_peers", topic=command["topic"], peers=peers)
                elif name == "publish":
                    nursery.start_soon(self.publish, command["topic"], command["count"])

    async def connect(self, peer_id: str, nursery: trio.Nursery) -> None:
        start = time.monotonic()
        try:
            link = await self.network.connect_to_peer(peer_id)
        except Exception as exc:  # reported, the test decides
            emit("connect_failed", error=f"{type(exc).__name__}: {exc}", start=start)
            return
        emit("link", type=link.connection_type, start=start)
        await self.use_link(link, nursery)


def install_trace() -> None:
    """Report ICE events, checks and SDP steps as ``trace`` lines (diagnostics only)."""
    from darkswap_trio.proto.ice import _connectivity as ice_connectivity
    from darkswap_trio.proto.ice import _events as ice_events
    from darkswap_trio.webrtc import _peer_connection

    checks, outbox = ice_connectivity.ConnectivityChecks, ice_events.IceOutbox
    emit_event, send_check = outbox.emit, checks._send_check

    def traced_emit(self, event):
        emit("trace", what=type(event).__name__, detail=str(getattr(event, "state", "")))
        return emit_event(self, event)

    def traced_check(self, pair, nominate, now):
        emit(
            "trace",
            what="check",
            detail=f"{pair.local_addr}->{pair.remote_addr} nominate={nominate}",
        )
        return send_check(self, pair, nominate, now)

    outbox.emit, checks._send_check = traced_emit, traced_check
    hold = checks._nomination_hold

    def traced_hold(self, best):
        until = hold(self, best)
        emit(
            "trace",
            what="hold",
            detail=f"{until} pairs={[(p.state.value, p.check_started_at) for p in self.checklist.pairs]} first={self._first_valid_at}",
        )
        return until

    checks._nomination_hold = traced_hold
    for name in (
        "create_offer",
        "create_answer",
        "set_remote_description",
        "wait_connected",
        "create_data_channel",
        "accept_data_channel",
    ):
        original = getattr(_peer_connection.PeerConnection, name)

        def traced(original=original, name=name):
            async def call(self, *args, **kwargs):
                emit("trace", what=name, detail="start")
                result = await original(self, *args, **kwargs)
                emit("trace", what=name, detail="end")
                return result

            return call

        setattr(_peer_connection.PeerConnection, name, traced())


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--relay", required=True)
    parser.add_argument("--stun", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument(
        "--direct-timeout",
        type=float,
        default=None,
        help="P2PConfig.direct_connect_timeout (default: the SDK's)",
    )
    parser.add_argument("--no-direct", action="store_true", help="enable_direct=False")
    parser.add_argument("--turn", action="append", default=[], help="a turn: URL")
    parser.add_argument("--turn-username")
    parser.add_argument("--turn-credential")
    parser.add_argument("--relay-only", action="store_true", help='ice_transport_policy="relay"')
    parser.add_argument("--trace", action="store_true")
    args = parser.parse_args()
    if args.trace:
        install_trace()
    handler = ReportLogs()
    handler.setLevel(logging.INFO)
    sdk_log = logging.getLogger("darkswap_trio")
    sdk_log.addHandler(handler)
    sdk_log.setLevel(logging.INFO)
    p2p = {} if args.direct_timeout is None else {"direct_connect_timeout": args.direct_timeout}
    if args.turn:
        p2p.update(
            turn_servers=args.turn,
            turn_username=args.turn_username,
            turn_credential=args.turn_credential,
            ice_transport_policy="relay" if args.relay_only else "all",
        )
    config = Config(
        p2p=P2PConfig(
            relay_servers=[args.relay],
            stun_servers=[args.stun],
            enable_direct=not args.no_direct,
            **p2p,
        ),
        relay_manager=RelayManagerConfig(connection_timeout=10, ping_interval=5),
    )
    # Host candidates from the LAN interface only; STUN comes from P2PConfig.stun_servers.
    pcc = PeerConnectionConfig(host_addresses=[args.host])
    async with P2PNetwork(config, peer_connection_config=pcc) as network:
        with trio.fail_after(20):
            await network.wait_relay_connected()
        peer = Peer(network)
        emit("ready", peer_id=network.local_peer_id)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer.accept_loop, nursery)
            nursery.start_soon(peer.events_loop)
            await peer.commands(nursery)
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    try:
        trio.run(main)
    except KeyboardInterrupt:
        sys.exit(1)
