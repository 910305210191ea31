"""The cluster's command line: flags in --help, in --check-config, and refused values."""

from __future__ import annotations

import json

import pytest

from relay.__main__ import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_the_cluster_flags(capsys) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for flag in ("--cluster-redis URL", "--node-id ID", "--advertise HOST:PORT", "Relay cluster"):
        assert flag in out, flag


def test_check_config_shows_the_cluster_settings(capsys, tmp_path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text('[cluster]\nliveness_ttl = 3.0\nnode_id = "from-file"\n')
    code, out, err = run(
        capsys, "--config", str(path), "--check-config",
        "--cluster-redis", "redis://127.0.0.1:6379/2", "--node-id", "relay-1",
        "--advertise", "10.0.0.11:9002",
    )  # fmt: skip
    assert code == 0, err
    effective = json.loads(out)
    assert effective["cluster.redis_url"] == "redis://127.0.0.1:6379/2"
    assert effective["cluster.node_id"] == "relay-1"  # the flag wins over the file
    assert effective["cluster.advertise"] == "10.0.0.11:9002"
    assert effective["cluster.liveness_ttl"] == 3.0
    code, out, _ = run(capsys, "--check-config")
    assert json.loads(out)["cluster.redis_url"] is None  # a single relay by default


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--cluster-redis", "http://x"], "cluster.redis_url"),
        (["--node-id", "a|b"], "cluster.node_id"),
        (["--advertise", "10.0.0.1"], "cluster.advertise"),
    ],
)
def test_bad_cluster_flags_exit_2(capsys, argv: list[str], message: str) -> None:
    code, _, err = run(capsys, *argv, "--check-config")
    assert code == 2
    assert message in err


def test_check_config_hides_the_redis_password(capsys) -> None:
    url = "redis://relay:pa55word@10.0.0.5:6379/0"
    code, out, err = run(capsys, "--check-config", "--cluster-redis", url)
    assert code == 0, err
    assert json.loads(out)["cluster.redis_url"] == "redis://relay:<set>@10.0.0.5:6379/0"
    assert "pa55word" not in out
