"""aiortc's RTCPeerConnection in a process of its own, for comparing open times with
the same browser page (test_browser_open_time.py).

    python aiortc_process.py offer|answer

JSON lines. Prints {"ready": true} once imported. "offer": makes a channel labelled
"timed", prints {"sdp": offer}, reads {"sdp": answer}. "answer": reads {"sdp": offer},
prints {"sdp": answer}. Then reads {"candidate": "candidate:..." | null} lines (trickled
remote candidates) until stdin closes. Loopback only (aioice's interfaces: 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import json
import sys

LOOPBACK = "127.0.0.1"


def emit(item: dict) -> None:
    sys.stdout.write(json.dumps(item) + "\n")
    sys.stdout.flush()


def loopback_candidates_only(sdp: str) -> str:
    lines = sdp.split("\r\n")
    return "\r\n".join(
        line for line in lines if not line.startswith("a=candidate") or f" {LOOPBACK} " in line
    )


async def main(role: str) -> None:
    import aioice.ice
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.sdp import candidate_from_sdp

    aioice.ice.get_host_addresses = lambda **_: [LOOPBACK]
    loop = asyncio.get_running_loop()
    emit({"ready": True})
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        if role == "offer":
            pc.createDataChannel("timed")
            await pc.setLocalDescription(await pc.createOffer())
            emit({"sdp": loopback_candidates_only(pc.localDescription.sdp)})
            answer = json.loads(await loop.run_in_executor(None, sys.stdin.readline))["sdp"]
            await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        else:
            offer = json.loads(await loop.run_in_executor(None, sys.stdin.readline))["sdp"]
            await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            emit({"sdp": loopback_candidates_only(pc.localDescription.sdp)})
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            text = json.loads(line)["candidate"]
            if text is None:
                await pc.addIceCandidate(None)
                continue
            candidate = candidate_from_sdp(text.removeprefix("candidate:"))
            candidate.sdpMid, candidate.sdpMLineIndex = "0", 0
            await pc.addIceCandidate(candidate)
    finally:
        await pc.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
