"""`python -m relay` as a real process: READY line, /healthz, STUN, graceful signal exit."""

import json
import os
import signal
import subprocess
import sys
from functools import partial

import pytest
import trio
from aioice import stun

from darkswap_trio import Keypair

SERVE = [sys.executable, "-m", "relay", "--host", "127.0.0.1", "--port", "0", "--stun-port", "0"]
SERVE += ["--metrics-port", "0", "--auth", "open", "--shutdown-grace", "2"]


async def read_line(stream: trio.abc.ReceiveStream, buffer: bytearray) -> bytes:
    while b"\n" not in buffer:
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise EOFError(f"stream closed before a full line: {bytes(buffer)!r}")
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line


async def drain(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
    while chunk := await stream.receive_some(65536):
        into += chunk


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        response = bytearray()
        await drain(stream, response)
    head, _, body = bytes(response).partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def stun_binding(port: int) -> tuple[str, int]:
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
        await sock.bind(("127.0.0.1", 0))
        request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, os.urandom(12))
        await sock.sendto(bytes(request), ("127.0.0.1", port))
        data, _ = await sock.recvfrom(2048)
        response = stun.parse_message(data)
        assert response.transaction_id == request.transaction_id
        assert response.attributes["XOR-MAPPED-ADDRESS"] == sock.getsockname()
        return response.attributes["XOR-MAPPED-ADDRESS"]


@pytest.mark.parametrize(
    ("signum", "extra"), [(signal.SIGTERM, []), (signal.SIGINT, ["--log-format", "json"])]
)
async def test_serve_ready_health_stun_and_graceful_exit(signum, extra, tmp_path) -> None:
    key_file = tmp_path / "relay.key"
    extra = [*extra, "--key-file", str(key_file)]
    stderr = bytearray()
    with trio.fail_after(20):  # process start-up included
        async with trio.open_nursery() as nursery:
            process = await nursery.start(
                partial(
                    trio.run_process,
                    SERVE + extra,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    check=False,
                )
            )
            nursery.start_soon(drain, process.stderr, stderr)
            stdout = bytearray()
            line = (await read_line(process.stdout, stdout)).decode()
            assert line.startswith("READY "), (line, stderr)
            fields = dict(item.split("=", 1) for item in line.split()[1:])
            assert set(fields) == {"signaling", "stun", "metrics", "peer_id", "multiaddr"}
            assert fields["multiaddr"].startswith(f"/ip4/127.0.0.1/tcp/{fields['signaling']}/ws/")
            assert fields["multiaddr"].endswith(f"/p2p/{fields['peer_id']}")
            # The identity was created in --key-file and is the one announced.
            keypair = Keypair.from_protobuf(key_file.read_bytes())
            assert str(keypair.peer_id) == fields["peer_id"]

            status, body = await http_get(int(fields["metrics"]), "/healthz")
            assert status == 200 and json.loads(body)["status"] == "ok"
            await stun_binding(int(fields["stun"]))
            status, body = await http_get(int(fields["metrics"]), "/metrics")
            assert status == 200 and b"darkswap_relay_stun_requests_total 1.0" in body

            process.send_signal(signum)
            with trio.fail_after(10):
                await process.wait()
            await drain(process.stdout, stdout)
    assert process.returncode == 0, bytes(stderr).decode()
    assert stdout == b""  # exactly one line was ever printed on stdout
    if "json" in extra:
        records = [json.loads(line) for line in stderr.decode().splitlines()]
        assert any(r["msg"] == "shutting down" and r["signal"] == "SIGINT" for r in records)
        assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)


async def test_bad_configuration_exits_2_without_ready() -> None:
    with trio.fail_after(20):
        result = await trio.run_process(
            [sys.executable, "-m", "relay", "--auth", "jwt", "--port", "0"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 2
    assert result.stdout == b""
    assert b"jwt_key" in result.stderr


async def test_port_in_use_exits_1() -> None:
    listener = trio.socket.socket()
    with listener:
        await listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        with trio.fail_after(20):
            result = await trio.run_process(
                [sys.executable, "-m", "relay", "--host", "127.0.0.1", "--port", str(port)]
                + ["--stun-port", "none", "--metrics-port", "none", "--auth", "open"],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
    assert result.returncode == 1
    assert result.stdout == b""
    assert b"relay failed" in result.stderr


def relay_script() -> list[str]:
    """The installed ``darkswap-relay`` console script (next to this interpreter)."""
    script = os.path.join(os.path.dirname(sys.executable), "darkswap-relay")
    if not os.path.exists(script):
        pytest.skip("the darkswap-relay script is not installed next to this interpreter")
    return [script]


async def test_original_flows_against_the_darkswap_relay_script() -> None:
    """A client written for the original relay, against the standalone process."""
    from types import SimpleNamespace

    from relayclient import connect

    from darkswap_trio.proto.signaling import (
        Answer,
        CloseRelay,
        Error,
        IceCandidate,
        Offer,
        RelayData,
        RelayRequest,
        RelayResponse,
    )

    command = relay_script() + SERVE[3:]  # same flags as `python -m relay`
    stderr = bytearray()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            process = await nursery.start(
                partial(
                    trio.run_process,
                    command,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    check=False,
                )
            )
            nursery.start_soon(drain, process.stderr, stderr)
            line = (await read_line(process.stdout, bytearray())).decode()
            assert line.startswith("READY "), (line, stderr)
            fields = dict(item.split("=", 1) for item in line.split()[1:])
            server = SimpleNamespace(signaling_port=int(fields["signaling"]))
            alice_id, bob_id = str(Keypair.generate().peer_id), str(Keypair.generate().peer_id)
            async with connect(server) as alice, connect(server) as bob:
                await alice.register_legacy(alice_id)
                await bob.register_legacy(bob_id)
                # Signaling reaches the addressee unchanged.
                offer = Offer(from_=alice_id, to=bob_id, sdp="v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\n")
                await alice.send(offer)
                assert await bob.expect(Offer) == offer
                answer = Answer(from_=bob_id, to=alice_id, sdp="v=0\r\n")
                await bob.send(answer)
                assert await alice.expect(Answer) == answer
                candidate = IceCandidate(
                    from_=alice_id,
                    to=bob_id,
                    sdp_mid="0",
                    sdp_mline_index=0,
                    candidate="candidate:1 1 UDP 1 127.0.0.1 9 typ host",
                )
                await alice.send(candidate)
                assert await bob.expect(IceCandidate) == candidate
                # Circuit: request, accepted response, announced to the target.
                await alice.send(RelayRequest(from_=alice_id, to=bob_id))
                response = await alice.expect(RelayResponse)
                assert response.accepted and response.error is None
                # Told as the original told it: RelayRequest, then RelayResponse.
                assert await bob.expect_circuit_announcement(alice_id) == response.relay_id
                # RelayData both ways (base64 JSON, as the original).
                await alice.send(
                    RelayData(from_=alice_id, relay_id=response.relay_id, data=b"to bob")
                )
                got = await bob.expect(RelayData)
                assert (got.from_, got.data) == (alice_id, b"to bob")
                await bob.send(
                    RelayData(from_=bob_id, relay_id=response.relay_id, data=b"to alice")
                )
                assert (await alice.expect(RelayData)).data == b"to alice"
                # CloseRelay reaches the other end.
                await alice.send(CloseRelay(relay_id=response.relay_id))
                closed = await bob.expect(CloseRelay)
                assert closed.relay_id == response.relay_id
                # SIGTERM: both peers are told, the process exits 0.
                process.send_signal(signal.SIGTERM)
                for peer in (alice, bob):
                    while True:
                        frame = await peer.recv()
                        if isinstance(frame, Error):
                            assert frame.code == "server_shutdown"
                            break
                with trio.fail_after(10):
                    await process.wait()
    assert process.returncode == 0, bytes(stderr).decode()
