"""Our PeerConnection against a real headless Chromium's RTCPeerConnection.

The test serves one HTML page with inline JS and the signaling WebSocket from one
:func:`~darkswap_trio.websocket._endpoints.serve_websocket` server on 127.0.0.1, and starts
Chromium as a subprocess pointed at the page (no CDP, no driver). The page does the
W3C dance over the WebSocket and reports everything it sees (channels, messages with
their type, closes, state changes, errors, the selected candidate pair from
``getStats()``) as JSON; the trio side asserts. Both directions are covered: Chromium
offers and we answer, we offer and Chromium answers.

Loopback only, enforced by the kernel: the whole exchange runs in a fresh network
namespace that has nothing but ``lo`` (a fixture moves the test's thread into it with
``unshare`` and back afterwards; our sockets, the page server and Chromium, started
from that thread, all live there). Chromium can gather and use nothing
but loopback there; ``--allow-loopback-in-peer-connection`` lets it gather 127.0.0.1
at all, ``WebRtcHideLocalIpsWithMdns`` is off (no mDNS names, which we ignore), the
page uses ``iceServers: []`` and both sides still keep only 127.0.0.1 candidates.
Without Chromium, or without the privilege to make a network namespace (root /
CAP_SYS_ADMIN), the tests skip. ``scripts/install-browser.sh`` installs Chromium in CI.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from darkswap_trio.proto.datachannel import MessageTooLarge
from darkswap_trio.webrtc import (
    DataChannel,
    PeerConnection,
    PeerConnectionConfig,
    open_peer_connection,
)
from darkswap_trio.websocket import WebSocketConnection, WebSocketRequest, serve_websocket

LOOPBACK = "127.0.0.1"
CONFIG = PeerConnectionConfig(host_addresses=[LOOPBACK])
TIME_LIMIT = 30  # Chromium's cold start is the slow part (a few seconds on 2 cores)
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome-stable", "google-chrome")
# Both sides send these; the page sends the same list (see PAGE).
BIG = bytes(i * 7 % 256 for i in range(20000))
MESSAGES: list[str | bytes] = ["hello", b"\x00\x01\x02\xfd\xfe\xff", "", b"", "h\u00e9 \u2713", BIG]


CHROMIUM_FLAGS = (
    # As the machine notes prescribe for root in a closed network: no other connections.
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--disable-extensions", "--disable-breakpad",
    # Gather 127.0.0.1 at all (loopback is skipped otherwise), as an IP, not an mDNS name.
    "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns",
    # Media permission (a fake device, granted without a prompt) lets Chromium enumerate
    # interfaces; without it, it gathers only the default route's address, and the
    # namespace has no route at all.
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
)  # fmt: skip


def find_chromium() -> str | None:
    override = os.environ.get("DARKSWAP_CHROMIUM")
    if override:
        return shutil.which(override)
    return next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)


# ---------------------------------------------------------------- network namespace

_CLONE_NEWNET = 0x40000000
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


@pytest.fixture
def loopback_only_namespace() -> Iterator[None]:
    """Move this thread into a new network namespace with only ``lo`` (up), then back.

    A sync fixture: it wraps the test's whole trio.run (and its skip reason survives,
    which pytest-trio drops for skips raised inside the run).
    Sockets and child processes this thread creates inside stay in the namespace.
    Threads started inside would stay there too (trio's worker threads are cached and
    reused by later tests), so the body must start none, which is checked on exit.
    pytest.skip()s when the kernel refuses (not root / no CAP_SYS_ADMIN).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    except OSError as exc:
        pytest.skip(f"no network namespaces here ({exc})")
    try:
        if libc.unshare(_CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            pytest.skip(
                "needs root (CAP_SYS_ADMIN) to isolate Chromium in a loopback-only network "
                f"namespace: unshare(CLONE_NEWNET) failed: {os.strerror(error)}"
            )
        namespace = os.readlink("/proc/thread-self/ns/net")
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sh22x", b"lo", _IFF_UP))
            yield
        finally:
            if libc.setns(original, _CLONE_NEWNET) != 0:  # pragma: no cover
                raise OSError(ctypes.get_errno(), "could not return to the network namespace")
        stuck = [
            task for task in os.listdir("/proc/self/task")
            if os.readlink(f"/proc/self/task/{task}/ns/net") == namespace
        ]  # fmt: skip
        assert not stuck, f"threads {stuck} were started inside the test's network namespace"
    finally:
        os.close(original)


# ---------------------------------------------------------------- the page

PAGE = r"""<!doctype html>
<meta charset="utf-8">
<title>darkswap-trio browser interop</title>
<script>
"use strict";
const LOOPBACK = " 127.0.0.1 ";
const mode = new URLSearchParams(location.search).get("mode");
const ws = new WebSocket(`ws://${location.host}/signal`);
let pc = null;  // made by newPeerConnection(); "reset" makes another (open-time test)
const channels = new Map();

function report(message) { ws.send(JSON.stringify(message)); }
window.onerror = (message, source, line) => report({type: "error", message: `${message} @${line}`});
window.onunhandledrejection = (event) => report({type: "error", message: String(event.reason)});

function loopbackOnly(sdp) {
  return sdp.split("\r\n")
    .filter((line) => !line.startsWith("a=candidate") || line.includes(LOOPBACK))
    .join("\r\n");
}
const toHex = (buffer) =>
  Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
function encode(data) {
  return typeof data === "string" ? {kind: "string", data} : {kind: "binary", hex: toHex(data)};
}
function ourMessages() {  // the same list as MESSAGES in the test
  const big = new Uint8Array(20000);
  for (let i = 0; i < big.length; i++) big[i] = (i * 7) % 256;
  return ["hello", new Uint8Array([0, 1, 2, 253, 254, 255]).buffer, "", new ArrayBuffer(0),
          "h\u00e9 \u2713", big.buffer];
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

function serve(channel) {
  channels.set(channel.label, channel);
  channel.binaryType = "arraybuffer";
  const opened = () => {
    report({type: "open", label: channel.label, id: channel.id, protocol: channel.protocol,
            ordered: channel.ordered});
    // Our MESSAGES go out when the test asks ("send"), not here: sent from inside
    // ondatachannel right after a 2 MiB transfer, Chromium sometimes never hands them
    // to SCTP (its getStats() messagesSent stays 0, nothing reaches the wire): its own
    // side of the channel is not open yet then (see the "send" command).
  };
  if (channel.readyState === "open") opened(); else channel.onopen = opened;
  channel.onmessage = ({data}) => {
    const bulk = bulks.get(channel.label);
    if (bulk && typeof data !== "string") receiveBulk(channel.label, bulk, data);
    else if (data === "close-please") channel.close();
    else report({type: "message", label: channel.label, ...encode(data)});
  };
  channel.onclose = () => report({type: "closed", label: channel.label});
  // Logged only ("state" reports never reach Page.expect), for the failure message.
  channel.onclosing = () => report({type: "state", what: "closing", label: channel.label});
  channel.onerror = (event) => report({type: "channel-error", label: channel.label,
                                       message: String(event.error && event.error.message)});
}

function newPeerConnection() {
  const current = pc = new RTCPeerConnection({iceServers: []});  // never a STUN/TURN server
  current.onicecandidate = ({candidate}) => {
    if (current !== pc) return;  // a connection the test reset
    if (candidate === null) return report({type: "candidate", candidate: null});
    if (!candidate.candidate) return;  // an end-of-generation marker, nothing gathered
    report({type: "gathered", candidate: candidate.candidate});  // all of them, for the test
    if (candidate.candidate.includes(LOOPBACK))
      report({type: "candidate", candidate: candidate.candidate});
  };
  for (const what of ["iceconnectionstatechange", "connectionstatechange",
                      "icegatheringstatechange"]) {
    current.addEventListener(what, () => report({type: "state", what,
      ice: current.iceConnectionState, connection: current.connectionState,
      gathering: current.iceGatheringState}));
  }
  current.ondatachannel = ({channel}) => serve(channel);
}
newPeerConnection();

async function offerFromBrowser() {
  serve(pc.createDataChannel("from-browser", {protocol: "chat"}));
  await pc.setLocalDescription(await pc.createOffer());
  report({type: "offer", sdp: loopbackOnly(pc.localDescription.sdp)});
}

async function selectedPair() {
  const stats = await pc.getStats();
  for (const transport of stats.values()) {
    if (transport.type !== "transport" || !transport.selectedCandidatePairId) continue;
    const pair = stats.get(transport.selectedCandidatePairId);
    const local = stats.get(pair.localCandidateId), remote = stats.get(pair.remoteCandidateId);
    return {type: "stats", local: local.address, localPort: local.port,
            localType: local.candidateType, remote: remote.address, remotePort: remote.port,
            remoteType: remote.candidateType, dtls: transport.dtlsState};
  }
  return {type: "stats", local: null, remote: null};
}

const commands = {
  async offer(m) {
    await pc.setRemoteDescription({type: "offer", sdp: m.sdp});
    await pc.setLocalDescription(await pc.createAnswer());
    report({type: "answer", sdp: loopbackOnly(pc.localDescription.sdp)});
  },
  async answer(m) { await pc.setRemoteDescription({type: "answer", sdp: m.sdp}); },
  async candidate(m) {
    await pc.addIceCandidate(m.candidate === null ? undefined
                             : {candidate: m.candidate, sdpMLineIndex: 0});
  },
  async send(m) {
    const channel = channels.get(m.label);
    // A channel the peer opened is "open" from ondatachannel on (as the spec says), but
    // Chromium's native side opens it in a task of its WebRTC threads. When those lag
    // (a loaded machine), Blink, which attaches to the native channel one task after
    // ondatachannel, copies its "connecting" without an event, then turns "open" again
    // with a second open event. send() throws in between, so wait for that event.
    if (channel.readyState === "connecting") {
      await new Promise((resolve) => channel.addEventListener("open", resolve, {once: true}));
    }
    if (channel.readyState !== "open") throw new Error(`${m.label} is ${channel.readyState}`);
    for (const message of ourMessages()) channel.send(message);
  },
  async create(m) { serve(pc.createDataChannel(m.label, m.options)); },
  async bulk(m) {  // expect m.count messages of m.size bytes (i % 256) and send the same
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
  async stats() { report(await selectedPair()); },
  async reset() {  // a fresh RTCPeerConnection in the same mode; the old one goes quietly
    for (const channel of channels.values()) {
      channel.onclose = channel.onmessage = channel.onerror = null;
    }
    channels.clear();
    pc.close();
    newPeerConnection();
    report({type: "reset"});
    if (mode === "browser-offers") await offerFromBrowser();
  },
};
let queue = Promise.resolve();  // one command at a time, in the order they came
ws.onmessage = ({data}) => {
  const m = JSON.parse(data);
  queue = queue.then(() => commands[m.type](m))
    .catch((e) => report({type: "error", message: `${m.type}: ${e}`}));
};
ws.onopen = async () => {
  report({type: "hello", agent: navigator.userAgent});
  // With media permission Chromium gathers host candidates (see CHROMIUM_FLAGS).
  const stream = await navigator.mediaDevices.getUserMedia({audio: true});
  for (const track of stream.getTracks()) track.stop();
  if (mode === "browser-offers") await offerFromBrowser();
};
</script>
"""


# ---------------------------------------------------------------- test harness


def from_wire(report: dict[str, Any]) -> str | bytes:
    return report["data"] if report["kind"] == "string" else bytes.fromhex(report["hex"])


class Page:
    """The page's signaling WebSocket: commands out, reports in (logged)."""

    def __init__(self, connection: WebSocketConnection, pc: PeerConnection) -> None:
        self._connection = connection
        self._pc = pc
        self.log: list[dict[str, Any]] = []
        self.gathered: list[str] = []  # every candidate Chromium gathered, unfiltered
        self._reports, self._receive = trio.open_memory_channel[dict[str, Any]](1000)

    def use(self, pc: PeerConnection) -> None:
        """Route the page's candidates to ``pc`` from now on (after a "reset")."""
        self._pc = pc

    async def command(self, **message: Any) -> None:
        await self._connection.send(json.dumps(message))

    async def read_reports(self) -> None:
        """Route the page's reports: candidates to our pc, errors fail, the rest queue."""
        while True:
            report = json.loads(await self._connection.receive())
            self.log.append(report)
            if report["type"] in ("error", "channel-error"):
                raise AssertionError(f"page error: {report}\nlog: {self.log}")
            if report["type"] == "gathered":
                self.gathered.append(report["candidate"])
            elif report["type"] == "candidate":
                candidate = report["candidate"]
                assert candidate is None or f" {LOOPBACK} " in candidate
                self._pc.add_ice_candidate(candidate, "0", 0)
            elif report["type"] not in ("state", "hello"):
                self._reports.send_nowait(report)

    async def expect(self, kind: str) -> dict[str, Any]:
        report = await self._receive.receive()
        assert report["type"] == kind, (kind, report, self.log)
        return report


@asynccontextmanager
async def chromium_page(mode: str, pc: PeerConnection) -> AsyncIterator[Page]:
    """Serve the page, start Chromium on it, yield the page's connection; kill at exit."""
    binary = find_chromium()
    if binary is None:  # checked by the tests already; kept for direct use
        pytest.skip("no chromium binary on PATH")
    connections, incoming = trio.open_memory_channel[WebSocketConnection](1)
    finished = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        if not request.is_websocket:
            if request.path.startswith("/?"):
                await request.reject(200, PAGE.encode(), content_type="text/html; charset=utf-8")
            else:
                await request.reject(404, b"not found\n")
            return
        connection = await request.accept()
        await connections.send(connection)
        await finished.wait()  # the connection lives as long as the handler runs

    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(serve_websocket, handler, LOOPBACK, 0)
            port = listeners[0].socket.getsockname()[1]
            url = f"http://{LOOPBACK}:{port}/?mode={mode}"
            output_path = os.path.join(profile, "output.txt")
            with open(output_path, "wb") as output:
                # Started from this thread, not trio's worker thread (open_process), so
                # it runs in this thread's namespace; its own process group, to kill
                # its helpers too.
                process = subprocess.Popen(
                    [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}/profile", url],
                    stdin=subprocess.DEVNULL, stdout=output, stderr=output,
                    start_new_session=True,
                )  # fmt: skip
            try:
                with trio.move_on_after(TIME_LIMIT / 2) as waited:
                    connection = await incoming.receive()
                if waited.cancelled_caught:
                    with open(output_path, "rb") as log:
                        tail = log.read()[-3000:].decode(errors="replace")
                    raise AssertionError(f"Chromium never opened the page; its output:\n{tail}")
                page = Page(connection, pc)
                nursery.start_soon(page.read_reports)
                yield page
            finally:
                nursery.cancel_scope.cancel()  # first: the reader must not see the kill
                finished.set()
                os.killpg(process.pid, signal.SIGKILL)
                pidfd = os.pidfd_open(process.pid)
                try:
                    with trio.CancelScope(shield=True), trio.move_on_after(5):
                        await trio.lowlevel.wait_readable(pidfd)  # readable once it exited
                finally:
                    os.close(pidfd)
                process.wait(timeout=1)  # reap


needs_chromium = pytest.mark.skipif(
    find_chromium() is None,
    reason="no chromium binary on PATH (scripts/install-browser.sh installs it)",
)


def same_messages(got: list[str | bytes], ordered: bool) -> bool:
    """Equal values and types (str vs bytes); in any order unless ``ordered``."""
    keys, want = [(type(m), m) for m in got], [(type(m), m) for m in MESSAGES]
    return keys == want if ordered else sorted(map(repr, keys)) == sorted(map(repr, want))


async def exchange(page: Page, channel: DataChannel, *, ordered: bool = True) -> None:
    """Both ways: the page's MESSAGES reach us, ours reach the page, types intact.
    The page sends its MESSAGES when asked (see the page's ``opened``)."""
    await page.command(type="send", label=channel.label)
    received = [await channel.receive() for _ in MESSAGES]
    assert same_messages(received, ordered), received
    for message in MESSAGES:
        await channel.send(message)
    reports = [await page.expect("message") for _ in MESSAGES]
    assert {r["label"] for r in reports} == {channel.label}
    assert same_messages([from_wire(r) for r in reports], ordered), reports


async def bulk_both_ways(page: Page, channel: DataChannel, count: int, size: int) -> None:
    """``count`` messages of ``size`` bytes each way at once, contents and order
    checked (so on an ordered channel)."""
    await page.command(type="bulk", label=channel.label, count=count, size=size)
    await page.expect("bulk-ready")  # the page counts our messages from now on

    async def send_ours() -> None:
        for i in range(count):
            await channel.send(bytes([i % 256]) * size)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_ours)
        for i in range(count):
            message = await channel.receive()
            assert message == bytes([i % 256]) * size, (i, len(message))
    assert await page.expect("bulk") == {
        "type": "bulk",
        "label": channel.label,
        "count": count,
        "ok": True,
    }


async def check_loopback_pair(page: Page, pc: PeerConnection, our_types: set[str]) -> None:
    """Chromium gathered only loopback, and both ends use loopback: Chromium its host
    candidate, which we learned by trickle; we the candidate of ours Chromium knows
    as one of ``our_types`` (host from our SDP, or peer-reflexive when our first check
    overtook our answer)."""
    assert page.gathered, "Chromium gathered no candidate"
    assert all(f" {LOOPBACK} " in candidate for candidate in page.gathered), page.gathered
    await page.command(type="stats")
    stats = await page.expect("stats")
    assert (stats["local"], stats["remote"]) == (LOOPBACK, LOOPBACK), stats
    assert stats["localType"] == "host" and stats["remoteType"] in our_types, stats
    assert stats["remotePort"] == pc.local_address[1]
    assert stats["dtls"] == "connected"
    assert pc.statistics().datagrams_dropped_no_pair == 0
    # DTLS and data may flow before we select a pair (RFC 8445 section 12.1): as the
    # controlling agent we nominate up to NOMINATION_DELAY after the first valid pair.
    while (ice := pc.statistics().ice) is not None and ice.selected_remote is None:
        await trio.sleep(0.01)  # bounded by the test's fail_after
    assert ice is not None
    assert ice.selected_remote == (LOOPBACK, stats["localPort"])
    assert f" {LOOPBACK} {stats['localPort']} typ host" in " ".join(page.gathered)


@needs_chromium
@pytest.mark.usefixtures("loopback_only_namespace")
async def test_chromium_offers_we_answer():
    with trio.fail_after(TIME_LIMIT):
        async with (
            open_peer_connection(CONFIG) as pc,
            chromium_page("browser-offers", pc) as page,
        ):
            offer = (await page.expect("offer"))["sdp"]
            await pc.set_remote_description(offer, "offer")
            answer = await pc.create_answer()
            assert "a=setup:active" in answer
            await page.command(type="answer", sdp=answer)
            await pc.wait_connected()
            channel = await pc.accept_data_channel()
            opened = await page.expect("open")
            assert (channel.label, channel.protocol, channel.id) == (
                "from-browser",
                "chat",
                opened["id"],
            )
            await exchange(page, channel)
            await check_loopback_pair(page, pc, {"host", "prflx"})
            await bulk_both_ways(page, channel, count=32, size=65536)  # 2 MiB each way
            # Now we open one (DCEP the other way), unordered.
            ours = await pc.create_data_channel("from-python", ordered=False, protocol="x")
            opened = await page.expect("open")
            assert (opened["label"], opened["id"], opened["ordered"]) == (
                "from-python",
                ours.id,
                False,
            )
            assert ours.id % 2 != channel.id % 2  # DTLS client and server pick apart
            await exchange(page, ours, ordered=False)
            # We close; the page sees its channel close; the other channel lives on.
            await channel.aclose()
            assert await page.expect("closed") == {"type": "closed", "label": "from-browser"}
            await channel.wait_closed()
            await exchange(page, ours, ordered=False)


@needs_chromium
@pytest.mark.usefixtures("loopback_only_namespace")
async def test_we_offer_chromium_answers():
    with trio.fail_after(TIME_LIMIT):
        async with (
            open_peer_connection(CONFIG) as pc,
            chromium_page("we-offer", pc) as page,
        ):
            await page.command(type="offer", sdp=await pc.create_offer())
            answer = (await page.expect("answer"))["sdp"]
            await pc.set_remote_description(answer, "answer")
            async for candidate in pc.local_candidates():  # trickle, then end-of-candidates
                await page.command(type="candidate", candidate=candidate)
            await pc.wait_connected()
            channel = await pc.create_data_channel("from-python", protocol="chat")
            opened = await page.expect("open")
            assert (opened["label"], opened["protocol"], opened["id"]) == (
                "from-python",
                "chat",
                channel.id,
            )
            await exchange(page, channel)
            # Chromium had our offer before any check of ours could reach it.
            await check_loopback_pair(page, pc, {"host"})
            # Chromium opens one too, partially reliable.
            await page.command(type="create", label="from-browser", options={"maxRetransmits": 3})
            theirs = await pc.accept_data_channel()
            opened = await page.expect("open")
            assert (theirs.label, theirs.id, theirs.max_retransmits) == (
                "from-browser",
                opened["id"],
                3,
            )
            await exchange(page, theirs)
            # A negotiated channel: ours first (it sends nothing until spoken to).
            agreed = await pc.create_data_channel("agreed", negotiated_id=20)
            await page.command(
                type="create", label="agreed", options={"negotiated": True, "id": 20}
            )
            assert (await page.expect("open"))["id"] == 20
            await exchange(page, agreed)
            # Chromium announces a=max-message-size:262144; one such message each way.
            assert "a=max-message-size:262144" in answer
            await bulk_both_ways(page, agreed, count=1, size=262144)
            with pytest.raises(MessageTooLarge):
                await agreed.send(bytes(262145))
            # The page closes; we see the end of the channel.
            await channel.send("close-please")
            with pytest.raises(trio.EndOfChannel):
                await channel.receive()
            assert await page.expect("closed") == {"type": "closed", "label": "from-python"}
            await channel.wait_closed()
