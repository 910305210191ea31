"""Fixtures of the NAT lab: the shared internet + relay, and the ``netlab`` marker.

Run alone with ``pytest -m netlab``. Needs root, iproute2, nftables and conntrack
(scripts/install-netlab.sh); without them every lab test is skipped with the reason,
except in CI (``CI`` set) as root, where a lab that cannot run is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from netlab_harness import RESULTS, STUN_PORT, Internet, RelayProcess
from netlab_topology import RELAY_IP, Lab, lab_unavailable


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.netlab)


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    write = terminalreporter.write_line
    write("")
    write("NAT lab measurements (ms; ttfb = connect_to_peer call to first message at B)")
    write(f"{'A':<26}{'B':<22}{'outcome':<10}{'ttfb':>8}{'direct':>9}{'linger':>9}")

    def ms(row, key):
        value = row.get(key)
        return "-" if value is None else f"{value * 1000:.0f}"

    for row in RESULTS:
        write(
            f"{row['a']:<26}{row['b']:<22}{row['outcome']:<10}{ms(row, 'ttfb'):>8}"
            f"{ms(row, 'direct'):>9}{ms(row, 'linger'):>9}"
        )
        for key, value in row.items():
            if key not in ("a", "b", "outcome", "ttfb", "direct", "linger"):
                write(f"    {key}: {value}")


@pytest.fixture(scope="module")
def internet(tmp_path_factory):
    """The lab's internet namespace running the real relay (STUN on); torn down after."""
    reason = lab_unavailable()
    if reason is not None:
        if os.environ.get("CI") and os.geteuid() == 0:
            pytest.fail(f"CI runs as root, so the NAT lab must run: {reason}")
        pytest.skip(reason)
    lab = Lab()
    directory = tmp_path_factory.mktemp("netlab")
    relay = RelayProcess(lab, directory / "relay.key", directory / "relay.log")
    try:
        lab.build_internet()
        relay.start()
        yield Internet(lab, relay.multiaddr, f"{RELAY_IP}:{STUN_PORT}", relay)
    finally:
        relay.stop()
        lab.close()
