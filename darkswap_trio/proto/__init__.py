"""Sans-IO protocol cores: pure and synchronous, no trio, no sockets, no clock.

Each core takes input with ``now`` passed in and is drained through
``poll_transmit()`` / ``poll_event()`` / ``poll_timeout()``.
"""
