"""Where the time of a data-channel open goes: a timeline of both peers, packet by packet.

    python open_timeline.py OFFERER ANSWERER [--opens N]      (stacks: ours | aiortc)

Runs ``_dc_peer.py`` pairs as bench_datachannel.py does (loopback, the offerer times
the open), with hooks in each peer process that note, against the one monotonic clock
both processes share (time.perf_counter is CLOCK_MONOTONIC on Linux): every datagram
on the wire (STUN with its class and USE-CANDIDATE, DTLS records with handshake
types), every SCTP chunk inside DTLS (DCEP by its PPID), and the signalling steps.
It prints, per step, the median over the opens of the milliseconds since the
offerer's start, then the median open time. A diagnostic, not a benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from bench_datachannel import exchange_descriptions  # this directory is sys.path[0]

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(HERE, "_dc_peer.py")

STUN_KINDS = {0x0001: "req", 0x0101: "ok", 0x0111: "err", 0x0011: "ind"}
HANDSHAKE = {1: "CH", 2: "SH", 3: "HVR", 11: "Cert", 12: "SKE", 13: "CReq", 14: "SHD",
             15: "CV", 16: "CKE", 20: "Fin"}  # fmt: skip
CHUNKS = {0: "DATA", 1: "INIT", 2: "INIT-ACK", 3: "SACK", 4: "HB", 5: "HB-ACK", 6: "ABORT",
          10: "COOKIE-ECHO", 11: "COOKIE-ACK", 130: "RECONFIG", 192: "FWD-TSN"}  # fmt: skip
DCEP = {3: "OPEN", 2: "ACK"}


def describe(data: bytes) -> str:
    """STUN or DTLS, as seen on the wire."""
    if not data:
        return "empty"
    first = data[0]
    if first < 2 and len(data) >= 20:
        kind = STUN_KINDS.get(int.from_bytes(data[0:2], "big") & 0x0111, "?")
        use = "+UC" if b"\x00\x25\x00\x00" in data[20:] and kind == "req" else ""
        return f"stun-{kind}{use}"
    if 20 <= first <= 63:
        parts, at = [], 0
        while at + 13 <= len(data):
            ctype, epoch, length = data[at], data[at + 3] << 8 | data[at + 4], data[at + 11]
            length = length << 8 | data[at + 12]
            if ctype == 22 and epoch == 0:
                parts.append(HANDSHAKE.get(data[at + 13], f"hs{data[at + 13]}"))
            else:
                parts.append({20: "CCS", 21: "alert", 22: "hs*", 23: "app"}.get(ctype, "?"))
            at += 13 + length
        return "dtls-" + "+".join(parts)
    return "other"


def chunks(packet: bytes) -> str:
    """The chunk types of one SCTP packet (DCEP messages by name)."""
    names, at = [], 12
    while at + 4 <= len(packet):
        ctype = packet[at]
        length = packet[at + 2] << 8 | packet[at + 3]
        name = CHUNKS.get(ctype, f"c{ctype}")
        if ctype == 0 and at + 16 <= len(packet):
            ppid = int.from_bytes(packet[at + 12 : at + 16], "big")
            if ppid == 50 and at + 17 <= len(packet):
                name = "DCEP-" + DCEP.get(packet[at + 16], "?")
        names.append(name)
        at += max(4, (length + 3) & ~3)
    return "+".join(names)


def note(what: str) -> None:
    sys.stderr.write(json.dumps({"t": time.perf_counter(), "e": what}) + "\n")


def install_hooks(stack: str) -> None:
    """Wrap the send/receive points of one stack so that they call note()."""
    sys.path.insert(0, HERE)
    import _dc_peer

    emit, read_item = _dc_peer.emit, _dc_peer.read_item

    def emit_noted(item: dict) -> None:
        note("emit " + ",".join(item))
        emit(item)

    def read_noted() -> dict:
        item = read_item()
        note("read " + ",".join(item))
        return item

    _dc_peer.emit, _dc_peer.read_item = emit_noted, read_noted
    if stack == "ours":
        from darkswap_trio.proto.peer import _core
        from darkswap_trio.proto.sctp import _association

        core_cls, sctp_cls = _core.PeerCore, _association.SctpAssociation
        receive_batch, poll_datagrams = core_cls.receive_batch, core_cls.poll_datagrams
        sctp_receive, sctp_poll = sctp_cls.receive, sctp_cls.poll_transmit

        def receive_batch_noted(self, batch, now):  # type: ignore[no-untyped-def]
            for data, _ in batch:
                note("< " + describe(data))
            return receive_batch(self, batch, now)

        def poll_datagrams_noted(self, limit=64):  # type: ignore[no-untyped-def]
            run = poll_datagrams(self, limit)
            if run is not None:
                for data in run[1]:
                    note("> " + describe(data))
            return run

        def sctp_receive_noted(self, packet, now):  # type: ignore[no-untyped-def]
            note("< sctp " + chunks(packet))
            return sctp_receive(self, packet, now)

        def sctp_poll_noted(self):  # type: ignore[no-untyped-def]
            packet = sctp_poll(self)
            if packet is not None:
                note("> sctp " + chunks(packet))
            return packet

        core_cls.receive_batch = receive_batch_noted
        core_cls.poll_datagrams = poll_datagrams_noted
        sctp_cls.receive, sctp_cls.poll_transmit = sctp_receive_noted, sctp_poll_noted
    else:
        import logging

        import aioice.ice
        from aiortc import rtcsctptransport

        if os.environ.get("OPEN_TIMELINE_LOG"):  # aioice's and aiortc's own log lines too

            class Noted(logging.Handler):
                def emit(self, record: logging.LogRecord) -> None:
                    note("log " + record.getMessage()[:90])

            for name in ("aioice", "aiortc"):
                logging.getLogger(name).addHandler(Noted())
                logging.getLogger(name).setLevel(logging.DEBUG)

        proto = aioice.ice.StunProtocol
        received, send_stun, send_data = proto.datagram_received, proto.send_stun, proto.send_data

        def received_noted(self, data, addr):  # type: ignore[no-untyped-def]
            note("< " + describe(bytes(data)))
            return received(self, data, addr)

        def send_stun_noted(self, message, addr):  # type: ignore[no-untyped-def]
            note("> " + describe(bytes(message)))
            return send_stun(self, message, addr)

        async def send_data_noted(self, data, addr):  # type: ignore[no-untyped-def]
            note("> " + describe(bytes(data)))
            return await send_data(self, data, addr)

        proto.datagram_received, proto.send_stun = received_noted, send_stun_noted
        proto.send_data = send_data_noted
        sctp = rtcsctptransport.RTCSctpTransport
        receive_chunk, send_chunk = sctp._receive_chunk, sctp._send_chunk

        def chunk_name(chunk) -> str:  # type: ignore[no-untyped-def]
            name = CHUNKS.get(chunk.type, f"c{chunk.type}")
            if chunk.type == 0 and getattr(chunk, "protocol", None) == 50:
                name = "DCEP-" + DCEP.get(chunk.user_data[0], "?")
            return name

        async def receive_chunk_noted(self, chunk):  # type: ignore[no-untyped-def]
            note("< sctp " + chunk_name(chunk))
            return await receive_chunk(self, chunk)

        async def send_chunk_noted(self, chunk):  # type: ignore[no-untyped-def]
            note("> sctp " + chunk_name(chunk))
            return await send_chunk(self, chunk)

        sctp._receive_chunk, sctp._send_chunk = receive_chunk_noted, send_chunk_noted
    sys.argv = [PEER, *sys.argv[2:]]
    _dc_peer.main()


def run_open(offerer: str, answerer: str) -> tuple[float, list[tuple[float, str, str]]]:
    """One open: the offerer's open time and both peers' noted events (t, side, what)."""

    def start(stack: str, role: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-u", __file__, "--peer", stack, role],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    answer_proc, offer_proc = start(answerer, "answer"), start(offerer, "offer")
    result = exchange_descriptions(offer_proc, answer_proc)
    answer_proc.stdin.close()
    events = []
    for side, proc in (("O", offer_proc), ("A", answer_proc)):
        proc.wait(timeout=20)
        for line in proc.stderr:
            if line.startswith("{"):
                item = json.loads(line)
                events.append((item["t"], side, item["e"]))
    return result["open"], sorted(events)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--peer":
        install_hooks(sys.argv[2])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("offerer", choices=["ours", "aiortc"])
    parser.add_argument("answerer", choices=["ours", "aiortc"])
    parser.add_argument("--opens", type=int, default=10)
    parser.add_argument("--show", action="store_true", help="print every open's events")
    args = parser.parse_args()
    opens, steps = [], {}
    for _ in range(args.opens):
        opened, events = run_open(args.offerer, args.answerer)
        opens.append(opened)
        zero = next(t for t, side, e in events if side == "O" and e == "read go")
        seen: dict[str, int] = {}
        for t, side, what in events:
            if what == "emit rtt":
                break
            key = f"{side} {what}"
            seen[key] = seen.get(key, 0) + 1
            key = f"{key} #{seen[key]}" if seen[key] > 1 else key
            steps.setdefault(key, []).append((t - zero) * 1e3)
            if args.show:
                print(f"{(t - zero) * 1e3:8.2f}  {side}  {what}")
            if side == "O" and what == "emit open":
                break
        if args.show:
            print("--")
    order = sorted(steps, key=lambda k: statistics.median(steps[k]))
    print(f"{args.offerer} offers, {args.answerer} answers: {args.opens} opens")
    for key in order:
        values = steps[key]
        print(f"{statistics.median(values):8.2f} ms  [{len(values):2d}]  {key}")
    print(f"open (offerer's figure): median {statistics.median(opens) * 1e3:.1f} ms, "
          f"min {min(opens) * 1e3:.1f}, max {max(opens) * 1e3:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
