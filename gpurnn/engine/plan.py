"""How the engine runs a step: the one place where kernels and schedules are chosen.

A :class:`Plan` says *how* a model computes, never *what*: every plan gives the same loss
and gradients (to the last bit where the same operations run in the same order, to
rounding otherwise), and tests hold every choice to the plain one. A model holds one plan
(``model.plan``); ``loss_and_grads`` takes per-call overrides of its fields. The time loops,
cells and output layer do not take flags of their own: they ask the plan they are handed.

Fields:

* ``kernels``: ``"plain"`` runs every step as array-module operations, the same code on
  NumPy and CuPy and the reference for everything else; ``"fused"`` runs the cells' step
  maths, the softmax row blocks and the optimizer updates as the CUDA kernels under
  ``gpurnn/engine/kernels/`` where the arrays are CuPy's (NumPy arrays always run plain).
* ``memory_budget``: None keeps every state for the backward sweep; a byte count (an int,
  or a string such as ``"64MB"``) bounds what the engine holds during a step, and the sweep
  recomputes the states it did not keep, on the fastest schedule that fits
  (:mod:`gpurnn.engine.recompute`: Chen et al.'s, or Gruslys et al.'s nested checkpoints).
* ``checkpoint_every``: the plain every-k policy instead of a budget: keep the state every
  k steps and recompute each k-step block once (one extra forward pass); ``"sqrt"`` takes
  k = ⌈√T⌉ (Chen et al.: memory ~ 2√T states).
* ``block_steps``: the time grid, steps per block (None: about 1024 batch·time rows). The
  engine projects, runs the output layer and reduces the gradients block by block, in the
  same order under every schedule, so a budget changes what is kept and never a bit of the
  gradients; recomputation works in whole blocks.
* ``time``: how a cell whose recurrence is linear and diagonal (minGRU, minLSTM, LRU:
  :mod:`gpurnn.engine.diagonal`) crosses the steps of a block: ``"scan"`` by a parallel
  associative scan forward and a reverse scan back (:mod:`gpurnn.engine.scan`), ``"loop"``
  step by step, ``"auto"`` (the default) the scan for blocks long enough that it is faster.
  Equal to rounding (bounded in :mod:`gpurnn.engine.scan`); other cells always loop, and
  windowed truncation (``truncate=k``) sweeps back by the loop.
"""
from __future__ import annotations

import dataclasses
import numbers
import re

from .precision import check_precision

__all__ = ["Plan", "KERNELS", "TIME", "parse_bytes", "parse_steps"]

KERNELS = ("plain", "fused")
TIME = ("auto", "scan", "loop")  # the ``time`` field (diagonal cells: scan or loop per block)

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(value, name: str = "memory_budget"):
    """None, or a positive byte count from an int or a string like ``"64MB"``/``"1.5GiB"``
    (k/M/G/T are powers of 1000, Ki/Mi/Gi/Ti powers of 1024)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{name} must be None, a number of bytes or a string like '64MB', "
                        f"got {value!r}")
    if isinstance(value, numbers.Integral):
        size = int(value)
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*", value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(f"{name} must be a number of bytes or a string like '64MB', "
                             f"'512KiB', '1.5GB'; got {value!r}")
        size = int(float(match.group(1)) * _UNITS[unit])
    else:
        raise TypeError(f"{name} must be None, a number of bytes or a string like '64MB', "
                        f"got {type(value).__name__}")
    if size <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return size


def parse_steps(value, name: str, allow_sqrt: bool = False):
    """None, a positive int of steps, or (``allow_sqrt``) the string "sqrt"."""
    if value is None or (allow_sqrt and value == "sqrt"):
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        choices = "a positive int or 'sqrt'" if allow_sqrt else "a positive int"
        raise ValueError(f"{name} must be None or {choices}, got {value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class Plan:
    """How a model computes a step (see the module docstring).

    Args:
        kernels: "plain" (array-module operations, the reference) or "fused" (CUDA kernels
            on CuPy arrays; NumPy arrays run plain).
        memory_budget: None to keep every state, or bytes (int or "64MB") for the step.
        checkpoint_every: None, k steps (keep a state every k steps), or "sqrt".
        block_steps: None (about 1024 batch·time rows) or steps per block of the grid.
        precision: "float32", "tf32", "bf16-mixed" or "fp16-mixed"
            (:mod:`gpurnn.engine.precision`).
        time: "auto", "scan" or "loop": how diagonal cells cross a block's steps.
    """

    kernels: str = "plain"
    memory_budget: object = None
    checkpoint_every: object = None
    block_steps: object = None
    precision: str = "float32"   # mixed precision: gpurnn.engine.precision
    time: str = "auto"

    def __post_init__(self):
        if self.time not in TIME:
            raise ValueError(f"unknown time {self.time!r}; expected one of "
                             f"{', '.join(map(repr, TIME))}")
        if self.kernels not in KERNELS:
            raise ValueError(f"unknown kernels {self.kernels!r}; expected one of "
                             f"{', '.join(map(repr, KERNELS))}")
        object.__setattr__(self, "memory_budget", parse_bytes(self.memory_budget))
        object.__setattr__(self, "checkpoint_every",
                           parse_steps(self.checkpoint_every, "checkpoint_every", True))
        object.__setattr__(self, "block_steps", parse_steps(self.block_steps, "block_steps"))
        check_precision(self.precision)
        if self.memory_budget is not None and self.checkpoint_every is not None:
            raise ValueError("give memory_budget or checkpoint_every, not both: the budget "
                             "chooses where to checkpoint")

    def replace(self, **changes) -> "Plan":
        """This plan with some fields changed (``None`` values in ``changes`` are ignored,
        so per-call keywords that were not given leave the model's plan as it is)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        # The two memory policies exclude each other: the one given replaces the other.
        for given, other in (("memory_budget", "checkpoint_every"),
                             ("checkpoint_every", "memory_budget")):
            if given in changes and other not in changes:
                changes[other] = None
        return dataclasses.replace(self, **changes) if changes else self
