"""A position in the server's message, counted in the whole text the user gave instead.

``predict`` sends its text one character per message and ``generate`` its prompt whole, so the
server can only count within its message; the user typed the flag's whole text and wants to
find the character in it.
"""

from __future__ import annotations

import re


def within_text(message: str, offset: int, flag: str) -> str:
    """``message`` with "at position N" read as position ``offset + N`` of ``flag``'s text."""
    return re.sub(r"at position (\d+)", lambda m: f"at position {offset + int(m.group(1))} of {flag}", message)
