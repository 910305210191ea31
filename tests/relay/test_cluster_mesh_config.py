"""[mesh] configuration: TOML, flags, and files checked before serving (exit 2)."""

from __future__ import annotations

import pytest

from relay import ConfigError, load_config
from relay.__main__ import main


def test_mesh_section_from_toml(tmp_path):
    path = tmp_path / "relay.toml"
    path.write_text('[mesh]\nsecret_file = "s"\nlink_timeout = 6\nmax_pending_opens = 8\n')
    config = load_config(path)
    assert (config.mesh.secret_file, config.mesh.link_timeout) == ("s", 6.0)
    assert config.mesh.max_pending_opens == 8
    path.write_text("[mesh]\nlink_timeout = 0\n")
    with pytest.raises(ConfigError, match="mesh.link_timeout"):
        load_config(path)


def test_unreadable_mesh_files_exit_2(tmp_path, capsys):
    bad = tmp_path / "directory.json"
    bad.write_text('{"nodes": [{"node_id": "a"}]}')
    for flag, value in (
        ("--mesh-secret-file", str(tmp_path / "missing")),
        ("--mesh-static-directory", str(bad)),
    ):
        assert main(["--check-config", "--port", "0", flag, value]) == 2
        assert "mesh:" in capsys.readouterr().err


def test_mesh_tls_from_toml_and_flag(tmp_path, capsys):
    path = tmp_path / "relay.toml"
    path.write_text("[mesh]\ntls = true\n")
    assert load_config(path).mesh.tls is True
    assert load_config(None).mesh.tls is False  # plain unless asked
    path.write_text('[mesh]\ntls = "yes"\n')
    with pytest.raises(ConfigError, match="tls"):
        load_config(path)
    # The TLS mesh listener is the --advertise port: never the signaling port.
    argv = ["--check-config", "--port", "9002", "--mesh-tls", "--cluster-redis", "redis://x:1"]
    assert main([*argv, "--advertise", "10.0.0.1:9002"]) == 2
    assert "mesh.tls" in capsys.readouterr().err
    assert main([*argv, "--advertise", "10.0.0.1:9003"]) == 0
