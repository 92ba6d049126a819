"""Counts in words: "1 study", "2 studies", never "1 studies"."""

from __future__ import annotations

_PLURALS = {"study": "studies", "body part": "body parts"}


def counted(n: int, singular: str) -> str:
    """``n`` and the noun in the number it needs."""
    return f"{n} {singular if n == 1 else _PLURALS.get(singular, singular + 's')}"
