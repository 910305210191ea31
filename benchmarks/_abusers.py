"""Abusers for bench_abuse.py, in their own process (asyncio + uvloop, raw sockets).

Run: python benchmarks/_abusers.py JSON-COMMAND
  {"port", "flooders", "churners", "addresses", "first_address", "seconds", "cpu"}

- A *message flooder* registers (signature handshake, a fresh identity each time) and
  then writes Ping frames as fast as the socket takes them, reading and discarding
  whatever the relay answers; when the relay closes it, it reconnects at once.
- A *connection churner* opens a connection, sends the WebSocket upgrade and a Register
  in one write (which makes the relay sign a Challenge), reads until the Challenge (or
  the close) arrives, drops the connection and starts again.

Abuser ``i`` connects from 127.0.X.Y, the ``i % addresses``-th address from
``first_address`` on (all of 127.0.0.0/8 is loopback on Linux), with a 64 KiB send
buffer (see ``open_from``). Frames are premasked
with the all-zero key (the relay cannot tell). Prints one JSON line of counts at the end.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import os
import socket
import struct
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import uvloop  # noqa: E402

from darkswap_trio import Keypair  # noqa: E402
from darkswap_trio.proto import signaling as sig  # noqa: E402

HOST = "127.0.0.1"
PING_BATCH = 64  # Ping frames per write
SEND_BUFFER = 64 * 1024  # SO_SNDBUF of every abuser socket


def masked_text_frame(text: str) -> bytes:
    payload = text.encode()
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x81, 0x80 | n)
    else:
        header = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    return header + bytes(4) + payload


def upgrade(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /signaling HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One server frame (unmasked): (opcode, payload)."""
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    return b0 & 0x0F, await reader.readexactly(n)


async def read_message(reader: asyncio.StreamReader) -> sig.Message:
    while True:
        opcode, payload = await read_frame(reader)
        if opcode == 0x8:
            raise ConnectionError("closed by the relay")
        if opcode == 0x1:
            msg = sig.decode_message_untrusted(payload.decode())
            if not isinstance(msg, (sig.Ping, sig.Pong)):
                return msg


class Counts:
    def __init__(self) -> None:
        self.pings_written = 0
        self.registrations = 0
        self.flooder_connects = 0
        self.churns = 0
        self.challenges = 0
        self.refused = 0


async def open_from(address: str, port: int):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Real attackers' send queues are in their own kernels: capped here, the relay
    # host's TCP memory is not filled by ours (autotuned, 500 flooders the relay does
    # not read held over 1 GB, and the kernel's TCP memory pressure then dropped the
    # honest peers' packets too).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
    sock.setblocking(False)
    try:
        sock.bind((address, 0))
        await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


async def flooder(address: str, port: int, deadline: float, counts: Counts) -> None:
    ping_burst = masked_text_frame(sig.encode_message(sig.Ping())) * PING_BATCH
    while time.monotonic() < deadline:
        writer = None
        try:
            counts.flooder_connects += 1
            reader, writer = await open_from(address, port)
            key = Keypair.generate()
            peer_id, nonce = str(key.peer_id), os.urandom(sig.NONCE_LENGTH)
            writer.write(
                upgrade(port)
                + masked_text_frame(
                    sig.encode_message(
                        sig.Register(peer_id=peer_id, protocol=sig.PROTOCOL_VERSION, nonce=nonce)
                    )
                )
            )
            await reader.readuntil(b"\r\n\r\n")
            challenge = await read_message(reader)
            if not isinstance(challenge, sig.Challenge):
                raise ConnectionError(f"no challenge: {challenge!r}")
            proof = key.sign(
                sig.peer_auth_message(challenge.nonce, challenge.relay_peer_id, peer_id)
            )
            writer.write(masked_text_frame(sig.encode_message(sig.Authenticate(signature=proof))))
            if not isinstance(await read_message(reader), sig.Registered):
                raise ConnectionError("not registered")
            counts.registrations += 1

            async def discard(reader: asyncio.StreamReader = reader) -> None:
                try:
                    while await reader.read(65536):
                        pass
                except OSError:
                    pass

            drain = asyncio.ensure_future(discard())
            try:
                while (
                    time.monotonic() < deadline
                    and not drain.done()
                    and not writer.transport.is_closing()
                ):
                    writer.write(ping_burst)
                    await writer.drain()
                    counts.pings_written += PING_BATCH
            finally:
                drain.cancel()
        except (
            OSError,
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            sig.SignalingParseError,
        ):
            counts.refused += 1
            await asyncio.sleep(0.01)  # a refused connect fails at once: do not spin
        finally:
            if writer is not None:
                writer.transport.abort()


async def churner(address: str, port: int, deadline: float, counts: Counts) -> None:
    register = masked_text_frame(
        sig.encode_message(
            sig.Register(
                peer_id=str(Keypair.generate().peer_id),
                protocol=sig.PROTOCOL_VERSION,
                nonce=os.urandom(sig.NONCE_LENGTH),
            )
        )
    )
    while time.monotonic() < deadline:
        writer = None
        try:
            counts.churns += 1
            reader, writer = await open_from(address, port)
            writer.write(upgrade(port) + register)
            await reader.readuntil(b"\r\n\r\n")
            if isinstance(await read_message(reader), sig.Challenge):
                counts.challenges += 1
        except (
            OSError,
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            sig.SignalingParseError,
        ):
            counts.refused += 1
            await asyncio.sleep(0.01)
        finally:
            if writer is not None:
                writer.transport.abort()


async def run(cmd: dict) -> dict:
    first = ipaddress.ip_address(cmd["first_address"])
    addresses = [str(first + i) for i in range(cmd["addresses"])]
    deadline = time.monotonic() + cmd["seconds"]
    counts = Counts()
    tasks = [
        flooder(addresses[i % len(addresses)], cmd["port"], deadline, counts)
        for i in range(cmd["flooders"])
    ]
    tasks += [
        churner(addresses[(cmd["flooders"] + i) % len(addresses)], cmd["port"], deadline, counts)
        for i in range(cmd["churners"])
    ]
    started = time.process_time()
    await asyncio.gather(*tasks)
    return {**vars(counts), "cpu_seconds": time.process_time() - started}


def main() -> None:
    cmd = json.loads(sys.argv[1])
    if cmd.get("cpu") is not None:
        os.sched_setaffinity(0, {cmd["cpu"]})
    # The honest peers share this CPU: they come first (we measure the relay, not them).
    os.nice(19)
    print(json.dumps(uvloop.run(run(cmd))), flush=True)


if __name__ == "__main__":
    main()
