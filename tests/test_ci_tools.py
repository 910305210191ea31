"""In CI (``CI`` set, as root) every outside program the tests run against is installed by
scripts/test.sh, so no test that needs one may pass CI by skipping."""

import os
import shutil

import pytest

# Program -> the script of scripts/ that installs it (and the tests that need it).
TOOLS = {
    "chromium": "install-browser.sh (tests/interop browser tests)",
    "nft": "install-netlab.sh (tests/netlab)",
    "conntrack": "install-netlab.sh (tests/netlab)",
    "turnserver": "install-coturn.sh (coturn as TURN server: webrtc, netlab, benchmarks)",
    "turnutils_uclient": "install-coturn.sh (coturn as TURN client: tests/relay)",
    "redis-server": "install-redis.sh (tests/relay/test_cluster_*)",
}


@pytest.mark.parametrize("program", sorted(TOOLS))
def test_ci_has_every_outside_program(program):
    if not (os.environ.get("CI") and os.geteuid() == 0):
        pytest.skip("checked only in CI as root, where scripts/test.sh installs these")
    assert shutil.which(program) or os.path.exists(f"/usr/sbin/{program}"), (
        f"{program} is missing: scripts/{TOOLS[program]} should have installed it"
    )
