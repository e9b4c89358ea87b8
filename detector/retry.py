"""Retrying with exponential backoff: the one schedule every retry loop of detector follows."""

from __future__ import annotations


class Backoff:
    """Delays from ``first``, doubling at each failure up to ``longest``; :meth:`reset` after a success."""

    def __init__(self, first: float, longest: float) -> None:
        self.first, self.longest = first, longest
        self.failures = 0

    def next(self) -> float:
        """The delay before the next try; counts one more failure."""
        self.failures += 1
        return min(self.longest, self.first * 2 ** (self.failures - 1))

    def reset(self) -> None:
        self.failures = 0
