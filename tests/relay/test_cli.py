"""The darkswap-relay command line: help, token/keygen, configuration errors (in process)."""

import os
import stat
import time

import pytest

from relay.__main__ import _config_from_args, build_parser, main
from relay._auth import JwtValidator
from relay._config import AuthConfig, ConfigError

PEER = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"

SERVE_OPTIONS = [
    "--config", "--host", "--port", "--stun-port", "--metrics-port", "--key-file", "--tls-cert",
    "--tls-key", "--auth", "--jwt-algorithm", "--jwt-key-file", "--jwt-audience", "--jwt-issuer",
    "--shutdown-grace", "--log-format", "--log-level",
]  # fmt: skip


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_every_option_with_text(capsys) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for option in SERVE_OPTIONS + ["token", "keygen"]:
        assert option in out, option
    # Every option has help text (argparse's own -h aside).
    for action in build_parser()._actions:
        assert action.help, action.option_strings

    code, out, _ = run(capsys, "token", "--help")
    assert code == 0
    for option in ["--peer-id", "--key-file", "--algorithm", "--ttl", "--audience", "--issuer"]:
        assert option in out, option
    code, out, _ = run(capsys, "keygen", "--help")
    assert code == 0
    for option in ["--jwt-algorithm", "--out", "--force"]:
        assert option in out, option


@pytest.mark.parametrize("algorithm", ["EdDSA", "ES256", "HS256"])
def test_keygen_then_token_validates(capsys, tmp_path, algorithm) -> None:
    code, out, _ = run(capsys, "keygen", "--jwt-algorithm", algorithm, "--out", str(tmp_path))
    assert code == 0
    paths = out.split()
    assert all(os.path.exists(p) for p in paths)
    private = paths[0]
    public = paths[1] if algorithm != "HS256" else paths[0]
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600

    code, out, err = run(
        capsys,
        "token", "--peer-id", PEER, "--key-file", private, "--algorithm", algorithm,
        "--ttl", "120", "--audience", "relay", "--issuer", "me",
    )  # fmt: skip
    assert code == 0, err
    token = out.strip()
    auth = AuthConfig(mode="jwt", jwt_algorithm=algorithm, jwt_audience="relay", jwt_issuer="me")
    with open(public) as f:
        validator = JwtValidator(auth, f.read())
    now = time.time()
    exp = validator.validate(token, PEER, now)
    assert now + 100 < exp <= now + 121


def test_keygen_refuses_to_overwrite(capsys, tmp_path) -> None:
    assert run(capsys, "keygen", "--out", str(tmp_path))[0] == 0
    first = (tmp_path / "jwt_private.pem").read_text()
    code, _, err = run(capsys, "keygen", "--out", str(tmp_path))
    assert code == 2 and "exists" in err
    assert (tmp_path / "jwt_private.pem").read_text() == first
    assert run(capsys, "keygen", "--out", str(tmp_path), "--force")[0] == 0
    assert (tmp_path / "jwt_private.pem").read_text() != first


def test_token_errors(capsys, tmp_path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("x" * 40)
    code, _, err = run(capsys, "token", "--peer-id", "not-a-peer-id", "--key-file", str(secret),
                       "--algorithm", "HS256")  # fmt: skip
    assert code == 2 and err
    code, _, err = run(capsys, "token", "--peer-id", PEER, "--key-file", str(tmp_path / "nope"))
    assert code == 2 and err
    code, _, err = run(capsys, "token", "--peer-id", PEER, "--key-file", str(secret))  # EdDSA
    assert code == 2 and "EdDSA" in err


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--config", "/nonexistent/relay.toml"], "cannot read config"),
        (["--config", "{broken}"], "cannot read config"),  # replaced by a bad TOML file below
        (["--config", "{unknown}"], "unknown setting"),
        (["--config", "{badport}"], "port must be"),
        (["--config", "{badtype}"], "wrong type"),
        (["--tls-cert", "cert.pem"], "tls_cert and tls_key"),
        (["--tls-cert", "/nonexistent/c.pem", "--tls-key", "/nonexistent/k.pem"], "tls_cert"),
        (["--tls-cert", "{garbage}", "--tls-key", "{garbage}"], "cannot load tls_cert"),
        (["--auth", "jwt"], "jwt_key"),
        (["--auth", "jwt", "--jwt-key-file", "/nonexistent/key.pem"], "jwt_key_file"),
        (["--auth", "jwt", "--jwt-key-file", "{garbage}"], "EdDSA"),
        (["--log-level", "CHATTY"], "log_level"),
    ],
)
def test_bad_configuration_exits_2_with_a_message(capsys, tmp_path, argv, message) -> None:
    files = {
        "{broken}": write(tmp_path, "broken.toml", "port = [unclosed"),
        "{unknown}": write(tmp_path, "unknown.toml", "colour = 'blue'\n"),
        "{badport}": write(tmp_path, "badport.toml", "port = 70000\n"),
        "{badtype}": write(tmp_path, "badtype.toml", "[limits]\nmax_sessions = 'many'\n"),
        "{garbage}": write(tmp_path, "garbage.pem", "not a key\n"),
    }
    argv = [files.get(a, a) for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""  # nothing on stdout: no READY line
    assert message in err


@pytest.mark.parametrize(
    "argv",
    [
        ["--port", "70000"],
        ["--port", "none"],
        ["--stun-port", "x"],
        ["--auth", "magic"],
        ["--shutdown-grace", "-1"],
        ["--shutdown-grace", "nan"],
    ],
)
def test_bad_flags_exit_2(capsys, argv) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == "" and "usage" in err


def test_flags_override_config_file_and_disable_services(tmp_path) -> None:
    config_path = write(
        tmp_path,
        "relay.toml",
        'host = "127.0.0.1"\nport = 1234\nstun_port = 3479\n[auth]\nmode = "open"\n'
        "[limits]\nmax_sessions = 7\n",
    )
    args = build_parser().parse_args(
        ["--config", config_path, "--port", "0", "--stun-port", "none", "--metrics-port", "-1"]
    )
    config = _config_from_args(args)
    assert (config.host, config.port, config.stun_port, config.metrics_port) == (
        "127.0.0.1",
        0,
        None,
        None,
    )
    assert config.auth.mode == "open" and config.limits.max_sessions == 7

    args = build_parser().parse_args(["--stun-port", "0", "--auth", "signature"])
    config = _config_from_args(args)
    assert config.stun_port == 0 and config.metrics_port == 9090
    assert config.auth.mode == "signature"


def test_jwt_flags_reach_auth_config(tmp_path, capsys) -> None:
    assert run(capsys, "keygen", "--jwt-algorithm", "ES256", "--out", str(tmp_path))[0] == 0
    args = build_parser().parse_args(
        [
            "--auth", "jwt", "--jwt-algorithm", "ES256",
            "--jwt-key-file", str(tmp_path / "jwt_public.pem"),
            "--jwt-audience", "aud", "--jwt-issuer", "iss",
        ]
    )  # fmt: skip
    config = _config_from_args(args)
    assert config.auth.mode == "jwt" and config.auth.jwt_algorithm == "ES256"
    assert (config.auth.jwt_audience, config.auth.jwt_issuer) == ("aud", "iss")
    # An EdDSA key with ES256 configured is refused up front.
    assert run(capsys, "keygen", "--out", str(tmp_path / "ed"))[0] == 0
    args.jwt_key_file = str(tmp_path / "ed" / "jwt_public.pem")
    with pytest.raises(ConfigError):
        _config_from_args(args)


def test_valid_tls_pair_passes_the_preflight(tmp_path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from darkswap_trio.testing._tls import SelfSignedCertificate

    cert_path, key_path = SelfSignedCertificate.generate().write(tmp_path)
    args = build_parser().parse_args(["--tls-cert", cert_path, "--tls-key", key_path])
    config = _config_from_args(args)
    assert (config.tls_cert, config.tls_key) == (cert_path, key_path)
    # A key that does not match the certificate is refused up front.
    other = write(
        tmp_path,
        "other.pem",
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode(),
    )
    args = build_parser().parse_args(["--tls-cert", cert_path, "--tls-key", other])
    with pytest.raises(ConfigError):
        _config_from_args(args)


def test_standalone_relay_collects_young_objects_less_often(tmp_path, monkeypatch) -> None:
    # Set in the relay's own process just before trio.run (registration storms), and
    # not by serve_relay: the library never changes its caller's collector.
    import gc

    import relay.__main__ as entry

    seen: list[tuple[int, ...]] = []

    def fake_run(*_args: object) -> int:
        seen.append(gc.get_threshold())
        return 0

    before = gc.get_threshold()
    monkeypatch.setattr(entry.trio, "run", fake_run)
    try:
        argv = ["--port", "0", "--stun-port", "none", "--metrics-port", "none"]
        assert entry.main([*argv, "--key-file", str(tmp_path / "k")]) == 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    assert seen and seen[0][0] == entry.RELAY_GC_THRESHOLD
