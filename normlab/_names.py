"""Suggestions for a misspelt name, shared by every lookup that takes one."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, options: Iterable[str], quote: bool = False) -> str:
    """``"; did you mean a, b?"`` with up to three close matches, or ``""``."""
    close = difflib.get_close_matches(str(name), list(options), n=3)
    if not close:
        return ""
    return f"; did you mean {', '.join(repr(c) if quote else c for c in close)}?"
