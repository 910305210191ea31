"""How long a data channel takes to open against headless Chromium, either side offering.

From the last description applied (ours, or the answer handed to the page) to a channel
we can use: ICE, DTLS, SCTP and DCEP on loopback take 10-50 ms. When Chromium answered
our offer it took about 1 s: Chromium starts DTLS as soon as its own ICE check
succeeded, before our ICE selects a pair, and we dropped our reply, so the handshake
waited on a 1 s retransmission timer. The limit below is far under that.

One sample can be slow for reasons that have nothing to do with the protocol: on a
loaded machine Chromium's threads or ours wait for a CPU (a 2-core box with two busy
loops and other tests running was measured at up to 330 ms). So each test opens
OPENS connections against one page and asserts that the fastest is under the limit,
and for every one of them the deterministic signs of the old bug: no DTLS
retransmission and nothing dropped for want of a candidate pair. The regression is
deterministic (a dropped first reply always costs a retransmission), so one fast open
out of OPENS cannot hide it; tests/webrtc/test_early_dtls.py pins the two orderings down.
"""

from __future__ import annotations

import pytest
import trio
from test_browser_chromium import (  # the page, its harness and the namespace fixture
    CONFIG,
    TIME_LIMIT,
    Page,
    chromium_page,
    loopback_only_namespace,  # noqa: F401
    needs_chromium,
)

from darkswap_trio.webrtc import PeerConnection, open_peer_connection

OPEN_TIME_LIMIT = 0.3  # seconds; the bug cost 1 s
OPENS = 3


async def timed_open(page: Page, pc: PeerConnection, mode: str) -> float:
    """One connection and channel opened with the page; returns the seconds it took."""
    if mode == "browser-offers":
        offer = (await page.expect("offer"))["sdp"]
        await pc.set_remote_description(offer, "offer")
        answer = await pc.create_answer()
        started = trio.current_time()
        await page.command(type="answer", sdp=answer)
        await pc.accept_data_channel()
    else:
        await page.command(type="offer", sdp=await pc.create_offer())
        answer = (await page.expect("answer"))["sdp"]
        started = trio.current_time()
        await pc.set_remote_description(answer, "answer")
        async for candidate in pc.local_candidates():
            await page.command(type="candidate", candidate=candidate)
        await pc.create_data_channel("timed")
    elapsed = trio.current_time() - started
    await page.expect("open")  # the page's side of the same channel
    return elapsed


async def reset(page: Page) -> None:
    """A fresh RTCPeerConnection in the page; the old one closes with its channels
    detached, so our side closing later is no error there."""
    await page.command(type="reset")
    await page.expect("reset")


async def measure(page: Page, pc: PeerConnection, mode: str, times: list[float]) -> None:
    times.append(await timed_open(page, pc, mode))
    stats = pc.statistics()
    assert stats.datagrams_dropped_no_pair == 0
    assert stats.dtls is not None and stats.dtls.retransmissions == 0, stats.dtls


@needs_chromium
@pytest.mark.usefixtures("loopback_only_namespace")
@pytest.mark.parametrize("mode", ["browser-offers", "we-offer"])
async def test_data_channel_opens_fast(mode):
    times: list[float] = []
    with trio.fail_after(TIME_LIMIT):
        async with open_peer_connection(CONFIG) as first, chromium_page(mode, first) as page:
            await measure(page, first, mode, times)
            await reset(page)
            for _ in range(OPENS - 1):
                async with open_peer_connection(CONFIG) as pc:
                    page.use(pc)
                    await measure(page, pc, mode, times)
                    await reset(page)  # before our ABORT reaches the page's channels
    shown = ", ".join(f"{t * 1000:.0f} ms" for t in times)
    assert min(times) < OPEN_TIME_LIMIT, f"{mode}: the data channel took {shown} to open"
    print(f"open times, {mode}: {shown}")
