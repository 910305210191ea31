import pytest

from darkswap_trio.testing import running_relay


@pytest.fixture
async def relay_server():
    async with running_relay() as server:
        yield server
