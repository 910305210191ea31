"""The README's main command runs this demo: it must keep working."""

import trio

from darkswap_trio.demo import run_demo


async def test_demo_exchanges_through_a_real_relay(capsys):
    with trio.fail_after(20):
        result = await run_demo(messages=5, size=512)
    assert result["bytes_sent"] == 5 * 512
    assert result["bytes_received"] == 5 * 512
    assert result["relay_latency_ms"] > 0
    out = capsys.readouterr().out
    assert "path: relay" in out and "connected via relay" in out
