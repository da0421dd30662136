"""Small helpers shared by backends."""

from __future__ import annotations


def apply_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """Cut `text` at the first stop string; returns (text, whether a stop string was found)."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
