"""Forward over time and Backpropagation Through Time, written once for every cell.

Arrays here are time-major, (time, batch, ...), so the slice for one step is contiguous.

Truncation, with the seeds' exact meaning (seeds 000/002 ``bptt_truncate``, seed 004's τ):

* ``truncate=None`` — full BPTT: the error of every output reaches step 0.
* ``truncate=k`` — the error of output t flows back through steps t, t−1, …,
  max(0, t−k) and no further. Each output's error is a separate *window origin*; the
  sweep keeps the k+1 live origins in one (k+1, batch, ...) block, so all of them
  travel back one step in a single batched product, and the per-step error that the
  parameters see is their sum. With k ≥ T−1 no window ever closes and this is full BPTT.
* chunked (stateful) truncation is done by the caller: pass the last state of one chunk
  as ``h0`` of the next; no gradient crosses ``h0``.

Long sequences (:func:`run`): time is cut into blocks (a
:class:`gpurnn.engine.sweeps.recompute.Schedule`); each block is projected, run, put through the
output layer, swept back and reduced into the gradients on its own, last block first, in
the same order whatever the schedule. A schedule only says which blocks' caches are kept
from the first pass and where checkpoints of the state are kept; the others are
recomputed from a checkpoint when the sweep reaches them, repeating the same operations,
so the gradients are the same to the last bit. The error the sweep carries from one block
to the one before (the k + 1 live window origins with truncation) crosses block borders
unchanged.

The whole-sweep hook: before sweeping a block step by step, :func:`run` offers it to the
cell's ``backward_sweep`` (:meth:`gpurnn.engine.recurrences.cells.Cell.backward_sweep`), which may
compute the block's deltas in one go from the carry, and update the carry, itself: the
persistent kernels do (one cooperative launch for the block's full-BPTT sweep, when the
plan chooses them); a cell that returns None is swept step by step as before. Windowed
truncation is always swept step by step here (cells decline it).
"""
from __future__ import annotations

import contextlib

from ..arrays import precision
from . import recompute
from ..arrays.backend import get_array_module
from ..arrays.workspace import Workspace

__all__ = ["forward", "backward", "sweep", "run", "forward_blocks"]


def forward(cell, params, inputs, h0, steps):
    """Run ``cell`` over ``steps`` steps.

    Args:
        inputs: time-major inputs (time, batch, ...) or None.
        h0: initial state (batch, ...).
    Returns:
        (xin, states): the cell's projected inputs and the states (time, batch, ...).
    """
    cell.enter_block(0)
    xin = cell.project_inputs(params, inputs) if inputs is not None else None
    return xin, cell.forward(params, xin, h0, steps)


def backward(cell, params, inputs, xin, h0, states, dstates, truncate=None):
    """Parameter gradients from ``dstates`` (time, batch, ...), the loss's gradient
    with respect to each state through that step's output only."""
    back = cell.backward_stepper(params, xin, h0, states)
    deltas = sweep(back, dstates, truncate, cell.workspace)
    return cell.param_grads(params, inputs, xin, h0, states, deltas)


def sweep(back, dstates, truncate=None, workspace=None):
    """The backward sweep over time; returns the per-step deltas (time, batch, ...).

    ``back(t, g) -> (delta_t, g_prev)`` is the cell's step backward (see
    :meth:`gpurnn.cells.Cell.backward_stepper`); ``workspace`` (a
    :class:`gpurnn.workspace.Workspace`) keeps the sweep's buffers between calls.
    """
    workspace = workspace if workspace is not None else Workspace()
    deltas, _ = _sweep_block(back, dstates, _window(truncate, dstates.shape[0]), workspace)
    return deltas


def _window(truncate, steps):
    """Live window origins k + 1, or None for full BPTT (no window closes before step 0)."""
    return None if truncate is None or truncate >= steps - 1 else truncate + 1


def _sweep_block(back, dstates, window, workspace, start=0, carry=None):
    """Sweep back over one block of steps start … start + len(dstates) − 1.

    ``carry`` is what the sweep of the next block left (None for the last block): the
    state gradient, or the (k + 1, batch, ...) live origins. Returns the block's deltas
    and the carry for the block before it (both in ``workspace``).
    """
    xp = get_array_module(dstates)
    steps = dstates.shape[0]
    deltas = workspace.empty("deltas", dstates.shape, dstates.dtype, xp)
    # A stepper may solve the whole block at once: ``back.sweep_block(dstates, carry,
    # deltas)`` fills the deltas and returns the carry for the block before, the carry
    # entering at the block's last step as below (a diagonal cell's reverse scan,
    # gpurnn.engine.sweeps.scan). Windowed truncation is no single scan: it stays per step.
    whole = getattr(back, "sweep_block", None) if window is None else None
    if whole is not None:
        g = whole(dstates, carry, deltas)
        kept = workspace.empty("sweep_g", g.shape, g.dtype, xp)
        kept[...] = g
        return deltas, kept
    shape = dstates.shape[1:] if window is None else (window,) + dstates.shape[1:]
    # A stepper may ask for a context around the whole loop (see ElmanCell.backward_stepper).
    around = getattr(back, "loop_context", None)
    with around(shape) if around is not None else contextlib.nullcontext():
        if window is None:
            g = carry if carry is not None else workspace.zeros("sweep_g", shape,
                                                                dstates.dtype, xp)
            for t in reversed(range(steps)):             # full BPTT
                g += dstates[t]                          # dL/dh_t: later steps + output t
                delta, g = back(t, g)
                deltas[t] = delta
            name = "sweep_g"
        else:
            # k + 1 live origins, origin t in slot t % (k + 1).
            g = carry if carry is not None else workspace.zeros("sweep_live", shape,
                                                                dstates.dtype, xp)
            for t in reversed(range(steps)):
                # Origin t enters; the slot's previous occupant, origin t + k + 1, has
                # reached step t + 1 = its last one, so it is overwritten rather than
                # carried further.
                g[(start + t) % window] = dstates[t]
                delta, g = back(t, g)
                delta.sum(axis=0, out=deltas[t])
            name = "sweep_live"
    # The cell's buffers are reused by the next block: carry a copy of our own.
    kept = workspace.empty(name, g.shape, g.dtype, xp)
    kept[...] = g
    return deltas, kept


def _whole_sweep(cell, params, c, dstates, window, workspace, carry):
    """The whole-sweep hook: ``cell.backward_sweep`` sweeps the block itself (the
    persistent kernels, :mod:`gpurnn.engine.gpu.persistent`), or returns None and the engine
    sweeps ``backward_stepper`` step by step. The carry is the same as
    :func:`_sweep_block`'s, in the same buffer ("sweep_g", for full BPTT): the cell starts
    from it and leaves the gradient on the block's h0 there. Returns (deltas or None,
    carry)."""
    hook = getattr(cell, "backward_sweep", None)
    if hook is None:
        return None, carry
    g = None
    if window is None:                                   # windowed carries are declined
        xp = get_array_module(dstates)
        g = carry if carry is not None else workspace.zeros("sweep_g", dstates.shape[1:],
                                                             dstates.dtype, xp)
    deltas = hook(params, c.xin, c.h0, c.states, dstates, g, window)
    return (None, carry) if deltas is None else (deltas, g)


class _Cache:
    """What a block's backward step needs: its workspace, inputs, xin, h0 and states."""

    __slots__ = ("workspace", "inputs", "xin", "h0", "states")

    def __init__(self, workspace, inputs, xin, h0, states):
        self.workspace, self.inputs, self.xin, self.h0, self.states = (workspace, inputs, xin,
                                                                       h0, states)


def run(cell, params, inputs, h0, schedule, head, truncate=None, first=None):
    """BPTT over a sequence in the blocks of ``schedule``, keeping and recomputing as it says.

    Args:
        cell: the cell; its workspace holds the engine's buffers, and one child workspace
            per cache alive at once (``cell.use_workspace`` points it there per block).
        inputs: ``inputs(a, b)`` -> the time-major inputs of steps a … b − 1, or None.
        h0: the initial state (batch, ...).
        schedule: a :class:`gpurnn.engine.sweeps.recompute.Schedule`.
        head: ``head(a, b, states) -> dstates``: the loss's gradient with respect to the
            states of steps a … b − 1 through their outputs (the model's output layer,
            which also adds up the loss and its own gradients); called once per block,
            last block first.
        truncate: None (full BPTT) or k, as in :func:`sweep`, over the whole sequence.
        first: ``first(a, states)``, called once per block, in order, on its first forward.
    Returns:
        (grads, final): the parameter gradients and the state after the last step.
    """
    xp = get_array_module(h0)
    window = _window(truncate, schedule.steps)
    home = cell.workspace                                # the engine's own buffers
    prefix = schedule.blocks - schedule.kept
    # Without a budget the caches stay for the next call (no page faults); in one, each
    # kept cache is freed as soon as its block is done.
    keep_all = schedule.policy == "keep"
    carries = [home.empty(("carry", k), h0.shape, h0.dtype, xp) for k in range(2)]
    # The checkpoints live in one array of the schedule's slots, not in thousands of small
    # allocations between the blocks' large ones (which would fragment the heap).
    pool = home.empty("checkpoints", (max(1, schedule.slots),) + h0.shape, h0.dtype, xp)
    free_slots = list(range(schedule.slots))
    checkpoints, slot_of = {0: h0}, {}
    cursor, flip, seen = h0, 0, 0
    caches, grads, carry, final = {}, None, None, None
    work = home.child(("block", 0))
    if not keep_all:
        home.clear_children()                            # caches kept by earlier calls
    try:
        for action in recompute.actions(schedule):
            kind = action[0]
            if kind == "load":
                cursor = checkpoints[action[1]]
            elif kind == "save":
                slot_of[action[1]] = free_slots.pop()
                checkpoints[action[1]] = pool[slot_of[action[1]]]
                checkpoints[action[1]][...] = cursor
            elif kind == "free":
                del checkpoints[action[1]]
                free_slots.append(slot_of.pop(action[1]))
            elif kind == "advance":
                i, mode = action[1], action[2]
                a, b = schedule.bounds(i)
                slot = home.child(("block", 1 + i - prefix)) if mode == "keep" else work
                cell.use_workspace(slot)
                x = inputs(a, b)
                start = cursor
                if mode is not None:                     # a cache keeps its own h0
                    start = slot.empty(("engine", "h0"), h0.shape, h0.dtype, xp)
                    start[...] = cursor
                cell.enter_block(a)
                xin = cell.project_inputs(params, x) if x is not None else None
                states = cell.forward(params, xin, start, b - a)
                if i == seen:
                    if first is not None:
                        first(a, states)
                    seen += 1
                cursor, flip = carries[flip], 1 - flip
                cursor[...] = states[-1]
                if i == schedule.blocks - 1 and final is None:
                    final = cursor.copy()
                if mode is not None:
                    caches[i] = _Cache(slot, x, xin, start, states)
            else:                                        # "back"
                i = action[1]
                a, b = schedule.bounds(i)
                c = caches.pop(i)
                cell.use_workspace(c.workspace)
                dstates = head(a, b, c.states)
                deltas, carry = _whole_sweep(cell, params, c, dstates, window, home, carry)
                if deltas is None:                       # the cell sweeps step by step
                    back = cell.backward_stepper(params, c.xin, c.h0, c.states)
                    deltas, carry = _sweep_block(back, dstates, window, home, a, carry)
                block_grads = cell.param_grads(params, c.inputs, c.xin, c.h0, c.states, deltas)
                if grads is None:
                    # (a 16-bit step's blocks are summed in float32: gpurnn.engine.arrays.precision)
                    grads = {name: precision.accumulator(value)
                             for name, value in block_grads.items()}
                else:
                    for name, value in block_grads.items():
                        grads[name] += value
                if not keep_all and c.workspace is not work:
                    c.workspace.clear()                  # a kept cache: free it now
                # Views into this block's buffers (its cache, the stepper's factors) would
                # keep them alive until the next block's backward had made its own.
                c = back = dstates = deltas = block_grads = None
    finally:
        cell.use_workspace(home)
    return grads, final


def forward_blocks(cell, params, inputs, h0, schedule):
    """The states block by block, in one working cache: yields (a, states) for each block
    (valid until the next one); for losses without gradients in a memory budget."""
    xp = get_array_module(h0)
    home = cell.workspace
    slot = home.child(("block", 0))
    cursor = home.empty(("carry", 0), h0.shape, h0.dtype, xp)
    cursor[...] = h0
    for i in range(schedule.blocks):
        a, b = schedule.bounds(i)
        cell.use_workspace(slot)
        try:
            x = inputs(a, b)
            cell.enter_block(a)
            xin = cell.project_inputs(params, x) if x is not None else None
            states = cell.forward(params, xin, cursor, b - a)
        finally:
            cell.use_workspace(home)
        yield a, states
        cursor[...] = states[-1]
