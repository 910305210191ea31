"""The README's main command runs this demo: it must keep working and show the mission."""

import trio

from darkswap_trio.demo import run_demo


async def test_demo_opens_on_the_relay_upgrades_and_summarises(capsys):
    with trio.fail_after(30):
        result = await run_demo(messages=6, size=512)
    out = capsys.readouterr().out
    assert result["bytes_sent"] == result["bytes_received"] == 6 * 512
    assert result["relay_latency_ms"] > 0
    # The link opens on the relay (the demo gives it a head start), then goes direct.
    assert "link to bob open via relay" in out and "accepted alice's link via relay" in out
    assert result["upgrade_ms"] is not None and "ConnectionUpgraded" in out
    assert result["path"] == "direct" and result["messages_direct"] >= 3
    assert result["relay_bytes_sent"] + result["direct_bytes_sent"] == 6 * 512
    assert result["direct_bytes_sent"] > 0
    assert out.count("echoed via") == 6 and "echoed via direct" in out
    assert "summary" in out and "final path             direct" in out
