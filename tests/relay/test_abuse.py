"""Issue #10 attacks at a small scale, against a real relay over loopback, with assertions.

Distinct attacker addresses are emulated by binding client sockets to 127.0.0.x (all of
127.0.0.0/8 is loopback on Linux). Every test is bounded in time; timers use the
autojump clock where time is the point.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import struct
import subprocess
import sys
import uuid

import trio
import trio.testing
from aioice import stun
from relayclient import connect, make_config, new_peer

from darkswap_trio.proto.signaling import (
    CircuitData,
    CloseRelay,
    DataChannel,
    Error,
    Ping,
    Pong,
    RelayRequest,
    RelayResponse,
    decode_message_untrusted,
)
from darkswap_trio.proto.websocket._connection import (
    CloseReceived,
    MessageReceived,
    Opcode,
    ProtocolFailed,
    WebSocketCore,
    encode_frame,
)
from relay import serve_relay

KIB = 1024


def limit_hits(server, limit: str) -> float:
    return server.metrics.value("darkswap_relay_limit_hits_total", {"limit": limit}) or 0.0


async def tcp_from(source_ip: str, port: int) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", port, local_address=source_ip)


def upgrade_request(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /signaling HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    try:
        while chunk := await stream.receive_some(65536):
            data += chunk
    except trio.BrokenResourceError:  # a reset after the answer: what was read counts
        pass
    return data


async def refused_upgrade_from(source_ip: str, port: int) -> tuple[int, dict]:
    """An upgrade from ``source_ip``; returns (HTTP status, Error JSON) of the refusal."""
    stream = await tcp_from(source_ip, port)
    async with stream:
        await stream.send_all(upgrade_request(port))
        response = await read_all(stream)
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


async def http_get(port: int, path: str) -> int:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        response = await read_all(stream)
    return int(response.split()[1])


async def is_closed_by_relay(stream: trio.SocketStream) -> bool:
    try:
        return await stream.receive_some(100) == b""
    except trio.BrokenResourceError:
        return True


async def registered_client_works(server) -> None:
    async with connect(server) as c:
        await c.register_legacy(str(new_peer().peer_id))
        await c.send(Ping())
        await c.expect(Pong)


# -- item 4: idle connections and file descriptors ----------------------------------


async def test_idle_connections_are_counted_per_ip_from_accept(nursery):
    with trio.fail_after(20):
        config = make_config(max_sessions_per_ip=6, max_pending_per_ip=4)
        server = await nursery.start(serve_relay, config)
        port = server.signaling_port
        # Four idle sockets from one address: no HTTP head, nothing at all.
        idle = [await tcp_from("127.0.0.2", port) for _ in range(4)]
        await trio.testing.wait_all_tasks_blocked()
        assert server.admission.pending("127.0.0.2") == 4
        assert server.admission.slots.count("127.0.0.2") == 4
        # A fifth is refused at accept, with the protocol's error.
        status, error = await refused_upgrade_from("127.0.0.2", port)
        assert status == 503 and error["payload"]["code"] == "too_many_sessions"
        assert limit_hits(server, "pending_per_ip") == 1
        # An honest peer from another address registers, and /metrics answers.
        await registered_client_works(server)
        assert await http_get(server.metrics_port, "/metrics") == 200
        for stream in idle:
            await stream.aclose()
        await server.shutdown(1)


async def test_pending_flood_from_many_ips_gives_way_to_an_honest_client(nursery):
    with trio.fail_after(20):
        config = make_config(max_pending_connections=6, max_pending_per_ip=3)
        server = await nursery.start(serve_relay, config)
        port = server.signaling_port
        flood = {
            ip: [await tcp_from(ip, port) for _ in range(3)] for ip in ("127.0.0.2", "127.0.0.3")
        }
        await trio.testing.wait_all_tasks_blocked()
        assert server.admission.pending_total == 6
        # The pending table is full: the honest newcomer displaces the oldest idle
        # connection of the heaviest address instead of being refused.
        await registered_client_works(server)
        assert limit_hits(server, "pending_evicted") == 1
        assert await is_closed_by_relay(flood["127.0.0.2"][0])
        assert server.admission.pending_total == 5
        # A flooding address cannot displace an equal one: it is refused.
        status, _ = await refused_upgrade_from("127.0.0.3", port)
        assert status == 503 and limit_hits(server, "pending_per_ip") == 1
        for streams in flood.values():
            for stream in streams:
                await stream.aclose()
        await server.shutdown(1)


async def test_pre_handshake_phase_is_bounded_from_accept(nursery, autojump_clock):
    with trio.fail_after(100):
        server = await nursery.start(serve_relay, make_config(handshake_timeout=10.0))
        port = server.signaling_port
        # No HTTP head at all: closed at the deadline.
        start = trio.current_time()
        stream = await tcp_from("127.0.0.2", port)
        assert await is_closed_by_relay(stream)
        assert 10 <= trio.current_time() - start < 11
        await stream.aclose()
        # Upgraded late (6 s after accept) and never registered: told handshake_timeout
        # 10 s after accept, not 10 s after the upgrade.
        start = trio.current_time()
        stream = await tcp_from("127.0.0.2", port)
        await trio.sleep(6)
        await stream.send_all(upgrade_request(port))
        received = b""
        while b"handshake_timeout" not in received:
            chunk = await stream.receive_some(4096)
            assert chunk, received
            received += chunk
        assert received.startswith(b"HTTP/1.1 101")
        assert 10 <= trio.current_time() - start < 11
        assert await read_all(stream) is not None  # then closed (after the close wait)
        await stream.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert server.admission.pending_total == 0
        await server.shutdown(1)


def test_cli_raises_the_fd_limit_and_fits_max_sessions(tmp_path):
    import resource

    config = tmp_path / "relay.toml"
    config.write_text("[limits]\nmax_sessions = 100000\n")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    soft = min(256, hard)
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "--host", "127.0.0.1", "--port", "0",
         "--stun-port", "none", "--metrics-port", "none", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith("READY")
        limits = open(f"/proc/{proc.pid}/limits").read()
        row = re.search(r"Max open files\s+(\d+)\s+(\d+)", limits)
        assert row is not None and int(row.group(1)) == int(row.group(2)) == hard
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=15)
    if hard < 100000:
        assert "does not fit the open-file limit" in stderr


# -- item 5: circuits -----------------------------------------------------------------


async def request_circuit(a, b) -> RelayResponse:
    await a.send(RelayRequest(from_=a.peer_id, to=b.peer_id))
    return await a.expect(RelayResponse)


async def test_one_source_cannot_take_every_circuit_slot_of_a_target(nursery):
    with trio.fail_after(20):
        config = make_config(max_circuits_per_peer=4, max_circuits_per_pair=2)
        server = await nursery.start(serve_relay, config)
        async with connect(server) as mallory, connect(server) as honest, connect(server) as victim:
            for c in (mallory, honest, victim):
                await c.register_extended(new_peer(), server.peer_id, open_mode=True)
            for _ in range(2):
                assert (await request_circuit(mallory, victim)).accepted
                await victim.expect(DataChannel)
            refused = await request_circuit(mallory, victim)
            assert not refused.accepted and refused.code == "too_many_circuits_to_peer"
            assert limit_hits(server, "circuits_per_pair") == 1
            # Another source still gets a circuit to the same target.
            assert (await request_circuit(honest, victim)).accepted
            await victim.expect(DataChannel)
        await server.shutdown(1)


async def test_idle_circuit_closes_and_both_ends_are_told(nursery, autojump_clock):
    with trio.fail_after(1000):
        server = await nursery.start(serve_relay, make_config(circuit_idle_timeout=30.0))
        async with connect(server) as a, connect(server) as b:
            await a.register_extended(new_peer(), server.peer_id, open_mode=True)
            await b.register_extended(new_peer(), server.peer_id, open_mode=True)
            response = await request_circuit(a, b)
            await b.expect(DataChannel)
            start = trio.current_time()
            await trio.sleep(20)
            relay_id = uuid.UUID(response.relay_id).bytes
            await a.send_data(relay_id, b"hi")
            assert (await b.expect(CircuitData)).payload == b"hi"  # restarts the idle timer
            assert await a.expect(CloseRelay) == CloseRelay(response.relay_id, "idle")
            assert await b.expect(CloseRelay) == CloseRelay(response.relay_id, "idle")
            assert 50 <= trio.current_time() - start < 51
            assert limit_hits(server, "circuit_idle") == 1
            assert server.statistics().circuits == 0
        await server.shutdown(1)


# -- item 6: oversize frames ----------------------------------------------------------


class RawClient:
    """A WebSocket client over a raw stream, so a test can send half a frame."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.core = WebSocketCore(is_client=True, max_message_size=1 << 20)

    async def next_event(self):
        while (event := self.core.poll_event()) is None:
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.core.receive(data)
        return event

    async def expect_message(self):
        event = await self.next_event()
        assert isinstance(event, MessageReceived), event
        return decode_message_untrusted(event.data)


async def test_oversize_frames_are_refused_without_being_buffered(nursery):
    with trio.fail_after(20):
        server = await nursery.start(serve_relay, make_config())
        port = server.signaling_port
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(upgrade_request(port))
        head = b""
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some(1)
        assert head.startswith(b"HTTP/1.1 101")
        client = RawClient(stream)
        [session] = server.router.sessions
        for _ in range(3):
            frame = encode_frame(Opcode.TEXT, b"x" * (300 * KIB), mask_key=os.urandom(4))
            # Half a 300 KiB frame: refused at its header, its payload never buffered.
            await stream.send_all(frame[: len(frame) // 2])
            error = await client.expect_message()
            assert isinstance(error, Error) and error.code == "frame_too_large"
            await trio.testing.wait_all_tasks_blocked()
            assert session.ws.statistics().receive_buffer_bytes == 0
            await stream.send_all(frame[len(frame) // 2 :])
        # The session goes on.
        await stream.send_all(encode_frame(Opcode.TEXT, b'{"type":"Ping"}', mask_key=os.urandom(4)))
        assert isinstance(await client.expect_message(), Pong)
        assert limit_hits(server, "frame_size") == 3
        # Above the WebSocket hard limit (4x max_frame_size): closed 1009 at the header.
        await stream.send_all(
            encode_frame(Opcode.TEXT, b"y" * (1100 * KIB), mask_key=os.urandom(4))[:4096]
        )
        event = await client.next_event()
        assert isinstance(event, (CloseReceived, ProtocolFailed)) and event.code == 1009
        await stream.aclose()
        await server.shutdown(1)


def test_oversize_frame_rounds_keep_relay_rss_bounded():
    """The issue's attack on a `python -m relay` process (benchmarks/oversize_frames_rss.py)
    at a small scale: 4 rounds of 16 sessions x 8 frames of 300 KiB, then 1.1 MiB.
    Measured before the fix: +27 MiB; after: +7 MiB."""
    script = os.path.join(
        os.path.dirname(__file__), "..", "..", "benchmarks", "oversize_frames_rss.py"
    )
    out = subprocess.run(
        [sys.executable, script, "--rounds", "4", "--connections", "16", "--frames", "8"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    rss = [float(x) for x in re.findall(r"rss ([\d.]+) MiB", out)]
    assert len(rss) == 5, out
    assert max(rss) - rss[0] < 16, out


# -- item 8: STUN ---------------------------------------------------------------------


def udp_from(source_ip: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source_ip, 0))
    sock.setblocking(False)
    return sock


def binding(fingerprint: bool = False) -> bytes:
    request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, os.urandom(12))
    if fingerprint:
        request.add_fingerprint()
    return bytes(request)


async def reply_to(sock: socket.socket, data: bytes, port: int) -> bytes:
    sock.sendto(data, ("127.0.0.1", port))
    await trio.lowlevel.wait_readable(sock)
    return sock.recv(2048)


def pending_replies(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(2048))
        except BlockingIOError:
            return out


def stun_dropped(server, reason: str) -> float:
    return server.metrics.value("darkswap_relay_stun_dropped_total", {"reason": reason}) or 0.0


async def test_stun_flood_from_one_source_is_rate_limited(nursery):
    with trio.fail_after(20):
        config = make_config(stun_per_ip_rate=0.001, stun_per_ip_burst=5)
        server = await nursery.start(serve_relay, config)
        with udp_from("127.0.0.2") as flooder, udp_from("127.0.0.3") as other:
            for _ in range(12):
                flooder.sendto(binding(), ("127.0.0.1", server.stun_port))
            # One service task answers in order: once `other` has its answer, every
            # flood datagram was handled.
            assert stun.parse_message(await reply_to(other, binding(), server.stun_port))
            assert len(pending_replies(flooder)) == 5
        assert stun_dropped(server, "rate_limited") == 7
        assert limit_hits(server, "stun_per_ip") == 7
        await server.shutdown(1)


async def test_stun_total_budget_bounds_spoofed_sources(nursery):
    with trio.fail_after(20):
        config = make_config(stun_per_ip_rate=0, stun_total_rate=0.001, stun_total_burst=3)
        server = await nursery.start(serve_relay, config)
        socks = [udp_from(f"127.0.0.{i}") for i in (2, 3, 4)]
        try:
            for sock in socks:
                for _ in range(2):
                    sock.sendto(binding(), ("127.0.0.1", server.stun_port))
            # Loopback datagrams are queued by sendto itself; the service task blocks
            # only once it has handled (and answered) all of them.
            await trio.testing.wait_all_tasks_blocked()
            assert sum(len(pending_replies(s)) for s in socks) == 3
            assert limit_hits(server, "stun_total") == 3
        finally:
            for sock in socks:
                sock.close()
        await server.shutdown(1)


def with_unknown_attribute(request: bytes, value: bytes) -> bytes:
    data = request + struct.pack("!HH", 0x0030, len(value)) + value + bytes(-len(value) % 4)
    return data[:2] + struct.pack("!H", len(data) - 20) + data[4:]


async def test_stun_replies_do_not_amplify_beyond_what_the_rfc_requires(nursery):
    with trio.fail_after(20):
        server = await nursery.start(serve_relay, make_config())
        port = server.stun_port
        with udp_from("127.0.0.2") as client:
            # The smallest valid answer: XOR-MAPPED-ADDRESS only (32 bytes for IPv4),
            # FINGERPRINT only when the request had one, never SOFTWARE.
            reply = await reply_to(client, binding(), port)
            assert len(reply) == 32
            assert set(stun.parse_message(reply).attributes) == {"XOR-MAPPED-ADDRESS"}
            reply = await reply_to(client, binding(fingerprint=True), port)
            assert len(reply) == 40
            assert set(stun.parse_message(reply).attributes) == {
                "XOR-MAPPED-ADDRESS",
                "FINGERPRINT",
            }
            # A short request with an unknown comprehension-required attribute would be
            # answered by a larger 420: dropped instead.
            client.sendto(with_unknown_attribute(binding(), b""), ("127.0.0.1", port))
            # A long one gets its 420, no larger than the request.
            request = with_unknown_attribute(binding(), b"z" * 40)
            reply = await reply_to(client, request, port)
            assert stun.parse_message(reply).attributes["ERROR-CODE"][0] == 420
            assert len(reply) <= len(request)
            assert pending_replies(client) == []
        assert stun_dropped(server, "amplification") == 1
        await server.shutdown(1)
