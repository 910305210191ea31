"""Every program in examples/ runs as a subprocess against a relay process the test
starts (127.0.0.1, loopback host candidates), bounded in time, and says what it should."""

from __future__ import annotations

import re

from example_processes import EXAMPLES, read_until, run, start, start_relay, stop


def test_chat_through_relay_between_two_processes(relay_process):
    bob = start([str(EXAMPLES / "chat_through_relay.py"), relay_process.multiaddr])
    try:
        bob_id = read_until(bob, "bob is", 30).split()[-1]
        out = run(
            [
                str(EXAMPLES / "chat_through_relay.py"),
                relay_process.multiaddr,
                bob_id,
                "hi",
                "there",
            ]
        )
        assert "alice got 'bob got: hi' via relay" in out
        assert "alice got 'bob got: there' via relay" in out
        assert "bob received 'there' via relay" in read_until(bob, "'there'", 10)
    finally:
        stop(bob)


def test_direct_upgrade_is_visible(relay_process):
    out = run([str(EXAMPLES / "direct_upgrade.py"), relay_process.multiaddr])
    assert "link opened via relay" in out
    assert "ConnectionUpgraded after" in out
    assert re.search(r"now direct: \d+ messages, \d+ bytes by relay, \d+ direct", out)
    assert "bob received 'on the direct path' via direct" in out


def test_echo_server_answers_darkswap_peer_ping(relay_process):
    server = start([str(EXAMPLES / "echo_server.py"), relay_process.multiaddr, "60"])
    try:
        peer_id = read_until(server, "echo server", 30).split()[-1]
        out = run(
            [
                "-m",
                "darkswap_trio._peer_cli",
                "ping",
                peer_id,
                "--relay",
                relay_process.multiaddr,
                "--count",
                "3",
                "--interval",
                "0.05",
            ]
        )
        assert out.count("seq=") == 3 and "summary    3 echoes" in out
        assert "link from" in read_until(server, "link from", 10)
    finally:
        stop(server)


def test_config_from_toml(relay_process, tmp_path):
    out = run([str(EXAMPLES / "config_from_toml.py"), relay_process.multiaddr], cwd=tmp_path)
    assert "loaded peer.toml: key_file=peer.key enable_direct=False connection_timeout=5.0" in out
    assert "a typo is refused:" in out and "max_conections" in out
    assert "connected to the relay: CONNECTED" in out
    assert (tmp_path / "peer.key").exists()


def test_jwt_auth_with_a_token_provider(tmp_path):
    run(["-m", "relay", "keygen", "--jwt-algorithm", "EdDSA", "--out", str(tmp_path)])
    relay = start_relay(
        "--auth",
        "jwt",
        "--jwt-algorithm",
        "EdDSA",
        "--jwt-key-file",
        str(tmp_path / "jwt_public.pem"),
    )
    try:
        out = run(
            [str(EXAMPLES / "jwt_auth.py"), relay.multiaddr, str(tmp_path / "jwt_private.pem")]
        )
    finally:
        stop(relay.process)
    assert "issuing a token for 12D3KooW" in out
    assert "authenticated with a JWT: CONNECTED" in out
    assert "without a token: NoRelayAvailable" in out and "token" in out.split("without a token")[1]


def test_data_channel_between_two_processes_both_sides():
    answerer = start([str(EXAMPLES / "data_channel.py"), "answer", "127.0.0.1", "0"])
    try:
        port = read_until(answerer, "answerer listening on", 30).split()[-1]
        out = run([str(EXAMPLES / "data_channel.py"), "offer", "127.0.0.1", port])
        assert "offerer received 'echo: hello from the offerer'" in out
        assert "answerer received 'hello from the offerer' on channel 'chat'" in read_until(
            answerer, "answerer received", 10
        )
        assert answerer.wait(timeout=15) == 0
    finally:
        stop(answerer)
