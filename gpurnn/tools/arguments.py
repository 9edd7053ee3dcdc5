"""argparse value types and the usage error shared by every ``gpurnn`` subcommand."""
from __future__ import annotations

import argparse
import re

from ..engine.recurrences.activations import ACTIVATIONS
from ..engine.models.factory import CELL_TYPES

__all__ = ["UsageError", "int_at_least", "positive_int", "positive_float", "int_or_none",
           "DEVICE_HELP", "add_model_arguments", "plain_text"]


class UsageError(Exception):
    """A problem the user can fix; reported as one line, exit code 2."""


def int_at_least(minimum: int):
    """An argparse ``type`` for integers >= ``minimum``, with a message that says so."""
    def parse(text):
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value
    return parse


positive_int = int_at_least(1)


def positive_float(text):
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def float_in(low: float, high: float):
    """An argparse ``type`` for numbers in (low, high]: NaN, infinities and values outside
    are refused with the range in the message."""
    def parse(text):
        value = float(text)
        if not low < value <= high:
            raise argparse.ArgumentTypeError(f"expected a number above {low:g} and at most "
                                             f"{high:g}, got {text}")
        return value
    return parse


def int_or_none(text):
    """An integer, or None for the text "none" (``--truncate none``: full BPTT)."""
    return None if text.strip().lower() == "none" else int(text)


DEVICE_HELP = ("auto (the GPU when CuPy finds one, else the CPU), cpu, cuda, cuda:N or cpu-strict "
               "(the CPU with CuPy's rules) (default auto)")


def plain_text(text: str) -> str:
    """A docstring's reST as the plain text of ``--help``: ``code``, :role:`name`, **bold**
    and `title` marks dropped, the words kept."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text)
    text = re.sub(r"``(.+?)``", r"\1", text, flags=re.S)
    text = re.sub(r"\*\*(.+?)\*\*", r"\1", text, flags=re.S)
    return re.sub(r"`([^`]+)`", r"\1", text)


def add_model_arguments(p, *, hidden: int):
    """--cell, --layers, --hidden and --activation: the flags of every command that builds a
    model (``gpurnn train`` takes the same from TrainConfig)."""
    p.add_argument("--cell", choices=CELL_TYPES, default="elman",
                   help="recurrent cell: elman (the tutorial's RNN), gru or lstm (default elman)")
    p.add_argument("--layers", type=positive_int, default=1, help="stacked layers (default 1)")
    p.add_argument("--hidden", type=positive_int, default=hidden,
                   help=f"hidden size of each layer (default {hidden})")
    p.add_argument("--activation", choices=ACTIVATIONS, default="tanh",
                   help="hidden activation f of the elman cell (default tanh)")
