"""Load generator for bench_relay.py: asyncio + uvloop + the ``websockets`` client.

Run: python benchmarks/_relay_loadgen.py JSON-COMMAND  (``"cpu": N`` in it pins the process)

It speaks the client side of darkswap-relay/1 (docs/PROTOCOL.md): Register with a nonce,
verify the relay's Challenge signature, Authenticate with an Ed25519 signature, then
RelayRequest / DataChannel and binary DATA / CREDIT frames (the receiver returns credit
once half a window is consumed). Each connection is driven by one coroutine that reads
its own frames (an end of a circuit only ever receives data *or* credit on the fast
path): no dispatcher task, no queues.

The generator must be faster than the server it measures. On the throughput paths the
senders write prebuilt frames (masked with the zero key) straight to the transport and
the receivers count bytes instead of parsing frames (:class:`CountingReceiver`, which
still returns CREDIT); the same tricks serve the websockets baseline relay, so both are
measured with the same client. Latency, circuit opening and registration use the
``websockets`` API as any client would.

Commands (one JSON object) and the JSON line each prints on stdout:
  throughput  {targets, bytes, size, runs}       -> MB/s per run per target, CPU use
  rtt         {targets, samples, size, runs}     -> round-trip samples (us) per run per target,
                                                    server CPU (us) per relayed message
  open        {target, samples}                  -> circuit open times (us)
  register    {target, local_ip, concurrency}    -> then reads "open N" lines on stdin,
              answers {"opened", "seconds"} each time, "quit" ends
  circuits    {target, count, size, seconds}     -> per-circuit payload bytes in the window
                                                    (benchmarks/_relay_circuits_load.py)
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import sys
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import uvloop  # noqa: E402
from _relay_servers import cpu_seconds  # noqa: E402  (this directory is sys.path[0])
from _tcp_baseline import rtt_tcp, throughput_splice  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from darkswap_trio import Keypair, PeerId  # noqa: E402
from darkswap_trio.proto import signaling as sig  # noqa: E402

# Same client settings for our relay and the websockets baseline relay.
# proxy=None: otherwise every connect scans os.environ for proxy settings (measured: the
# largest client cost of a registration).
WS_OPTIONS = dict(
    compression=None,
    max_size=1 << 20,
    ping_interval=None,
    open_timeout=60,
    close_timeout=2,
    proxy=None,
)
HEADER = sig.DATA_HEADER_LENGTH
_CREDIT = struct.Struct("!B16sI")


def premasked_binary_frame(payload: bytes) -> bytes:
    """A complete client-to-server binary frame, masked with the all-zero key.

    Senders on the throughput paths write such prebuilt frames straight to the transport
    (then wait for its drain like ``send`` does): no per-frame masking and framing in
    the generator, which must stay faster than the server it measures. Servers cannot
    tell a zero key from any other (RFC 6455 only asks clients to pick unpredictable
    ones, against proxy cache poisoning, irrelevant on loopback).
    """
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x82, 0x80 | n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", 0x82, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x82, 0x80 | 127, n)
    return header + bytes(4) + payload


async def write_prebuilt(ws, frame: bytes) -> None:
    ws.transport.write(frame)
    await ws.drain()


def server_frame_length(payload: int) -> int:
    """Wire length of an unmasked server-to-client frame carrying ``payload`` bytes."""
    return payload + (2 if payload < 126 else 4 if payload < 1 << 16 else 10)


class CountingReceiver(asyncio.Protocol):
    """Takes over a websocket's transport once only equal-sized binary frames arrive.

    It counts bytes instead of parsing frames (the generator must stay cheaper than the
    server). With ``circuit``, it returns CREDIT for every whole frame received, once
    half a window is owed, as :meth:`CircuitEnd.receive` does.
    """

    def __init__(self, ws, payload: int, circuit: CircuitEnd | None = None) -> None:
        self.transport = ws.transport
        self.frame = server_frame_length(payload + (HEADER if circuit else 0))
        self.payload = payload
        self.circuit = circuit
        self.wire = 0  # bytes received
        self.credited = 0  # payload bytes given back as credit
        self.target = 0
        self.done: asyncio.Future | None = None
        self.transport.set_protocol(self)

    def expect(self, payload_bytes: int) -> asyncio.Future:
        """A future set to the time at which ``payload_bytes`` more have arrived."""
        self.target = self.wire + payload_bytes // self.payload * self.frame
        self.done = asyncio.get_running_loop().create_future()
        return self.done

    @property
    def payload_received(self) -> int:
        return self.wire // self.frame * self.payload

    def data_received(self, data: bytes) -> None:
        self.wire += len(data)
        circuit = self.circuit
        if circuit is not None:
            owed = self.payload_received - self.credited
            if owed >= circuit.window >> 1:
                self.transport.write(
                    premasked_binary_frame(_CREDIT.pack(sig.FRAME_CREDIT, circuit.key, owed))
                )
                self.credited += owed
        if self.done is not None and self.wire >= self.target and not self.done.done():
            self.done.set_result(time.perf_counter())

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError("connection lost"))


def emit(obj: object) -> None:
    # The event loop may have left the pipe non-blocking: a long line (RTT samples) would
    # then be cut at the pipe's 64 KiB when the orchestrator reads late (a loaded machine).
    os.set_blocking(sys.stdout.fileno(), True)
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# -- darkswap-relay/1 client side --------------------------------------------------------


class ProtocolFailure(Exception):
    pass


async def receive_message(ws) -> sig.Message:
    while True:
        frame = await ws.recv()
        if isinstance(frame, str):
            msg = sig.decode_message_untrusted(frame)
            if isinstance(msg, sig.Error):
                raise ProtocolFailure(f"relay error {msg.code}: {msg.message}")
            if not isinstance(msg, (sig.Ping, sig.Pong)):
                return msg


async def register(url: str, relay_peer: PeerId, keypair: Keypair, peer_id: str = "", **options):
    """Open a session and run the signature handshake; returns the websocket."""
    ws = await connect(url, **WS_OPTIONS, **options)
    peer_id = peer_id or str(keypair.peer_id)
    nonce = os.urandom(sig.NONCE_LENGTH)
    await ws.send(
        sig.encode_message(
            sig.Register(peer_id=peer_id, protocol=sig.PROTOCOL_VERSION, nonce=nonce)
        )
    )
    challenge = await receive_message(ws)
    if not isinstance(challenge, sig.Challenge) or challenge.signature is None:
        raise ProtocolFailure(f"expected Challenge, got {challenge!r}")
    relay_id = str(relay_peer)
    if challenge.relay_peer_id != relay_id or not relay_peer.verify(
        sig.relay_auth_message(nonce, relay_id, peer_id), challenge.signature
    ):
        raise ProtocolFailure("the relay's proof of identity did not verify")
    proof = keypair.sign(sig.peer_auth_message(challenge.nonce, relay_id, peer_id))
    await ws.send(sig.encode_message(sig.Authenticate(signature=proof)))
    registered = await receive_message(ws)
    if not isinstance(registered, sig.Registered):
        raise ProtocolFailure(f"expected Registered, got {registered!r}")
    return ws


class CircuitEnd:
    """One end of a circuit on a session that carries only this circuit."""

    def __init__(self, ws, relay_id: str, limits: sig.CircuitLimits | None) -> None:
        self.ws = ws
        self.relay_id = relay_id
        self.key = uuid.UUID(relay_id).bytes
        self.window = limits.window if limits and limits.window else 256 * 1024
        self.credit = self.window  # what we may still send
        self.unreturned = 0  # received bytes not yet given back as credit

    async def send(self, frame: bytes) -> None:
        """Send one DATA frame (``encode_circuit_data``), first reading CREDIT frames
        until it fits."""
        need = len(frame) - HEADER
        while self.credit < need:
            self._on_frame(await self.ws.recv())
        self.credit -= need
        await self.ws.send(frame)

    async def send_prebuilt(self, wire: bytes, need: int) -> None:
        """Like :meth:`send` for a :func:`premasked_binary_frame` of ``need`` payload bytes."""
        while self.credit < need:
            self._on_frame(await self.ws.recv())
        self.credit -= need
        await write_prebuilt(self.ws, wire)

    async def receive(self) -> bytes:
        """Next DATA frame (header included); returns credit every half window."""
        while True:
            frame = await self.ws.recv()
            if self._on_frame(frame):
                self.unreturned += len(frame) - HEADER
                if self.unreturned >= self.window >> 1:
                    await self.ws.send(_CREDIT.pack(sig.FRAME_CREDIT, self.key, self.unreturned))
                    self.unreturned = 0
                return frame

    def _on_frame(self, frame) -> bool:
        """True for DATA; CREDIT is applied here, text (control) must not arrive."""
        if isinstance(frame, str):
            raise ProtocolFailure(f"unexpected control frame {frame[:200]}")
        if frame[0] == sig.FRAME_CREDIT:
            self.credit += _CREDIT.unpack(frame)[2]
            return False
        return True


async def open_circuit(a, b, b_peer_id: str, a_peer_id: str) -> tuple[CircuitEnd, CircuitEnd]:
    await a.send(sig.encode_message(sig.RelayRequest(from_=a_peer_id, to=b_peer_id)))
    response = await receive_message(a)
    if not isinstance(response, sig.RelayResponse) or not response.accepted:
        raise ProtocolFailure(f"circuit refused: {response!r}")
    notice = await receive_message(b)
    if not isinstance(notice, sig.DataChannel) or notice.relay_id != response.relay_id:
        raise ProtocolFailure(f"expected DataChannel, got {notice!r}")
    return CircuitEnd(a, response.relay_id, response.limits), CircuitEnd(
        b, notice.relay_id, notice.limits
    )


class OurPair:
    """Two registered sessions of our relay with one circuit between them."""

    @classmethod
    async def create(cls, target: dict, **options) -> OurPair:
        self = cls()
        relay = PeerId.from_string(target["peer_id"])
        ka, kb = Keypair.generate(), Keypair.generate()
        self.a = await register(target["url"], relay, ka, **options)
        self.b = await register(target["url"], relay, kb, **options)
        self.ends = await open_circuit(self.a, self.b, str(kb.peer_id), str(ka.peer_id))
        self.counter: CountingReceiver | None = None  # set once b only receives data
        return self

    async def close(self) -> None:
        if self.counter is not None:  # b's websocket no longer owns its transport
            self.a.transport.abort()
            self.b.transport.abort()
            return
        await asyncio.gather(self.a.close(), self.b.close())


# -- throughput --------------------------------------------------------------------------


async def throughput_ours(pair: OurPair, total: int, size: int) -> float:
    sender, receiver = pair.ends
    wire = premasked_binary_frame(sig.encode_circuit_data(sender.key, os.urandom(size)))
    count = total // size

    counter = pair.counter
    if counter is None or counter.payload != size:
        counter = pair.counter = CountingReceiver(receiver.ws, size, receiver)
    done = counter.expect(count * size)

    async def send() -> None:
        for _ in range(count):
            await sender.send_prebuilt(wire, size)

    start = time.perf_counter()
    await send()
    return await done - start


async def throughput_ws(target: dict, total: int, size: int) -> float:
    path = f"/{uuid.uuid4().hex}"
    url = f"ws://127.0.0.1:{target['port']}{path}"
    a = await connect(url, **WS_OPTIONS)
    b = await connect(url, **WS_OPTIONS)
    wire, count = premasked_binary_frame(os.urandom(size)), total // size
    await a.send(b"x")  # both ends are paired once this comes through
    await b.recv()

    done = CountingReceiver(b, size).expect(count * size)
    start = time.perf_counter()
    for _ in range(count):
        await write_prebuilt(a, wire)
    end = await done
    a.transport.abort()
    b.transport.abort()
    return end - start


async def cmd_throughput(cmd: dict) -> dict:
    targets, total, size = cmd["targets"], cmd["bytes"], cmd["size"]
    out: dict = {name: {"mb_per_s": [], "server_cpu": [], "client_cpu": []} for name in targets}
    # Every target whose name starts with "ours" is our relay (possibly another config).
    pairs = {
        name: await OurPair.create(target)
        for name, target in targets.items()
        if name.startswith("ours")
    }
    for run in range(-1, cmd["runs"]):  # run -1 warms up every path and is not counted
        for name, target in targets.items():  # interleaved: drift hits every target alike
            if run < 0:
                if name in pairs:
                    await throughput_ours(pairs[name], total // 8, size)
                elif name == "wsrelay":
                    await throughput_ws(target, total // 8, size)
                else:
                    await throughput_splice(target, total // 8, size)
                continue
            server0, client0 = cpu_seconds(target["pid"]), time.process_time()
            if name in pairs:
                seconds = await throughput_ours(pairs[name], total, size)
            elif name == "wsrelay":
                seconds = await throughput_ws(target, total, size)
            else:
                seconds = await throughput_splice(target, total, size)
            result = out[name]
            result["mb_per_s"].append(total / seconds / 1e6)
            result["server_cpu"].append((cpu_seconds(target["pid"]) - server0) / seconds)
            result["client_cpu"].append((time.process_time() - client0) / seconds)
    for pair in pairs.values():
        await pair.close()
    return out


# -- latency -----------------------------------------------------------------------------


async def rtt_ours(target: dict, samples: int, size: int) -> list[float]:
    pair = await OurPair.create(target)
    a, b = pair.ends
    frame = sig.encode_circuit_data(a.key, os.urandom(size))
    out = []
    for _ in range(samples):
        start = time.perf_counter()
        await a.send(frame)
        echoed = await b.receive()
        await b.send(echoed)
        await a.receive()
        out.append((time.perf_counter() - start) * 1e6)
    await pair.close()
    return out


async def rtt_ws(target: dict, samples: int, size: int) -> list[float]:
    url = f"ws://127.0.0.1:{target['port']}/{uuid.uuid4().hex}"
    a = await connect(url, **WS_OPTIONS)
    b = await connect(url, **WS_OPTIONS)
    payload, out = os.urandom(size), []
    for _ in range(samples):
        start = time.perf_counter()
        await a.send(payload)
        await b.send(await b.recv())
        await a.recv()
        out.append((time.perf_counter() - start) * 1e6)
    await asyncio.gather(a.close(), b.close())
    return out


async def cmd_rtt(cmd: dict) -> dict:
    """``runs`` rounds; each round measures every target once (interleaved)."""
    samples, size = cmd["samples"], cmd["size"]
    out: dict = {name: [] for name in cmd["targets"]}
    cpu: dict = {name: [] for name in cmd["targets"]}
    client_cpu: dict = {name: [] for name in cmd["targets"]}
    for run in range(cmd["runs"]):
        for name, target in cmd["targets"].items():
            n = samples + (max(samples // 10, 10) if run == 0 else 0)  # first: warm-up
            server0, client0 = cpu_seconds(target["pid"]), time.process_time()
            if name == "ours":
                rtts = await rtt_ours(target, n, size)
            elif name == "wsrelay":
                rtts = await rtt_ws(target, n, size)
            else:
                rtts = await rtt_tcp(target, n, size, echo=name == "echo")
            out[name].append(rtts[-samples:])
            # Server CPU per relayed message (two per round trip; the echo server: one).
            hops = n * (1 if name == "echo" else 2)
            cpu[name].append((cpu_seconds(target["pid"]) - server0) / hops * 1e6)
            client_cpu[name].append((time.process_time() - client0) / hops * 1e6)
    return {
        "samples": out,
        "server_cpu_us_per_message": cpu,
        "client_cpu_us_per_message": client_cpu,
    }


async def cmd_open(cmd: dict) -> dict:
    target = cmd["target"]
    relay = PeerId.from_string(target["peer_id"])
    ka, kb = Keypair.generate(), Keypair.generate()
    a = await register(target["url"], relay, ka)
    b = await register(target["url"], relay, kb)
    out = []
    cpu0 = time.process_time()
    for _ in range(cmd["samples"]):
        start = time.perf_counter()
        end_a, _ = await open_circuit(a, b, str(kb.peer_id), str(ka.peer_id))
        out.append((time.perf_counter() - start) * 1e6)
        await a.send(sig.encode_message(sig.CloseRelay(relay_id=end_a.relay_id)))
        for ws in (a, b):
            closed = await receive_message(ws)
            if not isinstance(closed, sig.CloseRelay):
                raise ProtocolFailure(f"expected CloseRelay, got {closed!r}")
    cpu_us = (time.process_time() - cpu0) / cmd["samples"] * 1e6
    await asyncio.gather(a.close(), b.close())
    return {"open_us": out, "client_cpu_us": cpu_us}


# -- registration / idle peers -----------------------------------------------------------


async def cmd_register(cmd: dict) -> None:
    """Open idle sessions in stages told on stdin; the orchestrator reads RSS between."""
    target, kind = cmd["target"], cmd["kind"]
    options = {"local_addr": (cmd["local_ip"], 0)}
    relay = PeerId.from_string(target["peer_id"]) if kind == "ours" else None
    url = target["url"] if kind == "ours" else f"ws://127.0.0.1:{target['port']}/"
    # Keys and their peer ids are made before the clock starts: they are not the server's work.
    keys = [Keypair.generate() for _ in range(cmd["max_peers"])] if kind == "ours" else []
    peer_ids = [str(key.peer_id) for key in keys]
    held: list = []
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    emit({"ready": True})

    async def one(i: int) -> None:
        if kind == "ours":
            held.append(await register(url, relay, keys[i], peer_ids[i], **options))
        else:
            held.append(await connect(url, **WS_OPTIONS, **options))

    while True:
        line = (await reader.readline()).decode().split()
        if not line or line[0] == "quit":
            break
        n = int(line[1])
        start, cpu = time.perf_counter(), time.process_time()
        queue = iter(range(len(held), len(held) + n))

        async def worker(indices) -> None:
            for i in indices:  # the workers share one iterator: each index is taken once
                await one(i)

        await asyncio.gather(*(worker(queue) for _ in range(cmd["concurrency"])))
        emit(
            {
                "opened": n,
                "held": len(held),
                "seconds": time.perf_counter() - start,
                "cpu": time.process_time() - cpu,
            }
        )
    for ws in held:  # let the kernel close them: a graceful close of 10k sessions is slow
        ws.transport.abort()


async def cmd_circuits(cmd: dict) -> dict:
    from _relay_circuits_load import cmd_circuits as run  # it imports this module's helpers

    return await run(cmd)


COMMANDS = {
    "throughput": cmd_throughput,
    "rtt": cmd_rtt,
    "open": cmd_open,
    "register": cmd_register,
    "circuits": cmd_circuits,
}


def main() -> None:
    import ctypes
    import resource
    import signal

    # Never outlive the orchestrator, nor a bound on any one command.
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    signal.alarm(900)
    cmd = json.loads(sys.argv[1])
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (200_000, 200_000))
    except (ValueError, OSError):
        pass
    if cmd.get("cpu") is not None:
        os.sched_setaffinity(0, {cmd["cpu"]})
    result = uvloop.run(COMMANDS[cmd["command"]](cmd))
    if result is not None and cmd.get("result_file"):
        with open(cmd["result_file"], "w") as f:  # long results (RTT samples) never via a pipe
            json.dump(result, f)
    elif result is not None:
        emit(result)


if __name__ == "__main__":
    main()
