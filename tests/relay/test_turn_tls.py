"""TURN over TLS (``turns:``, RFC 8656 section 3.1) on its own port: aioice's TURN client
and coturn's ``turnutils_uclient -S`` allocate over TLS and relay to a plain UDP peer;
the relay serves it from ``turn.tls_port`` with its own certificate."""

from __future__ import annotations

import re
import shutil
import ssl
from functools import partial

import pytest
import trio
from turn_helpers import SECRET, aioice_exchange, credentials, echo_peer, running_turn

from darkswap_trio.testing._tls import SelfSignedCertificate
from relay import serve_relay
from relay._config import ConfigError, RelayConfig

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
UCLIENT = shutil.which("turnutils_uclient")


@pytest.fixture
def certificate(tmp_path) -> tuple[str, str]:
    return SelfSignedCertificate.generate().write(tmp_path)


def server_context(certificate: tuple[str, str]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return context


def client_context(certificate: tuple[str, str]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=certificate[0])  # names 127.0.0.1


async def test_aioice_allocates_over_tls(certificate) -> None:
    with trio.fail_after(20):
        async with (
            running_turn(ssl_context=server_context(certificate)) as (service, _),
            trio.open_nursery() as nursery,
        ):
            assert service.tls_port not in (None, service.port)
            peer = await nursery.start(echo_peer)
            username, password = credentials()
            payloads = [b"hello", b"y" * 1201, b"odd"]  # lengths that need padding
            relayed, got = await trio.to_thread.run_sync(
                partial(
                    aioice_exchange,
                    service.tls_port,
                    peer,
                    username,
                    password,
                    "tcp",
                    payloads,
                    ssl_context=client_context(certificate),
                )
            )
            assert relayed[0] == "127.0.0.1"
            assert got == [b"echo:" + p for p in payloads]
            assert service.core.counters["bytes_to_peer"] == sum(map(len, payloads))
            nursery.cancel_scope.cancel()


async def test_plain_tcp_on_the_tls_port_is_dropped(certificate) -> None:
    """A client speaking TURN in clear to the TLS port gets no answer and no allocation."""
    from darkswap_trio.proto.turn.codec import ALLOCATE, REQUEST, Attr, encode_message, uint32_attr

    with trio.fail_after(10):
        async with running_turn(ssl_context=server_context(certificate)) as (service, _):
            stream = await trio.open_tcp_stream("127.0.0.1", service.tls_port)
            async with stream:
                request = encode_message(
                    ALLOCATE, REQUEST, b"x" * 12, [uint32_attr(Attr.REQUESTED_TRANSPORT, 17 << 24)]
                )
                await stream.send_all(request)
                reply = b""
                # TLS waits for the rest of a "record"; the connect deadline closes it.
                with trio.move_on_after(1):
                    try:
                        reply = await stream.receive_some(4096)
                    except trio.BrokenResourceError:
                        pass
                assert not reply.startswith(b"\x01")  # no STUN answer in clear
            assert service.core.statistics().allocations == 0


@pytest.mark.skipif(UCLIENT is None, reason="turnutils_uclient not installed")
@pytest.mark.parametrize("channels", [True, False], ids=["channels", "send-indications"])
async def test_uclient_over_tls(certificate, channels: bool) -> None:
    assert UCLIENT is not None
    messages, length = 20, 101  # odd: ChannelData over TLS is padded to 4 bytes
    with trio.fail_after(30):
        async with (
            running_turn(ssl_context=server_context(certificate)) as (service, _),
            trio.open_nursery() as nursery,
        ):
            peer = await nursery.start(echo_peer, b"")
            username, password = credentials("uclient")
            command = [
                UCLIENT,
                "-t", "-S",
                *([] if channels else ["-s"]),
                "-u", username, "-w", password,
                "-p", str(service.tls_port),
                "-e", "127.0.0.1",
                "-r", str(peer[1]),
                "-n", str(messages),
                "-l", str(length),
                "-c",
                "-X",
                "127.0.0.1",
            ]  # fmt: skip
            result = await trio.run_process(
                command, capture_stdout=True, capture_stderr=True, check=False
            )
            output = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
            lost = re.search(r"Total lost packets (\d+)", output)
            assert lost is not None, output[-2000:]
            assert int(lost.group(1)) == 0, output[-2000:]
            assert service.core.counters["bytes_to_peer"] == messages * length
            nursery.cancel_scope.cancel()


def test_tls_port_needs_the_relay_certificate(tmp_path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 32)
    config = RelayConfig(host="127.0.0.1")
    config.turn.enabled, config.turn.secret_file, config.turn.tls_port = True, str(secret), 0
    with pytest.raises(ConfigError, match="tls_port needs tls_cert"):
        config.validate()
    config.turn.tls_port = 70000
    with pytest.raises(ConfigError, match="tls_port must be"):
        config.validate()


async def test_relay_serves_turn_over_tls(certificate, tmp_path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    config = RelayConfig(host="127.0.0.1", port=0, stun_port=0, metrics_port=None)
    config.tls_cert, config.tls_key = certificate
    config.turn.enabled, config.turn.secret_file, config.turn.tls_port = True, str(secret), 0
    config.turn.allow_loopback_peers = True
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_relay, config)
            assert server.turn_tls_port not in (None, server.stun_port)
            peer = await nursery.start(echo_peer)
            username, password = credentials()
            _, got = await trio.to_thread.run_sync(
                partial(
                    aioice_exchange,
                    server.turn_tls_port,
                    peer,
                    username,
                    password,
                    "tcp",
                    [b"ping"],
                    ssl_context=client_context(certificate),
                )
            )
            assert got == [b"echo:ping"]
            nursery.cancel_scope.cancel()


def test_tls_port_flag_and_toml(certificate, tmp_path, capsys) -> None:
    from relay.__main__ import _config_from_args, build_parser, main
    from relay._config import load_config

    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    cert, key = certificate
    args = build_parser().parse_args(
        ["--host", "127.0.0.1", "--turn", "--turn-secret-file", str(secret),
         "--tls-cert", cert, "--tls-key", key, "--turn-tls-port", "5349"]
    )  # fmt: skip
    assert _config_from_args(args).turn.tls_port == 5349
    toml = tmp_path / "relay.toml"
    toml.write_text(
        f'host = "127.0.0.1"\ntls_cert = "{cert}"\ntls_key = "{key}"\n[turn]\nenabled = true\n'
        f'secret_file = "{secret}"\ntls_port = 0\ncredentials_ttl = 600\n'
    )
    config = load_config(toml)
    assert config.turn.tls_port == 0 and config.turn.credentials_ttl == 600
    toml.write_text(f'host = "127.0.0.1"\n[turn]\nenabled = true\nsecret_file = "{secret}"\n'
                    'tls_port = "x"\n')  # fmt: skip
    with pytest.raises(ConfigError, match="tls_port"):
        load_config(toml)
    assert main(["--help"]) == 0
    assert "--turn-tls-port" in capsys.readouterr().out
