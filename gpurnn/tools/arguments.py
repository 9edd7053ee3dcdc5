"""argparse value types and the usage error shared by every ``gpurnn`` subcommand."""
from __future__ import annotations

import argparse

__all__ = ["UsageError", "int_at_least", "positive_int", "positive_float", "int_or_none"]


class UsageError(Exception):
    """A problem the user can fix; reported as one line, exit code 2."""


def int_at_least(minimum: int):
    """An argparse ``type`` for integers >= ``minimum``, with a message that says so."""
    def parse(text):
        value = int(text)
        if value < minimum:
            what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value
    return parse


positive_int = int_at_least(1)


def positive_float(text):
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def int_or_none(text):
    """An integer, or None for the text "none" (``--truncate none``: full BPTT)."""
    return None if text.strip().lower() == "none" else int(text)
