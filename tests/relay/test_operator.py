"""An operator's first day, in process: --version, --check-config, peer-id, --announce,
the example relay.toml, the metrics listener's address and exposition, reload rules."""

import dataclasses
import io
import json
import logging
import re
from pathlib import Path

import pytest
import trio
from relayclient import connect, make_config

from darkswap_trio import Keypair, __version__, parse_relay_address
from relay import RelayConfig, serve_relay
from relay.__main__ import main
from relay._config import (
    LIVE_LIMITS,
    AuthConfig,
    ConfigError,
    LimitsConfig,
    MeshConfig,
    TurnConfig,
    announce_multiaddr,
    config_changes,
    load_config,
)
from relay._logging import configure_logging
from relay._metrics import RelayMetrics
from relay.cluster import ClusterConfig

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "relay.toml"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_version(capsys) -> None:
    code, out, _ = run(capsys, "--version")
    assert (code, out.strip()) == (0, f"darkswap-relay {__version__}")


def test_check_config_prints_effective_settings(capsys, tmp_path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text('port = 9100\n[limits]\nmax_sessions = 77\n[auth]\nmode = "open"\n')
    key = Keypair.generate()
    key_file = tmp_path / "relay.key"
    key_file.write_bytes(key.to_protobuf())
    code, out, err = run(
        capsys, "--config", str(config), "--metrics-port", "9191", "--key-file", str(key_file),
        "--metrics-host", "127.0.0.5", "--announce", "relay.example:443", "--check-config",
    )  # fmt: skip
    assert (code, err) == (0, "")
    effective = json.loads(out)
    assert effective["port"] == 9100  # from the file
    assert effective["metrics_port"] == 9191  # the flag wins
    assert effective["limits.max_sessions"] == 77
    assert effective["limits.max_circuits"] == LimitsConfig().max_circuits  # default
    assert effective["metrics_host"] == "127.0.0.5"
    assert effective["announce"] == "relay.example:443"
    assert effective["peer_id"] == str(key.peer_id)


def test_check_config_does_not_create_a_missing_key_file(capsys, tmp_path) -> None:
    key_file = tmp_path / "relay.key"
    code, out, _ = run(capsys, "--key-file", str(key_file), "--check-config")
    assert code == 0 and "peer_id" not in json.loads(out)
    assert json.loads(out)["metrics_host"] == "127.0.0.1"  # the default: loopback
    assert not key_file.exists()


def test_check_config_hides_an_inline_jwt_key(capsys, tmp_path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text(
        '[auth]\nmode = "jwt"\njwt_algorithm = "HS256"\njwt_key = "s3cret-s3cret-s3cret-s3cret-s3cret"\n'
    )
    code, out, _ = run(capsys, "--config", str(config), "--check-config")
    assert code == 0 and "s3cret" not in out
    assert json.loads(out)["auth.jwt_key"] == "<set>"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--auth", "jwt"], "auth.jwt_key"),
        (["--announce", "/ip4/203.0.113.9/tcp/443/quic"], "announce"),
        (["--config", "/nonexistent/relay.toml"], "/nonexistent/relay.toml"),
    ],
)
def test_check_config_bad_configuration_is_one_line_exit_2(capsys, argv, needle) -> None:
    code, out, err = run(capsys, *argv, "--check-config")
    assert (code, out) == (2, "")
    assert len(err.strip().splitlines()) == 1 and needle in err, err


def test_bad_jwt_key_file_is_one_line(capsys, tmp_path) -> None:
    bad = tmp_path / "jwt_public.pem"
    bad.write_text("not a key\n")
    code, _, err = run(capsys, "--auth", "jwt", "--jwt-key-file", str(bad), "--check-config")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "JWT key" in err and "Traceback" not in err


def test_peer_id_of_a_key_file(capsys, tmp_path) -> None:
    key = Keypair.generate()
    path = tmp_path / "relay.key"
    path.write_bytes(key.to_protobuf())
    assert run(capsys, "peer-id", "--key-file", str(path)) == (0, f"{key.peer_id}\n", "")
    missing = tmp_path / "missing.key"
    code, out, err = run(capsys, "peer-id", "--key-file", str(missing))
    assert (code, out) == (2, "") and str(missing) in err and not missing.exists()
    path.write_bytes(b"\x08\x01\x12\x03abc")
    code, _, err = run(capsys, "peer-id", "--key-file", str(path))
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_announce_forms() -> None:
    peer = str(Keypair.generate().peer_id)
    cases = {
        "/dns4/relay.example/tcp/443/wss": f"/dns4/relay.example/tcp/443/wss/p2p/{peer}",
        f"/ip4/203.0.113.7/tcp/9002/ws/p2p/{peer}": f"/ip4/203.0.113.7/tcp/9002/ws/p2p/{peer}",
        "relay.example:443": f"/dns/relay.example/tcp/443/ws/p2p/{peer}",
        "203.0.113.7": f"/ip4/203.0.113.7/tcp/9002/ws/p2p/{peer}",  # the bound port
        "[2001:db8::1]:8443": f"/ip6/2001:db8::1/tcp/8443/ws/p2p/{peer}",
    }
    for announce, expected in cases.items():
        result = announce_multiaddr(announce, peer, 9002, False)
        assert result == expected, announce
        assert str(parse_relay_address(result).peer_id) == peer  # what the SDK dials
    assert announce_multiaddr("relay.example", peer, 443, True).endswith(f"/443/tls/ws/p2p/{peer}")
    other = str(Keypair.generate().peer_id)
    for bad in (f"/dns4/r.example/tcp/443/wss/p2p/{other}", "/dns4/r.example/udp/3478", "h:x"):
        with pytest.raises(ConfigError, match="announce"):
            announce_multiaddr(bad, peer, 9002, False)


def _example_lines() -> dict[str, str]:
    """key -> its line in deploy/relay.toml, set or commented out, by section."""
    lines: dict[str, str] = {}
    section = ""
    for line in EXAMPLE.read_text().splitlines():
        if match := re.match(r"^\[(\w+)\]", line):
            section = match.group(1) + "."
        elif match := re.match(r"^#?\s*(\w+) = ", line):
            lines[section + match.group(1)] = line
    return lines


def test_example_relay_toml_lists_every_key_with_its_default() -> None:
    # Loading it gives exactly the defaults...
    assert load_config(EXAMPLE) == RelayConfig()
    # ...and every setting appears, set (to its default) or commented out (unset).
    lines = _example_lines()
    sections = {
        "": RelayConfig(),
        "auth.": AuthConfig(),
        "limits.": LimitsConfig(),
        "turn.": TurnConfig(),
        "cluster.": ClusterConfig(),
        "mesh.": MeshConfig(),
    }
    missing = []
    for prefix, defaults in sections.items():
        for field in dataclasses.fields(defaults):
            value = getattr(defaults, field.name)
            if dataclasses.is_dataclass(value):
                continue
            line = lines.get(prefix + field.name)
            if line is None or (value is None) != line.startswith("#"):
                missing.append(prefix + field.name)
    assert not missing, f"add to deploy/relay.toml with its default: {missing}"
    unknown = set(lines) - {
        prefix + f.name for prefix, d in sections.items() for f in dataclasses.fields(d)
    }
    assert not unknown, unknown


def test_example_relay_toml_marks_exactly_the_live_limits() -> None:
    lines = _example_lines()
    marked = {
        k.split(".", 1)[1]
        for k, line in lines.items()
        if k.startswith("limits.") and "[live]" in line
    }
    assert marked == LIVE_LIMITS


def test_toml_false_disables_stun_and_metrics(tmp_path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text("stun_port = false\nmetrics_port = false\n")
    config = load_config(path)
    assert (config.stun_port, config.metrics_port) == (None, None)


def test_config_changes_split_live_from_restart() -> None:
    old = RelayConfig()
    new = RelayConfig(port=9003)
    new.limits.max_circuits = 5
    new.limits.max_frame_size = 512 * 1024
    new.auth.jwt_audience = "darkswap"
    applied, ignored = config_changes(old, new)
    assert applied == ["auth.jwt_audience", "limits.max_circuits"]
    assert ignored == ["port", "limits.max_frame_size"]


async def _http(host: str, port: int, accept: str | None = None) -> tuple[bytes, bytes]:
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        extra = f"Accept: {accept}\r\n" if accept else ""
        await stream.send_all(f"GET /metrics HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


async def _refused(host: str, port: int) -> bool:
    try:
        stream = await trio.open_tcp_stream(host, port)
    except OSError:
        return True
    await stream.aclose()
    return False


@pytest.mark.parametrize("metrics_host", [None, "127.0.0.3"])
async def test_metrics_listen_on_loopback_unless_configured(metrics_host) -> None:
    # Signaling on 127.0.0.2; metrics on 127.0.0.1 by default, else where configured.
    config = RelayConfig(host="127.0.0.2", port=0, stun_port=None, metrics_port=0)
    config.auth.mode = "open"
    if metrics_host is not None:
        config.metrics_host = metrics_host
    expected = metrics_host or "127.0.0.1"
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_relay, config)
            head, body = await _http(expected, server.metrics_port)
            assert head.startswith(b"HTTP/1.1 200") and b"darkswap_relay_build_info" in body
            assert await _refused("127.0.0.2", server.metrics_port)
            nursery.cancel_scope.cancel()


def test_metrics_names_histograms_build_info_no_created() -> None:
    metrics = RelayMetrics(version="9.9.9")
    metrics.add_relayed_bytes(1234)
    metrics.registration_seconds.observe(0.004)
    metrics.circuit_open_seconds.observe(42.0)
    body, content_type = metrics.render()
    text = body.decode()
    assert content_type.startswith("text/plain; version=0.0.4")
    assert "darkswap_relay_relayed_bytes_total 1234.0" in text
    assert "bytes_relayed" not in text
    assert 'darkswap_relay_registration_duration_seconds_bucket{le="0.005"} 1.0' in text
    assert 'darkswap_relay_circuit_open_duration_seconds_bucket{le="60.0"} 1.0' in text
    assert 'darkswap_relay_build_info{version="9.9.9"} 1.0' in text
    assert "process_cpu_seconds_total" in text and "process_open_fds" in text
    assert "_created" not in text
    # Every darkswap counter ends in _total (Prometheus naming).
    for match in re.finditer(r"^# TYPE (darkswap_relay_\w+) counter$", text, re.M):
        assert match.group(1).endswith("_total"), match.group(1)


async def test_openmetrics_when_the_scraper_asks() -> None:
    config = RelayConfig(host="127.0.0.1", port=0, stun_port=None, metrics_port=0)
    config.auth.mode = "open"
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_relay, config)
            accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
            head, body = await _http("127.0.0.1", server.metrics_port, accept)
            assert b"Content-Type: application/openmetrics-text; version=1.0.0" in head
            assert body.endswith(b"# EOF\n") and b"_created" not in body
            head, body = await _http("127.0.0.1", server.metrics_port)
            assert b"Content-Type: text/plain; version=0.0.4" in head
            assert b"# EOF" not in body
            nursery.cancel_scope.cancel()


@pytest.fixture
def captured_log():
    """The relay's own handler (with its session fields), writing JSON into a buffer."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out = io.StringIO()
    configure_logging("json", "INFO", stream=out)
    yield lambda: [json.loads(line) for line in out.getvalue().splitlines()]
    root.handlers[:] = handlers
    root.setLevel(level)


async def test_limit_hit_is_logged_with_the_session_address(captured_log) -> None:
    config = make_config(max_frame_size=70_000)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_relay, config)
            async with connect(server) as client:
                await client.send_raw("x" * 100_000)
                await client.expect_error("frame_too_large")
            nursery.cancel_scope.cancel()
    [hit] = [r for r in captured_log() if r["msg"] == "limit hit: frame_size"]
    assert hit["logger"] == "relay.limits" and hit["level"] == "INFO"
    assert hit["limit"] == "frame_size" and hit["remote"].startswith("127.0.0.1:")
    [closed] = [r for r in captured_log() if r["msg"] == "session closed"]
    assert closed["remote"] == hit["remote"] and closed["peer_id"] is None


def test_limit_hit_lines_are_throttled_per_limit(captured_log) -> None:
    now = [100.0]
    metrics = RelayMetrics(clock=lambda: now[0])
    for _ in range(5):
        metrics.limit_hit("messages_per_peer")
    metrics.limit_hit("frame_size")
    now[0] += 1.0
    metrics.limit_hit("messages_per_peer")
    lines = [(r["limit"], r["suppressed"]) for r in captured_log()]
    assert lines == [("messages_per_peer", 0), ("frame_size", 0), ("messages_per_peer", 4)]
    assert metrics.value("darkswap_relay_limit_hits_total", {"limit": "messages_per_peer"}) == 6
