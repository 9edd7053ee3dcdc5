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
"""
from __future__ import annotations

from .backend import get_array_module
from .workspace import Workspace

__all__ = ["forward", "backward", "sweep"]


def forward(cell, params, inputs, h0, steps):
    """Run ``cell`` over ``steps`` steps.

    Args:
        inputs: time-major inputs (time, batch, ...) or None.
        h0: initial state (batch, ...).
    Returns:
        (xin, states): the cell's projected inputs and the states (time, batch, ...).
    """
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
    xp = get_array_module(dstates)
    workspace = workspace if workspace is not None else Workspace()
    steps = dstates.shape[0]
    deltas = workspace.empty("deltas", dstates.shape, dstates.dtype, xp)
    if truncate is None or truncate >= steps - 1:
        g = workspace.zeros("sweep_g", dstates.shape[1:], dstates.dtype, xp)
        for t in reversed(range(steps)):                 # full BPTT
            g += dstates[t]                              # dL/dh_t: later steps + output t
            delta, g = back(t, g)
            deltas[t] = delta
        return deltas
    # Windowed truncation: k + 1 live origins, origin t in slot t % (k + 1).
    width = truncate + 1
    live = workspace.zeros("sweep_live", (width,) + dstates.shape[1:], dstates.dtype, xp)
    for t in reversed(range(steps)):
        # Origin t enters; the slot's previous occupant, origin t + k + 1, has reached
        # step t + 1 = its last one, so it is overwritten rather than carried further.
        live[t % width] = dstates[t]
        delta, live = back(t, live)
        delta.sum(axis=0, out=deltas[t])
    return deltas
