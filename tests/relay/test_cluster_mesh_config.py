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
