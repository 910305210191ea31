"""Adaptive circuit windows under a relay-wide memory budget (docs/PROTOCOL.md 5.2).

Each circuit's window is chosen when it opens and announced in its limits:
``limits.window`` while at most an eighth of the budget's free part is asked for, less as
the budget fills (never below ``min_window``). That bounds what the open circuits may
hold together. Then, while it lives, a direction's *effective* window is its fair share of
the budget among the circuits open now (between the floor and its announced window):
credit the receiver returns beyond it is held back by the relay (``withheld``) and passed
on as soon as the share grows again. A lone busy circuit gets a window that covers a
loopback or LAN bandwidth-delay product; two thousand get equal small ones, whatever order
they opened in. Nothing changes on the wire: a sender only ever sees less credit, later.

Pure arithmetic: :class:`~darkswap_trio.proto.circuits.CircuitTable` owns one
:class:`WindowBudget` and asks it.
"""

from __future__ import annotations

from .signaling import CircuitLimits

__all__ = ["WindowBudget"]


class WindowBudget:
    """``budget`` bytes (0: no budget, every circuit gets ``limits.window``) shared by the
    windows of the open circuits, both directions; ``min_window`` is the floor (at least
    ``max_data_frame``, at most ``limits.window``)."""

    __slots__ = ("budget", "min_window", "committed")

    def __init__(self, budget: int = 0, min_window: int = 0) -> None:
        self.budget = budget
        self.min_window = min_window
        self.committed = 0  # 2 x the announced window of every open circuit

    def floor(self, limits: CircuitLimits) -> int:
        return max(limits.max_data_frame, min(self.min_window, limits.window))

    def next_window(self, limits: CircuitLimits) -> int:
        """The window a circuit opened now would get (announced in its limits)."""
        if not self.budget:
            return limits.window
        free = max(0, self.budget - self.committed)
        # An eighth of what is free, in 4 KiB steps: later circuits still find room.
        return max(min(limits.window, free // 8 & ~4095), self.floor(limits))

    def effective(self, limits: CircuitLimits, open_circuits: int) -> int:
        """The credit one direction of a circuit with ``limits`` may hold now."""
        if not self.budget:
            return limits.window
        share = self.budget // (2 * max(1, open_circuits)) & ~4095
        return min(limits.window, max(share, self.floor(limits)))

    def refill_below(self, limits: CircuitLimits, open_circuits: int) -> int:
        """A sender whose balance falls below this gets withheld credit at once (up to its
        effective window): half the effective window, at least one full frame."""
        effective = self.effective(limits, open_circuits)
        return min(effective, max(effective // 2, limits.max_data_frame))

    @staticmethod
    def grant(available: int, balance: int, window: int, effective: int) -> tuple[int, int]:
        """(credit to pass on now, credit to keep withheld) out of ``available`` (returned
        now plus withheld before): the balance reaches at most ``effective``, and what is
        kept never lets it pass ``window`` later (over-granted credit is dropped)."""
        granted = max(0, min(available, effective - balance))
        return granted, max(0, min(available - granted, window - balance - granted))
