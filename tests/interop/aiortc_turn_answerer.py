"""An aiortc answerer with ``iceTransportPolicy="relay"``, run as a subprocess by
test_turn_chromium.py (a subprocess so that it lives in the test's network namespace).

JSON lines on stdin: ``{"offer": sdp, "server": iceServers entry}``. JSON lines on
stdout: ``{"answer": sdp}``, then ``{"message": text}`` for each message received
(bytes as ``"bytes:<hex>"``) and ``{"pair": [local type, local address, remote type,
remote address]}`` once the channel is open. Every message is echoed back prefixed
``echo:``; "hello from aiortc" is sent when the channel opens. Exits when stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import sys

from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
)


def emit(item: dict) -> None:
    sys.stdout.write(json.dumps(item) + "\n")
    sys.stdout.flush()


async def main() -> None:
    loop = asyncio.get_running_loop()
    request = json.loads(await loop.run_in_executor(None, sys.stdin.readline))
    config = RTCConfiguration(
        iceServers=[RTCIceServer(**request["server"])],
        iceTransportPolicy=RTCIceTransportPolicy.RELAY,
    )
    pc = RTCPeerConnection(config)

    @pc.on("datachannel")
    def on_channel(channel) -> None:
        def report_pair() -> None:
            pair = next(iter(pc.sctp.transport.transport._connection._nominated.values()))
            emit(
                {
                    "pair": [
                        pair.local_candidate.type,
                        pair.local_candidate.host,
                        pair.remote_candidate.type,
                        pair.remote_candidate.host,
                    ]
                }
            )

        @channel.on("message")
        def on_message(message) -> None:
            text = message if isinstance(message, str) else "bytes:" + message.hex()
            emit({"message": text})
            channel.send("echo:" + message if isinstance(message, str) else b"echo:" + message)

        channel.send("hello from aiortc")
        report_pair()

    await pc.setRemoteDescription(RTCSessionDescription(request["offer"], "offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    emit({"answer": pc.localDescription.sdp})
    await loop.run_in_executor(None, sys.stdin.readline)  # until the test closes stdin
    await pc.close()


if __name__ == "__main__":
    asyncio.run(main())
