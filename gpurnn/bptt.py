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
    deltas = sweep(back, dstates, truncate)
    return cell.param_grads(params, inputs, xin, h0, states, deltas)


def sweep(back, dstates, truncate=None):
    """The backward sweep over time; returns the per-step deltas (time, batch, ...).

    ``back(t, g) -> (delta_t, g_prev)`` is the cell's step backward (see
    :meth:`gpurnn.cells.Cell.backward_stepper`).
    """
    steps = dstates.shape[0]
    if truncate is None or truncate >= steps - 1:
        return _sweep_full(back, dstates)
    return _sweep_window(back, dstates, truncate + 1)


def _sweep_full(back, dstates):
    xp = get_array_module(dstates)
    deltas = [None] * dstates.shape[0]
    g = xp.zeros_like(dstates[0])                        # dL/dh_t from steps after t
    for t in reversed(range(dstates.shape[0])):
        g += dstates[t]                                  # + the error of output t
        deltas[t], g = back(t, g)
    return xp.stack(deltas)


def _sweep_window(back, dstates, width):
    """Windowed truncation: ``width`` = k + 1 origins alive at once, origin t in slot t % width."""
    xp = get_array_module(dstates)
    deltas = [None] * dstates.shape[0]
    live = xp.zeros((width,) + dstates.shape[1:], dtype=dstates.dtype)
    for t in reversed(range(dstates.shape[0])):
        # Origin t enters; the slot's previous occupant, origin t + k + 1, has reached
        # step t + 1 = its last one, so it is overwritten rather than carried further.
        live[t % width] = dstates[t]
        delta, live = back(t, live)
        deltas[t] = delta.sum(axis=0)
    return xp.stack(deltas)
