"""The SDK side of the relay: one signaling session per relay server (``_session``), the
manager that keeps sessions to every configured relay (``_manager``), and the circuits
carried over them (``_circuit``). The server side is the top-level package ``relay``.
"""
