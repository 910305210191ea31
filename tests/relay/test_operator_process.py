"""An operator's first day with `python -m relay` as a real process: --announce in READY,
the startup line, operator logs (sessions, refused registrations, circuits), SIGHUP
reload, and one-line errors for a port in use."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from relayclient import connect

from darkswap_trio import Keypair
from darkswap_trio.proto.signaling import (
    PROTOCOL_VERSION,
    Authenticate,
    Challenge,
    Register,
    Registered,
    RelayRequest,
    RelayResponse,
    peer_auth_message,
)
from relay._auth import generate_jwt_keypair, issue_token

RELAY = [sys.executable, "-m", "relay"]


class RelayProcess:
    """A running relay: its READY fields and its JSON log records as they arrive."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.records: list[dict[str, Any]] = []
        self.raw = bytearray()
        self._changed = trio.Event()
        self.ready: dict[str, str] = {}

    async def read_stderr(self) -> None:
        buffer = bytearray()
        while chunk := await self.process.stderr.receive_some(65536):
            self.raw += chunk
            buffer += chunk
            *lines, rest = bytes(buffer).split(b"\n")
            buffer[:] = rest
            for line in lines:
                self.records.append(json.loads(line))
            self._changed.set()
            self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first log record matching ``predicate`` (waits for it)."""
        while True:
            for record in self.records:
                if predicate(record):
                    return record
            await self._changed.wait()

    @property
    def signaling(self) -> Any:
        return SimpleNamespace(signaling_port=int(self.ready["signaling"]))


async def start_relay(nursery: trio.Nursery, argv: list[str]) -> RelayProcess:
    process = await nursery.start(
        partial(
            trio.run_process,
            [*RELAY, "--log-format", "json", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            check=False,
        )
    )
    relay = RelayProcess(process)
    nursery.start_soon(relay.read_stderr)
    line = b""
    while not line.endswith(b"\n"):
        chunk = await process.stdout.receive_some(1)
        assert chunk, f"relay exited before READY: {bytes(relay.raw).decode()}"
        line += chunk
    assert line.startswith(b"READY "), line
    relay.ready = dict(item.split("=", 1) for item in line.decode().split()[1:])
    return relay


async def stop_relay(relay: RelayProcess) -> None:
    relay.process.send_signal(signal.SIGTERM)
    with trio.fail_after(10):
        await relay.process.wait()
    assert relay.process.returncode == 0, bytes(relay.raw).decode()


async def test_announce_startup_line_and_operator_logs(tmp_path) -> None:
    argv = ["--host", "127.0.0.1", "--port", "0", "--stun-port", "none", "--metrics-port", "0"]
    argv += ["--auth", "open", "--announce", "/dns4/relay.example/tcp/443/wss"]
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            relay = await start_relay(nursery, argv)
            peer_id = relay.ready["peer_id"]
            assert relay.ready["multiaddr"] == f"/dns4/relay.example/tcp/443/wss/p2p/{peer_id}"
            start = await relay.wait_for(lambda r: r["msg"].startswith("starting darkswap-relay"))
            assert start["config"]["announce"] == "/dns4/relay.example/tcp/443/wss"
            assert start["config"]["limits.max_sessions"] == 10000
            assert start["config"]["metrics_host"] == "127.0.0.1"

            a, b = Keypair.generate(), Keypair.generate()
            async with connect(relay.signaling) as ca, connect(relay.signaling) as cb:
                await ca.register_extended(a, peer_id, open_mode=True)
                await cb.register_extended(b, peer_id, open_mode=True)
                await ca.send(RelayRequest(from_=ca.peer_id, to=str(b.peer_id)))
                response = await ca.expect(RelayResponse)
                assert response.accepted
                opened = await relay.wait_for(lambda r: r["msg"] == "circuit open")
                assert (opened["requester"], opened["target"]) == (str(a.peer_id), str(b.peer_id))
                assert opened["relay_id"] == response.relay_id
            closed = await relay.wait_for(lambda r: r["msg"] == "circuit closed")
            assert closed["relay_id"] == response.relay_id and closed["reason"]
            assert closed["bytes"] == 0 and closed["duration"] >= 0
            # Both sessions: opened and closed, with peer id, address and duration.
            for key in (a, b):
                await relay.wait_for(
                    lambda r, key=key: (
                        r["msg"] == "session closed" and r["peer_id"] == str(key.peer_id)
                    )
                )
            closes = [r for r in relay.records if r["msg"] == "session closed"]
            for record in closes:
                assert record["remote"].startswith("127.0.0.1:")
                assert record["duration"] >= 0 and record["reason"]
                assert record["level"] == "INFO"
            assert {r["peer_id"] for r in closes} == {str(a.peer_id), str(b.peer_id)}
            assert sum(r["msg"] == "session open" for r in relay.records) == 2
            await stop_relay(relay)


def write_config(path: Any, secret_file: Any, **limits: int) -> None:
    lines = [
        'host = "127.0.0.1"', "port = 0", "stun_port = false", "metrics_port = 0",
        "[auth]", 'mode = "jwt"', 'jwt_algorithm = "HS256"', f'jwt_key_file = "{secret_file}"',
        "[limits]", *(f"{key} = {value}" for key, value in limits.items()),
    ]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")


async def authenticate(relay: RelayProcess, client: Any, key: Keypair, secret: str) -> None:
    pid, relay_id = str(key.peer_id), relay.ready["peer_id"]
    await client.send(Register(peer_id=pid, protocol=PROTOCOL_VERSION, nonce=os.urandom(32)))
    challenge = await client.expect(Challenge)
    token = issue_token(pid, secret, "HS256", 600, now=time.time())
    signature = key.sign(peer_auth_message(challenge.nonce, relay_id, pid))
    await client.send(Authenticate(signature=signature, token=token))


async def test_sighup_reloads_limits_and_jwt_key_and_keeps_serving(tmp_path) -> None:
    old_secret, _ = generate_jwt_keypair("HS256")
    new_secret, _ = generate_jwt_keypair("HS256")
    secret_file = tmp_path / "jwt_secret"
    secret_file.write_text(old_secret)
    config = tmp_path / "relay.toml"
    write_config(config, secret_file, max_circuits_per_peer=16)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            relay = await start_relay(nursery, ["--config", str(config)])
            before, after, stale = Keypair.generate(), Keypair.generate(), Keypair.generate()
            async with connect(relay.signaling) as first:
                await authenticate(relay, first, before, old_secret)
                registered = await first.expect(Registered)
                assert registered.limits["max_circuits_per_peer"] == 16

                # Rotate the key (same file, new contents), lower a limit, change the port.
                secret_file.write_text(new_secret)
                write_config(config, secret_file, max_circuits_per_peer=3)
                config.write_text(config.read_text().replace("\nport = 0", "\nport = 9"))
                relay.process.send_signal(signal.SIGHUP)
                applied = await relay.wait_for(lambda r: r["msg"].startswith("reload applied"))
                assert "limits.max_circuits_per_peer" in applied["msg"]
                assert "auth.jwt_key_file" in applied["msg"]
                assert applied["changed"]["limits.max_circuits_per_peer"] == 3
                ignored = await relay.wait_for(lambda r: r["msg"].startswith("reload ignored"))
                assert ignored["msg"].endswith(": port") and ignored["level"] == "WARNING"

                # Still serving: the first session is alive, new ones use the new key and limit.
                await first.send(RelayRequest(from_=str(before.peer_id), to=str(before.peer_id)))
                assert (await first.expect(RelayResponse)).code == "self_circuit"
                async with connect(relay.signaling) as second:
                    await authenticate(relay, second, after, new_secret)
                    registered = await second.expect(Registered)
                    assert registered.limits["max_circuits_per_peer"] == 3
                async with connect(relay.signaling) as third:
                    await authenticate(relay, third, stale, old_secret)
                    await third.expect_error("invalid_token")
                refused = await relay.wait_for(
                    lambda r: r["msg"].startswith("registration refused")
                )
                assert refused["code"] == "invalid_token" and refused["remote"].startswith(
                    "127.0.0.1:"
                )

            # A reload with a broken configuration changes nothing and keeps the relay up.
            config.write_text("port = 'x'\n")
            relay.process.send_signal(signal.SIGHUP)
            failed = await relay.wait_for(lambda r: r["msg"].startswith("reload failed"))
            assert failed["level"] == "ERROR" and "\n" not in failed["msg"]
            await stop_relay(relay)


@pytest.mark.parametrize("service", ["signaling", "metrics"])
async def test_port_in_use_is_one_line_naming_the_port(service) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["--host", "127.0.0.1", "--stun-port", "none", "--auth", "open"]
        if service == "signaling":
            argv += ["--port", str(port), "--metrics-port", "none"]
        else:
            argv += ["--port", "0", "--metrics-port", str(port)]
        with trio.fail_after(20):
            result = await trio.run_process(
                [*RELAY, *argv], capture_stdout=True, capture_stderr=True, check=False
            )
    assert result.returncode == 1 and result.stdout == b""
    errors = [line for line in result.stderr.decode().splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "Traceback" not in result.stderr.decode()
    assert f"{service} 127.0.0.1:{port}" in errors[0] and "in use" in errors[0], errors
