"""One error type for bad input: the CLI turns it into one line on stderr and exit code 2."""

from __future__ import annotations

import difflib


class BenchError(Exception):
    """A user-facing error: the message says what was wrong and what is valid."""


def did_you_mean(name: str, valid: list[str]) -> str:
    """A short hint with the closest valid names (difflib), or the whole list when nothing is close."""
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    if close:
        return f"did you mean {', '.join(repr(c) for c in close)}? valid: {', '.join(valid)}"
    return f"valid: {', '.join(valid)}"
