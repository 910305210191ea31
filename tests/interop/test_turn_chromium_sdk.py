"""Headless Chromium with ``iceTransportPolicy: "relay"`` and OUR PeerConnection with
``ice_transport_policy="relay"``: a data channel through OUR TURN server, data both ways.

Both ends are relay-only, so every datagram goes Chromium -> its allocation -> our
allocation -> us (and back) on the relay, over UDP, TCP or TLS to the server (for TLS
Chromium runs with ``--ignore-certificate-errors`` and we trust the test's certificate).
Chromium offers and we answer (our answer carries our relay candidate), and we offer and
Chromium answers (we trickle ours). The harness is test_turn_chromium.py's (the loopback-only namespace,
the relay with TURN, the credentials from the relay's signaling); the page is this
file's own, since it must answer as well as offer. Chromium's ``iceServers`` has one
entry, our TURN URI; ours has one TurnServerConfig, the same URI and credentials. The
test checks that both sides gathered relay candidates on 127.0.0.1 only, that both
selected pairs are relay/relay (Chromium's getStats, our IceStatistics), and that the
server's counters carried the messages from one allocation to the other. The relay keeps
its default-deny peer policy (``allow_loopback_peers`` off): its own allocations are the
only peers on loopback it lets through, so there is no path around the TURN server.
"""

from __future__ import annotations

import ssl
from contextlib import AbstractAsyncContextManager
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

from darkswap_trio.webrtc import (
    DataChannel,
    PeerConnection,
    PeerConnectionConfig,
    TurnServerConfig,
    open_peer_connection,
)

LOOPBACK = "127.0.0.1"
TIME_LIMIT = 60  # Chromium's cold start on a loaded 2-core machine is the slow part
# Chromium verifies a turns: server's certificate (the test's self-signed one): as in
# test_turn_chromium.py.
TLS_FLAGS = ("--ignore-certificate-errors",)
# 1 MiB each way through both allocations. Over TCP/TLS neither the relay's queue towards
# a client's connection (relay/_turn.py TCP_QUEUE: drop_tcp_backpressure) nor ours towards
# the server (turn_stream_dropped) may overflow: both writers once sent a frame per
# send_all and dropped hundreds of frames (SCTP retransmitted them, 2.8-4 s for this).
MAX_DROPS = 20
BULK_COUNT, BULK_SIZE = 16, 65536
BULK_BYTES = BULK_COUNT * BULK_SIZE
BIG = bytes(i * 7 % 256 for i in range(20000))
# What each side sends (the page's list in PAGE is the same, with "chromium" for "trio").
OURS: list[str | bytes] = ["hello from trio", b"\x00\x01\xfe\xff", BIG]
THEIRS: list[str | bytes] = ["hello from chromium", b"\x00\x01\xfe\xff", BIG]

PAGE = r"""<!doctype html>
<meta charset="utf-8">
<title>darkswap-trio TURN interop with our SDK</title>
<script>
"use strict";
const ws = new WebSocket(`ws://${location.host}/signal`);
let pc = null;
const channels = new Map();
function report(message) { ws.send(JSON.stringify(message)); }
window.onerror = (message, source, line) => report({type: "error", message: `${message} @${line}`});
window.onunhandledrejection = (event) => report({type: "error", message: String(event.reason)});
const toHex = (buffer) =>
  Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");

function serve(channel) {
  channels.set(channel.label, channel);
  channel.binaryType = "arraybuffer";
  const opened = () => report({type: "open", label: channel.label, id: channel.id});
  if (channel.readyState === "open") opened(); else channel.onopen = opened;
  channel.onmessage = ({data}) => {
    const bulk = bulks.get(channel.label);
    if (bulk && typeof data !== "string") return receiveBulk(channel.label, bulk, data);
    report({type: "message", label: channel.label,
      ...(typeof data === "string" ? {kind: "string", data} : {kind: "binary", hex: toHex(data)})});
  };
}
const bulks = new Map();  // label -> the bulk transfer the page expects from us
function receiveBulk(label, bulk, data) {
  const bytes = new Uint8Array(data), value = bulk.received % 256;
  bulk.ok = bulk.ok && bytes.length === bulk.size && bytes.every((b) => b === value);
  bulk.received += 1;
  if (bulk.received === bulk.count) {
    bulks.delete(label);
    report({type: "bulk", label, count: bulk.received, ok: bulk.ok});
  }
}
async function gatheredDescription() {  // no trickle from the page: every candidate inside
  if (pc.iceGatheringState !== "complete") {
    await new Promise((resolve) => pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") resolve();
    }));
  }
  return pc.localDescription.sdp;
}

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
    pc.ondatachannel = ({channel}) => serve(channel);
    if (!m.offer) return report({type: "started"});
    serve(pc.createDataChannel("from-chromium"));
    await pc.setLocalDescription(await pc.createOffer());
    report({type: "offer", sdp: await gatheredDescription()});
  },
  async offer(m) {
    await pc.setRemoteDescription({type: "offer", sdp: m.sdp});
    await pc.setLocalDescription(await pc.createAnswer());
    report({type: "answer", sdp: await gatheredDescription()});
  },
  async answer(m) { await pc.setRemoteDescription({type: "answer", sdp: m.sdp}); },
  async candidate(m) {
    await pc.addIceCandidate(m.candidate === null ? undefined
                             : {candidate: m.candidate, sdpMLineIndex: 0});
  },
  async send(m) {
    const channel = channels.get(m.label);
    if (channel.readyState === "connecting") {  // see test_browser_chromium's "send"
      await new Promise((resolve) => channel.addEventListener("open", resolve, {once: true}));
    }
    const big = new Uint8Array(20000);
    for (let i = 0; i < big.length; i++) big[i] = (i * 7) % 256;
    for (const message of ["hello from chromium", new Uint8Array([0, 1, 254, 255]).buffer,
                           big.buffer]) channel.send(message);
  },
  async bulk(m) {  // as test_browser_chromium's: m.count messages of m.size bytes each way
    bulks.set(m.label, {count: m.count, size: m.size, received: 0, ok: true});
    report({type: "bulk-ready", label: m.label});
    const channel = channels.get(m.label);
    channel.bufferedAmountLowThreshold = 256 * 1024;
    for (let i = 0; i < m.count; i++) {
      if (channel.bufferedAmount > 1024 * 1024) {
        await new Promise((resolve) =>
          channel.addEventListener("bufferedamountlow", resolve, {once: true}));
      }
      channel.send(new Uint8Array(m.size).fill(i % 256));
    }
  },
  async stats() {
    const stats = await pc.getStats();
    for (const transport of stats.values()) {
      if (transport.type !== "transport" || !transport.selectedCandidatePairId) continue;
      const pair = stats.get(transport.selectedCandidatePairId);
      const local = stats.get(pair.localCandidateId), remote = stats.get(pair.remoteCandidateId);
      return report({type: "stats", local: local.address, localPort: local.port,
        localType: local.candidateType, relayProtocol: local.relayProtocol, url: local.url,
        remote: remote.address, remotePort: remote.port, remoteType: remote.candidateType,
        dtls: transport.dtlsState, bytesSent: pair.bytesSent, bytesReceived: pair.bytesReceived});
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
    return open_chromium_page(PAGE, "turn-sdk", TIME_LIMIT / 2, *extra_flags)


def our_config(entry: dict[str, Any], cert: str | None) -> PeerConnectionConfig:
    """Relay-only through the same TURN URI and credentials as Chromium's entry; a
    turns: server's certificate is checked against ``cert``."""
    context = ssl.create_default_context(cafile=cert) if cert is not None else None
    turn = TurnServerConfig(entry["urls"], entry["username"], entry["credential"], context)
    return PeerConnectionConfig(
        host_addresses=[LOOPBACK], turn_servers=[turn], ice_transport_policy="relay"
    )


def candidate_lines(sdp_or_lines: str | list[str]) -> list[str]:
    lines = sdp_or_lines.split("\r\n") if isinstance(sdp_or_lines, str) else sdp_or_lines
    return [line for line in lines if "candidate:" in line]


async def exchange(page: Page, channel: DataChannel) -> None:
    """THEIRS reach us, OURS reach the page, in order and with their types."""
    await page.command(type="send", label=channel.label)
    assert [await channel.receive() for _ in THEIRS] == THEIRS
    for message in OURS:
        await channel.send(message)
    reports = [await page.expect("message") for _ in OURS]
    got = [r["data"] if r["kind"] == "string" else bytes.fromhex(r["hex"]) for r in reports]
    assert got == OURS, reports
    assert {r["label"] for r in reports} == {channel.label}


async def bulk_both_ways(page: Page, channel: DataChannel, count: int, size: int) -> None:
    """``count`` messages of ``size`` bytes each way at once, contents and order checked."""
    await page.command(type="bulk", label=channel.label, count=count, size=size)
    await page.expect("bulk-ready")

    async def send_ours() -> None:
        for i in range(count):
            await channel.send(bytes([i % 256]) * size)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_ours)
        for i in range(count):
            message = await channel.receive()
            assert message == bytes([i % 256]) * size, (i, len(message))
    report = await page.expect("bulk")
    assert (report["count"], report["ok"]) == (count, True), report


async def check_relay_pairs(page: Page, pc: PeerConnection, scheme: str) -> None:
    """Both ends selected relay/relay on 127.0.0.1, each the other's relayed address."""
    await page.command(type="stats")
    stats = await page.expect("stats")
    assert (stats["localType"], stats["remoteType"]) == ("relay", "relay"), stats
    assert (stats["local"], stats["remote"]) == (LOOPBACK, LOOPBACK), stats
    assert stats["relayProtocol"] == scheme and stats["dtls"] == "connected", stats
    # Data may flow before the controlled side learns of the nomination (RFC 8445 12.1).
    while (ice := pc.statistics().ice) is not None and ice.selected_remote is None:
        await trio.sleep(0.01)  # bounded by the test's fail_after
    assert ice is not None
    assert (ice.selected_local_type, ice.selected_remote_type) == ("relay", "relay"), ice
    assert ice.selected_local == (LOOPBACK, stats["remotePort"]), (ice, stats)
    assert ice.selected_remote == (LOOPBACK, stats["localPort"]), (ice, stats)


def check_server_relayed(server: Any) -> None:
    """Two allocations (one per side); the messages both ways crossed both of them, so
    each counter saw at least the bulk transfers both ways, handed from
    one allocation to the other inside the server (hairpin: the relay runs with the
    default-deny peer policy, ``allow_loopback_peers`` off, so no other path exists)."""
    counters = server.turn.core.counters
    assert counters["allocations_created"] >= 2, counters
    assert counters["hairpin_datagrams"] > 0, counters
    assert counters["bytes_to_peer"] > 2 * BULK_BYTES, counters
    assert counters["bytes_to_client"] > 2 * BULK_BYTES, counters


def check_no_tcp_drops(server: Any, pc: PeerConnection) -> None:
    counters = server.turn.core.counters
    assert counters["drop_tcp_backpressure"] <= MAX_DROPS, dict(counters)
    assert pc.statistics().turn_stream_dropped <= MAX_DROPS


def check_chromium_gathered(page: Page) -> None:
    gathered = [r["candidate"] for r in page.of_type("gathered")]
    assert gathered, ("Chromium gathered no relay candidate", page.log)
    assert all(" typ relay " in c and f" {LOOPBACK} " in c for c in gathered), gathered


needs_chromium = pytest.mark.skipif(find_chromium() is None, reason="no chromium binary on PATH")


@needs_chromium
@pytest.mark.usefixtures("loopback_only_namespace")
@pytest.mark.parametrize("scheme", ["udp", "tcp", "tls"])
async def test_chromium_offers_our_sdk_answers_through_our_turn(tmp_path, scheme) -> None:
    with trio.fail_after(TIME_LIMIT):
        async with (
            relay_with_turn(tmp_path, tls=scheme == "tls", allow_loopback=False) as (
                server,
                creds,
                cert,
            ),
            chromium_page(*TLS_FLAGS if scheme == "tls" else ()) as page,
        ):
            entry = ice_server(creds, scheme)
            await page.expect("hello")
            await page.command(type="start", server=entry, offer=True)
            offer = (await page.expect("offer"))["sdp"]
            check_chromium_gathered(page)
            assert candidate_lines(offer), offer
            async with open_peer_connection(our_config(entry, cert)) as pc:
                await pc.set_remote_description(offer, "offer")
                ours = [c async for c in pc.local_candidates() if c is not None]
                answer = await pc.create_answer()
                assert len(ours) == 1 and " typ relay " in ours[0], ours
                assert candidate_lines(answer) == [f"a={ours[0]}"], answer
                assert f" {LOOPBACK} " in ours[0], ours
                await page.command(type="answer", sdp=answer)
                await pc.wait_connected()
                channel = await pc.accept_data_channel()
                assert channel.label == "from-chromium"
                assert (await page.expect("open"))["id"] == channel.id
                await exchange(page, channel)
                await bulk_both_ways(page, channel, BULK_COUNT, BULK_SIZE)
                await check_relay_pairs(page, pc, scheme)
                check_server_relayed(server)
                check_no_tcp_drops(server, pc)


@needs_chromium
@pytest.mark.usefixtures("loopback_only_namespace")
@pytest.mark.parametrize("scheme", ["udp", "tcp", "tls"])
async def test_our_sdk_offers_chromium_answers_through_our_turn(tmp_path, scheme) -> None:
    with trio.fail_after(TIME_LIMIT):
        async with (
            relay_with_turn(tmp_path, tls=scheme == "tls", allow_loopback=False) as (
                server,
                creds,
                cert,
            ),
            chromium_page(*TLS_FLAGS if scheme == "tls" else ()) as page,
        ):
            entry = ice_server(creds, scheme)
            await page.expect("hello")
            await page.command(type="start", server=entry, offer=False)
            await page.expect("started")
            async with open_peer_connection(our_config(entry, cert)) as pc:
                offer = await pc.create_offer()
                assert not candidate_lines(offer), offer  # the allocation comes later
                await page.command(type="offer", sdp=offer)
                answer = (await page.expect("answer"))["sdp"]
                check_chromium_gathered(page)
                assert candidate_lines(answer), answer
                await pc.set_remote_description(answer, "answer")
                ours = []
                async for candidate in pc.local_candidates():  # trickle, then the end
                    ours.append(candidate)
                    await page.command(type="candidate", candidate=candidate)
                assert len(ours) == 2 and " typ relay " in ours[0], ours
                assert f" {LOOPBACK} " in ours[0], ours
                await pc.wait_connected()
                channel = await pc.create_data_channel("from-trio")
                assert (await page.expect("open"))["id"] == channel.id
                await exchange(page, channel)
                await bulk_both_ways(page, channel, BULK_COUNT, BULK_SIZE)
                await check_relay_pairs(page, pc, scheme)
                check_server_relayed(server)
                check_no_tcp_drops(server, pc)
