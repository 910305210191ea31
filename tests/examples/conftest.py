"""The relay process every example test runs against."""

import pytest
from example_processes import start_relay, stop


@pytest.fixture
def relay_process():
    relay = start_relay()
    yield relay
    stop(relay.process)
