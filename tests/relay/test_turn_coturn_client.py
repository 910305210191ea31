"""coturn's ``turnutils_uclient`` (an independent C implementation) against our TURN
server over real loopback sockets: UDP and TCP to the server, ChannelData and Send
indications, credentials given or derived by uclient itself from the REST API secret.

Install the tool with ``scripts/install-coturn.sh``; the test skips without it.
"""

from __future__ import annotations

import re
import shutil

import pytest
import trio
from turn_helpers import SECRET, credentials, echo_peer, running_turn

UCLIENT = shutil.which("turnutils_uclient")
pytestmark = pytest.mark.skipif(UCLIENT is None, reason="turnutils_uclient not installed")
MESSAGES = 20
LENGTH = 100


@pytest.mark.parametrize(
    "flags",
    [
        pytest.param([], id="udp-channels"),
        pytest.param(["-t"], id="tcp-channels"),
        pytest.param(["-s"], id="udp-send-indications"),
        pytest.param(["-W"], id="udp-rest-secret"),
    ],
)
async def test_uclient_relays_through_our_server(flags: list[str]) -> None:
    assert UCLIENT is not None
    with trio.fail_after(30):
        # rfc5766_channels: uclient picks channel numbers up to 0x7FFF (RFC 5766).
        async with running_turn() as (service, _), trio.open_nursery() as nursery:
            peer = await nursery.start(echo_peer, b"")
            if flags == ["-W"]:
                auth = ["-W", SECRET.decode(), "-u", "uclient"]  # uclient builds the username
            else:
                username, password = credentials("uclient")
                auth = ["-u", username, "-w", password, *flags]
            command = [
                UCLIENT,
                *auth,
                "-p", str(service.port),
                "-e", "127.0.0.1",
                "-r", str(peer[1]),
                "-n", str(MESSAGES),
                "-l", str(LENGTH),
                "-c",  # no RTCP allocation
                "-X",  # IPv4 relayed address
                "127.0.0.1",
            ]  # fmt: skip
            result = await trio.run_process(
                command, capture_stdout=True, capture_stderr=True, check=False
            )
            output = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
            lost = re.search(r"Total lost packets (\d+)", output)
            assert lost is not None, output[-2000:]
            assert int(lost.group(1)) == 0, output[-2000:]
            counters = service.core.counters
            assert counters["bytes_to_peer"] == MESSAGES * LENGTH
            assert counters["bytes_to_client"] == MESSAGES * LENGTH
            nursery.cancel_scope.cancel()
