"""Headless Chromium with ``iceTransportPolicy: "relay"`` opens a data channel with aiortc
(also relay-only) through OUR TURN server, data both ways.

As in test_browser_chromium.py, everything runs in a fresh network namespace with only
``lo`` (the same fixture), so Chromium can reach nothing but loopback: the relay (TURN on
127.0.0.1, ``allow_loopback_peers``), the page server, Chromium and aiortc (a subprocess,
tests/interop/aiortc_turn_answerer.py, so that it lives in the namespace too) are all
started from the test's thread. The credentials come from the relay's signaling
(RelaySession.turn_credentials). Chromium gets one ``iceServers`` entry, our TURN URI;
the test checks that it gathered only relay candidates on 127.0.0.1, that the selected
pair is relay/relay on 127.0.0.1 on both ends, and that the server relayed the traffic;
over UDP, TCP and TLS to the server. Chromium takes loopback TURN URIs as they are (with
``--allow-loopback-in-peer-connection``, as the other browser tests run it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from chromium_page import Page
from chromium_page import chromium_page as open_chromium_page
from test_browser_chromium import (  # noqa: F401 (the fixture is used by name)
    CHROMIUM_FLAGS,
    find_chromium,
    loopback_only_namespace,
)
from turn_relay import ice_server, relay_with_turn

LOOPBACK = "127.0.0.1"
TIME_LIMIT = 60
ANSWERER = Path(__file__).with_name("aiortc_turn_answerer.py")
# Chromium verifies a turns: server's certificate: without this flag (the test's
# self-signed one, inside the namespace only) it gathers no relay candidate at all.
TLS_FLAGS = ("--ignore-certificate-errors",)

PAGE = r"""<!doctype html>
<meta charset="utf-8">
<title>darkswap-trio TURN interop</title>
<script>
"use strict";
const ws = new WebSocket(`ws://${location.host}/signal`);
let pc = null;
function report(message) { ws.send(JSON.stringify(message)); }
window.onerror = (message, source, line) => report({type: "error", message: `${message} @${line}`});
const toHex = (buffer) =>
  Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");

const commands = {
  async start(m) {
    // Media permission lets Chromium enumerate interfaces (see test_browser_chromium).
    const stream = await navigator.mediaDevices.getUserMedia({audio: true});
    for (const track of stream.getTracks()) track.stop();
    pc = new RTCPeerConnection({iceServers: [m.server], iceTransportPolicy: "relay"});
    pc.onicecandidate = ({candidate}) => {
      if (candidate && candidate.candidate) report({type: "gathered", candidate: candidate.candidate});
    };
    pc.onicecandidateerror = (e) => report({type: "candidate-error", url: e.url,
      code: e.errorCode, text: e.errorText, address: e.address, port: e.port});
    const channel = pc.createDataChannel("turn");
    channel.binaryType = "arraybuffer";
    channel.onopen = () => {
      report({type: "open"});
      channel.send("hello from chromium");
      channel.send(new Uint8Array([1, 2, 3]).buffer);
    };
    channel.onmessage = ({data}) => report({type: "message",
      data: typeof data === "string" ? data : "bytes:" + toHex(data)});
    const gathered = new Promise((resolve) => {
      pc.addEventListener("icegatheringstatechange", () => {
        if (pc.iceGatheringState === "complete") resolve();
      });
    });
    await pc.setLocalDescription(await pc.createOffer());
    await gathered;  // no trickle: the offer carries every candidate
    report({type: "offer", sdp: pc.localDescription.sdp});
  },
  async answer(m) { await pc.setRemoteDescription({type: "answer", sdp: m.sdp}); },
  async stats() {
    const stats = await pc.getStats();
    for (const transport of stats.values()) {
      if (transport.type !== "transport" || !transport.selectedCandidatePairId) continue;
      const pair = stats.get(transport.selectedCandidatePairId);
      const local = stats.get(pair.localCandidateId), remote = stats.get(pair.remoteCandidateId);
      return report({type: "stats", local: local.address, localType: local.candidateType,
        relayProtocol: local.relayProtocol, url: local.url,
        remote: remote.address, remoteType: remote.candidateType});
    }
    report({type: "stats", local: null});
  },
};
let queue = Promise.resolve();
ws.onmessage = ({data}) => {
  const m = JSON.parse(data);
  queue = queue.then(() => commands[m.type](m))
    .catch((e) => report({type: "error", message: `${m.type}: ${e}`}));
};
ws.onopen = () => report({type: "hello", agent: navigator.userAgent});
</script>
"""


def chromium_page(*extra_flags: str) -> AbstractAsyncContextManager[Page]:
    """This file's PAGE in Chromium (see chromium_page.chromium_page)."""
    return open_chromium_page(PAGE, "turn", TIME_LIMIT / 2, *extra_flags)


@asynccontextmanager
async def aiortc_answerer(cert: str | None) -> AsyncIterator[tuple[Any, trio.lowlevel.FdStream]]:
    """The answerer subprocess, started from this thread (so in its namespace); it
    trusts ``cert`` for turns: (aioice verifies with the default verify paths)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    if cert is not None:
        env["SSL_CERT_FILE"] = cert
    process = subprocess.Popen(
        [sys.executable, str(ANSWERER)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    assert process.stdin is not None and process.stdout is not None
    stdout = trio.lowlevel.FdStream(os.dup(process.stdout.fileno()))
    try:
        async with stdout:
            yield process, stdout
    finally:
        process.kill()
        process.wait(timeout=5)


class Lines:
    def __init__(self, stream: trio.lowlevel.FdStream) -> None:
        self._stream, self._buffer = stream, b""

    async def next(self) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            chunk = await self._stream.receive_some(65536)
            assert chunk, "the aiortc answerer exited"
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)


@pytest.mark.skipif(find_chromium() is None, reason="no chromium binary on PATH")
@pytest.mark.usefixtures("loopback_only_namespace")
@pytest.mark.parametrize("scheme", ["udp", "tcp", "tls"])
async def test_chromium_relay_policy_through_our_turn_server(tmp_path, scheme) -> None:
    with trio.fail_after(TIME_LIMIT):
        async with (
            relay_with_turn(tmp_path, tls=scheme == "tls") as (server, creds, cert),
            chromium_page(*TLS_FLAGS if scheme == "tls" else ()) as page,
            aiortc_answerer(cert) as (answerer, stdout),
        ):
            await page.expect("hello")
            entry = ice_server(creds, scheme)
            await page.command(type="start", server=entry)
            offer = (await page.expect("offer"))["sdp"]
            gathered = [r["candidate"] for r in page.of_type("gathered")]
            assert gathered, ("Chromium gathered no relay candidate", page.log)
            assert all(" typ relay " in c and f" {LOOPBACK} " in c for c in gathered), gathered
            request = json.dumps({"offer": offer, "server": entry}) + "\n"
            answerer.stdin.write(request.encode())
            answerer.stdin.flush()
            lines = Lines(stdout)
            answer = (await lines.next())["answer"]
            await page.command(type="answer", sdp=answer)
            await page.expect("open")
            seen = {
                (await page.expect("message"))["data"],
                (await page.expect("message"))["data"],
                (await page.expect("message"))["data"],
            }
            assert seen == {
                "hello from aiortc",
                "echo:hello from chromium",
                "bytes:6563686f3a010203",
            }
            from_aiortc = [await lines.next() for _ in range(3)]
            pair = next(item["pair"] for item in from_aiortc if "pair" in item)
            messages = {item["message"] for item in from_aiortc if "message" in item}
            assert messages == {"hello from chromium", "bytes:010203"}
            assert pair == ["relay", LOOPBACK, "relay", LOOPBACK]
            await page.command(type="stats")
            stats = await page.expect("stats")
            assert (stats["localType"], stats["remoteType"]) == ("relay", "relay"), stats
            assert (stats["local"], stats["remote"]) == (LOOPBACK, LOOPBACK), stats
            assert stats["relayProtocol"] == scheme, stats
            counters = server.turn.core.counters
            assert counters["allocations_created"] >= 2
            assert counters["bytes_to_peer"] > 0 and counters["bytes_to_client"] > 0
            answerer.stdin.close()
