"""Recomputation schedules: which states BPTT keeps, and which it recomputes, in a memory budget.

Time is cut into *blocks* of ``block`` steps (the engine's grid: every block is projected,
run, put through the output layer and reduced into the gradients on its own, in the same
order whatever the schedule, so a schedule changes what is kept, never the arithmetic).
A block's *cache* is everything its backward step needs (projected inputs, states, gate
values...); a *checkpoint* is only the recurrent state at a block boundary, far smaller.
The backward sweep needs the cache of each block in turn, last block first; a block whose
cache was not kept is recomputed from the nearest checkpoint before it.

Schedules, cheapest first (``forwards`` counts block forwards, the first pass included):

* keep everything: n block caches, n forwards ("keep" without a budget, whose buffers stay
  for the next call; "fits" in a budget, each cache freed once its block is done);
* keep the last ``kept`` caches of the first pass and a checkpoint at every other block
  boundary: each remaining block is recomputed once (Chen et al. 2016's schedule; with
  blocks of √T steps, memory ~ √T and one extra forward pass);
* fewer checkpoint slots than boundaries: Gruslys et al. 2016's dynamic programme
  (BPTT-HSM) places nested checkpoints for the fewest recomputed blocks,

      F(t, m) = min_{1≤y<t} [ y + F(t − y, m − 1) + F(y, m) ],  F(1, m) = 1,
      F(t, 0) = t (t + 1) / 2,

  for t blocks and m free checkpoint slots: run y blocks ahead, checkpoint, reverse the
  right part with one slot fewer, then the left part with the slot back. Its solution has
  the closed form of binomial checkpointing (Griewank 1992): with s = m + 1 and r the
  least integer with C(s + r, s) ≥ t,  F(t, m) = (r + 1) t − C(s + r, s + 1).
  :func:`min_forwards` computes that (fast, for thousands of blocks),
  :func:`min_forwards_table` the programme itself, and the tests hold the two equal;
  :func:`optimal_split` takes the programme's y from the closed form.

:func:`make_schedule` picks the fastest of these that fits a budget, from a
:class:`Footprint` (the bytes of one cache, of one checkpoint...); :func:`actions` lists
what the engine does, in order.
"""
from __future__ import annotations

import dataclasses
import math

import numpy

__all__ = ["BLOCK_ROWS", "Footprint", "Schedule", "block_steps", "fitting_block",
           "chen_interval",
           "min_forwards", "min_forwards_table", "optimal_split", "make_schedule", "actions",
           "format_bytes"]

# Batch·time rows per block on the default grid: large enough that a block's GEMMs (the
# weight gradients, the output layer) run at full speed, small enough that one block's
# cache is a small part of a budget.
BLOCK_ROWS = 1024


def block_steps(batch: int, steps: int, every=None, block=None) -> int:
    """Steps per block: ``every`` (the every-k policy, "sqrt" for ⌈√T⌉), else ``block``
    (a plan's fixed grid), else about BLOCK_ROWS rows; never more than ``steps``."""
    if every == "sqrt":
        size = chen_interval(steps)
    elif every is not None:
        size = every
    elif block is not None:
        size = block
    else:
        size = -(-BLOCK_ROWS // batch)
    return max(1, min(int(size), steps))


def chen_interval(steps: int) -> int:
    """⌈√T⌉: Chen et al.'s checkpoint interval, memory ~ 2√T states for one extra forward."""
    return max(1, math.isqrt(steps - 1) + 1) if steps > 1 else 1


# --------------------------------------------------------------------- the programme

def min_forwards_table(blocks: int, slots: int):
    """Gruslys et al.'s dynamic programme, computed directly: F[t, m] for t ≤ ``blocks``,
    m ≤ ``slots`` (F[0, ·] = 0). O(blocks² · slots): the reference for the closed form."""
    F = numpy.zeros((blocks + 1, slots + 1), dtype=numpy.int64)
    t = numpy.arange(blocks + 1)
    F[:, 0] = t * (t + 1) // 2
    for m in range(1, slots + 1):
        F[1, m] = 1
        for n in range(2, blocks + 1):
            y = numpy.arange(1, n)
            F[n, m] = (y + F[n - y, m - 1] + F[y, m]).min()
    return F


def min_forwards(t, m):
    """F(t, m), the fewest block forwards that reverse ``t`` blocks with ``m`` free
    checkpoint slots (the start state given), in closed form; ``t`` may be an array.

    The increments F(t) − F(t − 1) are r + 1 for C(s + r − 1, s) < t ≤ C(s + r, s),
    s = m + 1, so F(t) = t + r t − Σ_{j<r} C(s + j, s) = (r + 1) t − C(s + r, s + 1).
    """
    t = numpy.asarray(t, dtype=numpy.int64)
    s = m + 1
    betas = [1]                                      # C(s + r, s), r = 0, 1, ...
    while betas[-1] < max(int(t.max(initial=1)), 1):
        r = len(betas)
        betas.append(betas[-1] * (s + r) // r)
    r = numpy.searchsorted(numpy.array(betas, dtype=numpy.int64), t)   # least r: C ≥ t
    below = numpy.array([math.comb(s + k, s + 1) for k in range(len(betas))], dtype=numpy.int64)
    return numpy.where(t <= 0, 0, (r + 1) * t - below[r])


def optimal_split(t: int, m: int) -> int:
    """The y of the programme for t blocks and m ≥ 1 slots (t ≥ 2): where to checkpoint."""
    y = numpy.arange(1, t)
    cost = y + min_forwards(t - y, m - 1) + min_forwards(y, m)
    return int(y[numpy.argmin(cost)])


# --------------------------------------------------------------------- fitting a budget

@dataclasses.dataclass(frozen=True)
class Footprint:
    """Bytes the engine needs, per the grid of blocks.

    forward: one block's cache after its forward; backward: what a block's backward adds
    while it runs (freed after); checkpoint: one boundary state; fixed: everything that
    does not grow with time (gradients, the output layer's parameter-sized buffers, the
    carried states and window of errors).
    """

    forward: int
    backward: int
    checkpoint: int
    fixed: int

    def need(self, caches: int, checkpoints: int) -> int:
        return (self.fixed + caches * self.forward + self.backward
                + checkpoints * self.checkpoint)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How one step runs: ``blocks`` blocks of ``block`` steps (the last may be shorter);
    the last ``kept`` blocks' caches are kept from the first pass; the others are
    reversed with ``slots`` checkpoint slots; ``forwards`` block forwards in all;
    ``bytes``: the footprint's estimate of the peak (None without a footprint)."""

    steps: int
    block: int
    kept: int
    slots: int
    policy: str
    forwards: int
    bytes: int = None
    footprint: Footprint = None

    @property
    def blocks(self) -> int:
        return -(-self.steps // self.block)

    def bounds(self, i: int):
        return i * self.block, min((i + 1) * self.block, self.steps)


def _forwards(blocks: int, kept: int, slots: int) -> int:
    prefix = blocks - kept
    if prefix == 0:
        return blocks
    # The first pass runs the prefix once; the programme's first chain is that pass, and
    # the last prefix block's cache survives it.
    return kept + int(min_forwards(prefix, slots))


def fitting_block(block: int, budget: int, footprint_of) -> int:
    """The longest block, from ``block`` halving down to one step, whose cache fits
    ``budget`` with nothing else kept (``footprint_of(block)`` gives a :class:`Footprint`);
    one step when none does (make_schedule then says what the least budget is). Shorter
    blocks regroup the sums over time (equal to ~1e-16, not bit for bit) and run slower
    products, which is why a budget that fits the default grid keeps it."""
    while block > 1 and footprint_of(block).need(1, 0) > budget:
        block = max(1, block // 2)
    return block


def make_schedule(steps: int, block: int, budget=None, footprint: Footprint = None,
                  every: bool = False) -> Schedule:
    """The fastest schedule whose estimated peak fits ``budget`` bytes.

    ``budget`` None keeps everything; ``every`` (the every-k policy) checkpoints every
    block boundary and keeps one cache. Raises ValueError when not even one block's cache
    (with nothing else kept) fits, naming the bytes needed.
    """
    n = -(-steps // block)
    if every:
        bytes_ = footprint.need(1, n - 1) if footprint else None
        return Schedule(steps, block, 0, n - 1, "every", _forwards(n, 0, n - 1), bytes_,
                        footprint)
    if budget is None:
        # Every block's backward buffers are kept too, for the next call to reuse.
        bytes_ = footprint.need(n, 0) + (n - 1) * footprint.backward if footprint else None
        return Schedule(steps, block, n, 0, "keep", n, bytes_, footprint)
    if footprint.need(n, 0) <= budget:                   # each cache freed after its block
        return Schedule(steps, block, n, 0, "fits", n, footprint.need(n, 0), footprint)
    least = footprint.need(1, 0)
    if least > budget:
        shorter = (" or make blocks shorter (Plan(block_steps=...))" if block > 1 else
                   ", the least that one step of BPTT can run in")
        raise ValueError(
            f"memory_budget of {format_bytes(budget)} is below what one block of {block} "
            f"step{'s' if block > 1 else ''} needs: at least {format_bytes(least)} (the "
            f"block's cache {format_bytes(footprint.forward + footprint.backward)} plus "
            f"{format_bytes(footprint.fixed)} that does not grow with time); raise the "
            f"budget{shorter}")
    # Checkpoints at every boundary of the prefix, and as many kept caches as fit.
    if footprint.need(1, n - 1) <= budget:
        spare = budget - footprint.need(1, n - 1)
        # need(k + 1, n − 1 − k) = need(1, n − 1) + k (forward − checkpoint)
        kept = min(n - 1, spare // max(1, footprint.forward - footprint.checkpoint))
        slots = n - 1 - kept
        return Schedule(steps, block, kept, slots, "checkpoints",
                        _forwards(n, kept, slots), footprint.need(kept + 1, slots), footprint)
    slots = (budget - footprint.need(1, 0)) // footprint.checkpoint
    return Schedule(steps, block, 0, slots, "nested", _forwards(n, 0, slots),
                    footprint.need(1, slots), footprint)


# --------------------------------------------------------------------- the actions

def actions(schedule: Schedule):
    """What the engine does, in order (a generator of tuples):

    ``("load", j)``: the running state becomes the checkpoint at boundary j (0 is h0);
    ``("advance", i, cache)``: run block i from the running state, which moves to
    boundary i + 1; ``cache`` None (discard), "work" (the one working cache) or "keep";
    ``("save", j)`` / ``("free", j)``: store / drop the running state as checkpoint j;
    ``("back", i)``: the backward step of block i, whose cache must be there.

    Blocks are advanced for the first time in order 0, 1, ..., n − 1.
    """
    n, kept = schedule.blocks, schedule.kept
    prefix = n - kept
    tail_done = prefix == 0
    if tail_done:
        yield from _tail(0, n)
        return
    for action in _reverse(prefix, schedule.slots):
        yield action
        if not tail_done and action == ("advance", prefix - 1, "work"):
            yield from _tail(prefix, n)
            tail_done = True


def _tail(start, stop):
    for i in range(start, stop):
        yield ("advance", i, "keep")
    for i in reversed(range(start, stop)):
        yield ("back", i)


def _reverse(blocks, slots):
    """Gruslys et al.'s schedule for blocks 0 … blocks − 1 from h0 with ``slots`` slots."""
    cursor = 0
    stack = [("segment", 0, blocks, slots)]
    while stack:
        item = stack.pop()
        if item[0] == "free":
            yield item
            continue
        _, start, t, m = item
        if cursor != start:
            yield ("load", start)
            cursor = start
        if t == 1:
            yield ("advance", start, "work")
            yield ("back", start)
            cursor = start + 1
        elif m >= t - 1:                         # a checkpoint at every boundary
            for i in range(start, start + t - 1):
                yield ("advance", i, None)
                yield ("save", i + 1)
            yield ("advance", start + t - 1, "work")
            yield ("back", start + t - 1)
            for i in reversed(range(start, start + t - 1)):
                yield ("load", i)
                yield ("advance", i, "work")
                yield ("back", i)
                yield ("free", i + 1)
            cursor = start + 1
        elif m == 0:                             # no slot: run from the start each time
            for last in reversed(range(start, start + t)):
                if cursor != start:
                    yield ("load", start)
                for i in range(start, last):
                    yield ("advance", i, None)
                yield ("advance", last, "work")
                yield ("back", last)
                cursor = last + 1
        else:
            y = optimal_split(t, m)
            for i in range(start, start + y):
                yield ("advance", i, None)
            yield ("save", start + y)
            cursor = start + y
            stack.append(("segment", start, y, m))
            stack.append(("free", start + y))
            stack.append(("segment", start + y, t - y, m - 1))


def format_bytes(size: int) -> str:
    """``"70,254,592 bytes (67.0 MiB)"``: exact, and readable."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size:,} bytes ({size / scale:.1f} {unit})"
    return f"{size:,} bytes"
