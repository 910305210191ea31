"""A cheap registration load generator for bench_workers.py: non-blocking sockets, epoll.

Run: python benchmarks/_register_loadgen.py JSON-COMMAND
  {"url_host", "port", "relay_peer_id", "local_ip", "concurrency", "max_peers"}
then reads "open N" lines on stdin and prints one JSON line per line, {"opened", "held",
"seconds", "cpu"}; "quit" ends (the kernel closes the sessions). It prints {"ready": true}
once its keys exist.

"restart SECONDS" (bench_registration.py's restart row): every held session waits for its
connection to end (the relay was killed), and each peer then registers again with the
same key, at most ``concurrency`` handshakes in flight; a connect the relay refuses (not
listening yet), a connection it drops or a 503 is retried after RETRY_DELAY. Prints
{"back", "first_back", "last_back" (time.time()), "cpu", "retries"} once every peer is
back or SECONDS have passed. What it skips compared with an SDK peer (RelayManager): the
backoff timers and their jitter (a dead session is redialled at once), the first Ping,
and every task, scope and object of an SDK session.

Why a generator of its own: on a 2-core machine the generator shares the cores with the
relay workers it measures, so its CPU per registration caps the ratio 2 workers can show
(the asyncio + ``websockets`` generator of _relay_loadgen.py spent 0.74-0.90 ms per
registration, the relay ~1.1 ms: a ceiling of ~1.3x). This one does per registration only
what the wire needs (docs/PROTOCOL.md 2.1.1, the one round trip registration):

  connect; write the prebuilt upgrade request; read the 101 response and its
  ``Darkswap-Relay-Challenge: <server_nonce> <relay_peer_id>`` header; sign the peer-auth
  message over that nonce (the one Ed25519 operation per registration); write the signed
  ``Register`` as one text frame masked with the zero key; read one frame, which must be
  ``Registered``.

Keys, peer ids, client nonces and every byte that does not depend on the server nonce are
made before the clock starts. The relay's signature in ``Registered`` (over our nonce) is
verified for the first session of each process only: verifying is the client's work, not
the server's, and one check shows the relay under test is the right one. Loopback only.
"""

from __future__ import annotations

import base64
import errno
import heapq
import json
import os
import selectors
import socket
import struct
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from darkswap_trio.proto import signaling as sig  # noqa: E402
from darkswap_trio.proto.identity import Keypair, PeerId  # noqa: E402

HEADER = b"darkswap-relay-challenge: "
RECEIVE = 65536


IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux 4.2
RETRY_DELAY = 0.05  # seconds before a refused or dropped re-registration is tried again


class Failure(Exception):
    pass


class Retry(Failure):
    """The relay refused or dropped the attempt (during a restart: try again)."""


class Peer:
    """One prospective session: everything that does not depend on the server nonce."""

    __slots__ = ("sign", "signed_prefix", "json_prefix", "nonce", "peer_id")

    def __init__(self, relay_id: str) -> None:
        keypair = Keypair.generate()
        self.peer_id = str(keypair.peer_id)
        self.sign = keypair._private_key.sign  # the bound method: no wrapper per call
        self.nonce = os.urandom(sig.NONCE_LENGTH)
        self.signed_prefix = sig.peer_auth_message(b"", relay_id, self.peer_id)
        fields = {"peer_id": self.peer_id, "protocol": sig.PROTOCOL_VERSION}
        fields["nonce"] = _b64(self.nonce)
        # The frame up to the signature's first character: json.dumps gives the escaping.
        opened = json.dumps({"type": "Register", "payload": {**fields, "signature": ""}})
        self.json_prefix = opened[: -len('"}}')].encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def masked_text_frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x81, 0x80 | n)
    else:
        header = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    return header + b"\0\0\0\0" + payload  # the zero masking key: payload as is


def server_frame(buffer: bytes) -> bytes | None:
    """The payload of the first whole unmasked frame in ``buffer``, or None."""
    if len(buffer) < 2:
        return None
    n, start = buffer[1] & 0x7F, 2
    if n == 126:
        if len(buffer) < 4:
            return None
        n, start = struct.unpack_from("!H", buffer, 2)[0], 4
    elif n == 127:
        if len(buffer) < 10:
            return None
        n, start = struct.unpack_from("!Q", buffer, 2)[0], 10
    if len(buffer) < start + n:
        return None
    return buffer[start : start + n]


CONNECTING, UPGRADING, REGISTERING, HELD = range(4)


class Session:
    __slots__ = ("sock", "peer", "buffer", "state", "index")

    def __init__(self, sock: socket.socket, peer: Peer, state: int, index: int = -1) -> None:
        self.sock = sock
        self.peer = peer
        self.buffer = b""
        self.state = state
        self.index = index  # the peer's place in Generator.peers


class Generator:
    def __init__(self, cmd: dict) -> None:
        self.address = (cmd["host"], cmd["port"])
        self.local = (cmd["local_ip"], 0)
        self.relay = PeerId.from_string(cmd["relay_peer_id"])
        relay_id = str(self.relay)
        self.relay_id = relay_id.encode()
        self.concurrency = cmd["concurrency"]
        self.peers = [Peer(relay_id) for _ in range(cmd["max_peers"])]
        self.upgrade = (
            f"GET {cmd['path']} HTTP/1.1\r\nHost: {cmd['host']}:{cmd['port']}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.selector = selectors.EpollSelector()
        self.held: list[socket.socket] = []
        self.held_peers: list[int] = []  # the peer index of each held socket
        self.verified = False

    def open(self, n: int) -> None:
        start, stop = len(self.held), len(self.held) + n
        following = iter(range(start, stop))
        in_flight = 0
        for i in following:
            self._connect(i)
            in_flight += 1
            if in_flight == self.concurrency:
                break
        select, done = self.selector.select, self._step
        while in_flight:
            for key, _ in select():
                if done(key.data):
                    in_flight -= 1
                    i = next(following, None)
                    if i is not None:
                        self._connect(i)
                        in_flight += 1

    def restart(self, seconds: float) -> dict:
        """Wait for every held session to end, register each peer again (module docstring)."""
        total = len(self.held)
        for sock, index in zip(self.held, self.held_peers, strict=True):
            self.selector.register(
                sock, selectors.EVENT_READ, Session(sock, self.peers[index], HELD, index)
            )
        self.held, self.held_peers = [], []
        waiting: list[tuple[float, int]] = []  # heap of (not before, peer index)
        in_flight = retries = 0
        first_back = last_back = None
        deadline = time.monotonic() + seconds
        while len(self.held) < total and time.monotonic() < deadline:
            now = time.monotonic()
            while waiting and in_flight < self.concurrency and waiting[0][0] <= now:
                _, index = heapq.heappop(waiting)
                try:
                    self._connect(index)
                    in_flight += 1
                except Retry:
                    retries += 1
                    heapq.heappush(waiting, (now + RETRY_DELAY, index))
            timeout = RETRY_DELAY if waiting else 1.0
            for key, _ in self.selector.select(timeout):
                s = key.data
                if s.state == HELD:
                    try:
                        gone = not s.sock.recv(RECEIVE)
                    except BlockingIOError:
                        gone = False
                    except OSError:
                        gone = True
                    if gone:  # the relay went away: this peer redials at once
                        self.selector.unregister(s.sock)
                        s.sock.close()
                        heapq.heappush(waiting, (0.0, s.index))
                    continue
                try:
                    done = self._step(s)
                except Retry:
                    retries += 1
                    in_flight -= 1
                    self.selector.unregister(s.sock)
                    s.sock.close()
                    heapq.heappush(waiting, (time.monotonic() + RETRY_DELAY, s.index))
                    continue
                if done:
                    in_flight -= 1
                    last_back = time.time()
                    first_back = first_back or last_back
        return {
            "back": len(self.held),
            "first_back": first_back,
            "last_back": last_back,
            "retries": retries,
        }

    def _connect(self, index: int) -> None:
        peer = self.peers[index]
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # The port is chosen at connect, per destination: a bind to port 0 alone searches
        # for a port free of every TIME_WAIT socket, and after a run of 10,000 sessions
        # that search made the next run's generator ~10x as costly (kernel CPU).
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind(self.local)
        sock.setblocking(False)
        code = sock.connect_ex(self.address)
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            if code == errno.ECONNREFUSED:
                raise Retry("connect refused")
            raise Failure(f"connect: {os.strerror(code)}")
        try:
            # On loopback the handshake has usually completed by now: no wait for writable.
            sock.send(self.upgrade)  # a few hundred bytes into an empty send buffer
        except (BlockingIOError, OSError) as exc:
            if exc.errno not in (errno.EAGAIN, errno.ENOTCONN):
                sock.close()
                if exc.errno in (errno.ECONNREFUSED, errno.ECONNRESET, errno.EPIPE):
                    raise Retry(f"send: {exc}") from None
                raise
            state = Session(sock, peer, CONNECTING, index)
            self.selector.register(sock, selectors.EVENT_WRITE, state)
        else:
            self.selector.register(
                sock, selectors.EVENT_READ, Session(sock, peer, UPGRADING, index)
            )

    def _step(self, s: Session) -> bool:
        """Advance ``s`` on readiness; True once it is registered (and held)."""
        sock = s.sock
        if s.state == CONNECTING:
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                if code == errno.ECONNREFUSED:
                    raise Retry("connect refused")
                raise Failure(f"connect: {os.strerror(code)}")
            sock.send(self.upgrade)
            s.state = UPGRADING
            self.selector.modify(sock, selectors.EVENT_READ, s)
            return False
        try:
            data = sock.recv(RECEIVE)
        except ConnectionResetError:
            raise Retry("the relay reset a session during the handshake") from None
        if not data:
            raise Retry("the relay closed a session during the handshake")
        s.buffer += data
        if s.state == UPGRADING:
            end = s.buffer.find(b"\r\n\r\n")
            if end < 0:
                return False
            head, s.buffer = s.buffer[: end + 2], s.buffer[end + 4 :]
            at = head.lower().find(HEADER)  # header names are case-insensitive
            if head.startswith(b"HTTP/1.1 503"):
                raise Retry("the relay is busy (503)")
            if not head.startswith(b"HTTP/1.1 101") or at < 0:
                raise Failure(f"no challenge in the upgrade response: {head[:200]!r}")
            at += len(HEADER)
            space = head.index(b" ", at)
            if head[space + 1 : head.index(b"\r\n", space)] != self.relay_id:
                raise Failure("the challenge names another relay")  # PROTOCOL.md 2.1.1
            nonce = base64.b64decode(head[at:space])
            peer = s.peer
            signature = peer.sign(peer.signed_prefix + nonce)
            sock.send(masked_text_frame(peer.json_prefix + base64.b64encode(signature) + b'"}}'))
            s.state = REGISTERING
            return False
        payload = server_frame(s.buffer)
        if payload is None:
            return False
        if not payload.startswith(b'{"type":"Registered"'):
            raise Failure(f"expected Registered, got {payload[:300]!r}")
        if not self.verified:
            self._verify(s.peer, payload)
        self.selector.unregister(sock)
        self.held.append(sock)
        self.held_peers.append(s.index)
        return True

    def _verify(self, peer: Peer, payload: bytes) -> None:
        msg = sig.decode_message_untrusted(payload.decode())
        assert isinstance(msg, sig.Registered), msg
        message = sig.relay_auth_message(peer.nonce, str(self.relay), peer.peer_id)
        if msg.signature is None or not self.relay.verify(message, msg.signature):
            raise Failure("the relay's signature in Registered did not verify")
        self.verified = True


def emit(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # thousands of sessions
    generator = Generator(json.loads(sys.argv[1]))
    emit({"ready": True})
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        if words[0] == "restart":
            times = os.times()
            reply = generator.restart(float(words[1]))
            after = os.times()
            cpu = after.user - times.user + after.system - times.system
            emit({**reply, "cpu": cpu})
            continue
        n = int(words[1])
        start, times = time.perf_counter(), os.times()
        generator.open(n)
        seconds, after = time.perf_counter() - start, os.times()
        user, system = after.user - times.user, after.system - times.system
        emit(
            {
                "opened": n,
                "held": len(generator.held),
                "seconds": seconds,
                "cpu": user + system,
                "user": user,  # the kernel's share (system) is mostly loopback TCP
                "system": system,
            }
        )


if __name__ == "__main__":
    main()
