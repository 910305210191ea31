"""TURN inside the full relay (serve_relay with [turn] enabled), its quotas over real
sockets, and the operator surface: flags, TOML, ``turn-credentials``."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import socket
from functools import partial

import pytest
import trio
from aioice import stun
from aioice.turn import create_turn_endpoint
from relayclient import make_config
from turn_helpers import REALM, SECRET, aioice_exchange, credentials, echo_peer

from relay.__main__ import _config_from_args, build_parser, main
from relay._config import ConfigError, load_config
from relay._server import serve_relay

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def turn_config(tmp_path, **turn):
    secret_file = tmp_path / "turn_secret"
    secret_file.write_bytes(SECRET + b"\n")
    config = make_config()
    config.metrics_port = None
    config.turn.enabled = True
    config.turn.realm = REALM
    config.turn.secret_file = str(secret_file)
    config.turn.allow_loopback_peers = True
    for key, value in turn.items():
        setattr(config.turn, key, value)
    return config.validate()


def binding_request() -> bytes:
    message = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, transaction_id=os.urandom(12))
    return bytes(message)


async def test_relay_serves_stun_and_turn_on_one_port_udp_and_tcp(tmp_path) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_relay, turn_config(tmp_path))
            port = server.stun_port
            assert server.turn is not None and server.turn.port == port
            # STUN Binding keeps working on UDP...
            udp = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with udp:
                await udp.bind(("127.0.0.1", 0))
                await udp.sendto(binding_request(), ("127.0.0.1", port))
                data, _ = await udp.recvfrom(2048)
                assert (
                    stun.parse_message(data).attributes["XOR-MAPPED-ADDRESS"] == udp.getsockname()
                )
            # ...and over TCP on the same port number (RFC 8489 framing).
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(binding_request())
                data = await stream.receive_some(2048)
                assert stun.parse_message(data).message_class == stun.Class.RESPONSE
            peer = await nursery.start(echo_peer)
            username, password = credentials()
            _, got = await trio.to_thread.run_sync(
                partial(aioice_exchange, port, peer, username, password, "udp", [b"via relay"])
            )
            assert got == [b"echo:via relay"]
            text = server.metrics.render()[0].decode()
            assert "darkswap_relay_turn_allocations_total 1.0" in text
            assert 'darkswap_relay_turn_relayed_bytes_total{direction="to_peer"} 9.0' in text
            assert "darkswap_relay_stun_requests_total 2.0" in text
            nursery.cancel_scope.cancel()


async def test_allocation_quota_per_ip_over_real_sockets(tmp_path) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            config = turn_config(tmp_path, max_allocations_per_ip=1)
            server = await nursery.start(serve_relay, config)
            peer = await nursery.start(echo_peer)
            username, password = credentials()
            for payload in (b"a", b"b"):  # one after the other: each deletion frees the quota
                _, got = await trio.to_thread.run_sync(
                    partial(
                        aioice_exchange,
                        server.stun_port,
                        peer,
                        username,
                        password,
                        "udp",
                        [payload],
                    )
                )
                assert got == [b"echo:" + payload]
            # Two at once from one IP: the second gets 486.
            core = server.turn.core

            def two_at_once() -> str:
                async def go() -> str:
                    port = server.stun_port
                    factory = asyncio.DatagramProtocol
                    first, _ = await create_turn_endpoint(
                        factory, ("127.0.0.1", port), username, password
                    )
                    try:
                        await create_turn_endpoint(factory, ("127.0.0.1", port), username, password)
                    except stun.TransactionFailed as exc:
                        return str(exc)
                    finally:
                        first.close()
                        await asyncio.sleep(0.2)
                    return "allocated"

                return asyncio.run(go())

            outcome = await trio.to_thread.run_sync(two_at_once)
            assert "486" in outcome
            assert core.counters["response_486"] == 1
            assert (
                server.metrics.value(
                    "darkswap_relay_limit_hits_total", {"limit": "turn_allocations_per_ip"}
                )
                == 1
            )
            nursery.cancel_scope.cancel()


def test_turn_credentials_command(capsys, tmp_path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET + b"\n")
    code = main(
        [
            "turn-credentials",
            "--secret-file",
            str(secret_file),
            "--peer-id",
            "12D3KooWpeer",
            "--ttl",
            "120",
        ]
    )
    out, _ = capsys.readouterr()
    assert code == 0
    lines = dict(line.split("=", 1) for line in out.splitlines())
    username, password = lines["username"], lines["password"]
    assert username.endswith(":12D3KooWpeer")
    expected = base64.b64encode(hmac.new(SECRET, username.encode(), hashlib.sha1).digest()).decode()
    assert password == expected
    assert (
        main(["turn-credentials", "--secret-file", str(tmp_path / "missing"), "--peer-id", "p"])
        == 2
    )
    assert main(["turn-credentials", "--secret-file", str(secret_file), "--peer-id", "a:b"]) == 2


def test_turn_flags_and_toml(tmp_path, capsys) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET)
    args = build_parser().parse_args(
        ["--host", "127.0.0.1", "--turn", "--turn-realm", "r.example", "--turn-secret-file", str(secret_file),
         "--turn-allow-loopback-peers", "--turn-relay-address", "127.0.0.1"]
    )  # fmt: skip
    config = _config_from_args(args)
    assert config.turn.enabled and config.turn.realm == "r.example"
    assert config.turn.allow_loopback_peers and config.turn.relay_address == "127.0.0.1"
    toml = tmp_path / "relay.toml"
    toml.write_text(
        f'host = "127.0.0.1"\n[turn]\nenabled = true\nsecret_file = "{secret_file}"\n'
        "max_allocations_per_user = 3\nbandwidth_per_allocation = 0\n"
    )
    config = load_config(toml)
    assert config.turn.max_allocations_per_user == 3 and config.turn.bandwidth_per_allocation == 0
    with pytest.raises(ConfigError, match="relay_address"):
        load_config(None, turn_enabled=True, turn_secret_file=str(secret_file))  # host 0.0.0.0
    with pytest.raises(ConfigError, match="secret_file"):
        load_config(None, host="127.0.0.1", turn_enabled=True)
    short = tmp_path / "short"
    short.write_bytes(b"tiny")
    code = main(
        ["--host", "127.0.0.1", "--turn", "--turn-secret-file", str(short), "--check-config"]
    )
    assert code == 2 and "fewer than 16 bytes" in capsys.readouterr().err
    code = main(["--help"])
    out = capsys.readouterr().out
    for flag in (
        "--turn",
        "--turn-realm",
        "--turn-secret-file",
        "--turn-allow-loopback-peers",
        "turn-credentials",
    ):
        assert flag in out
