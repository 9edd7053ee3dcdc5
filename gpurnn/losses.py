"""The output layer y_t = g(V h_t + c) with its loss, forward and backward in one pass.

For a language model the logits (batch·time × vocabulary) dwarf everything else, so
they are computed a block of time steps at a time and never held whole: peak memory
grows with batch·time·hidden, not batch·time·vocabulary.

Losses (summed over unmasked steps, as the seeds do):

* ``softmax``: cross-entropy −Σ log y_t[target_t]; e_y = y − onehot(target).
* ``identity`` | ``sigmoid`` | ``tanh``: squared error ½ Σ (y − t)²; e_y = g'(ŷ) ⊙ (y − t)
  (seed 004).
"""
from __future__ import annotations

from typing import NamedTuple

from .activations import apply, derivative_from_output
from .backend import get_array_module

__all__ = ["OutputGrads", "output_loss_and_grads", "output_forward", "LOGIT_BLOCK_ELEMENTS"]

# Elements of one block of logits (16 MiB in float32): large enough that the output
# GEMMs stay efficient, small enough that a long sequence never holds all its logits.
LOGIT_BLOCK_ELEMENTS = 1 << 22


class OutputGrads(NamedTuple):
    loss: float
    dV: object
    dc: object
    dstates: object  # (time, batch, hidden): dL/dh_t through output t only


def _blocks(steps, batch, outputs):
    block = max(1, LOGIT_BLOCK_ELEMENTS // max(1, batch * outputs))
    for start in range(0, steps, block):
        yield slice(start, min(steps, start + block))


def _logits(states2d, V, c):
    z = states2d @ V.T
    if c is not None:
        z += c
    return z


def output_forward(output, V, c, states):
    """Outputs y_t = g(V h_t + c) for time-major states (time, batch, hidden)."""
    steps, batch, hidden = states.shape
    z = _logits(states.reshape(steps * batch, hidden), V, c)
    if output == "softmax":
        z = _softmax(z)
    else:
        z = apply(output, z, out=z)
    return z.reshape(steps, batch, -1)


def _softmax(z):
    xp = get_array_module(z)
    z -= z.max(axis=1, keepdims=True)
    xp.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def output_loss_and_grads(output, V, c, states, targets, mask=None, scale=1.0) -> OutputGrads:
    """Loss and gradients of the output layer.

    Args:
        output: "softmax" (int targets (time, batch)) or identity|sigmoid|tanh (float
            targets (time, batch, outputs)).
        V: (outputs, hidden); c: (outputs,) or None.
        states: (time, batch, hidden), time-major.
        mask: (time, batch) of 0/1 or None; masked steps add nothing.
        scale: multiplies the loss and every gradient (1 / count for a mean).
    """
    xp = get_array_module(states)
    steps, batch, hidden = states.shape
    dV = xp.zeros_like(V)
    dc = xp.zeros(V.shape[0], dtype=V.dtype)
    dstates = xp.empty_like(states)
    loss = xp.zeros((), dtype=states.dtype)
    for block in _blocks(steps, batch, V.shape[0]):
        h = states[block].reshape(-1, hidden)                        # (rows, H)
        z = _logits(h, V, c)                                         # (rows, O)
        weight = None if mask is None else mask[block].reshape(-1, 1)
        if output == "softmax":
            loss += _softmax_cross_entropy(z, targets[block].reshape(-1), weight)
        else:
            loss += _squared_error(output, z, targets[block].reshape(z.shape), weight)
        # z now holds e_y for each row
        if scale != 1.0:
            z *= scale
        dV += z.T @ h                                                # Σ e_y(t) h_tᵀ
        dc += z.sum(axis=0)
        dstates[block] = (z @ V).reshape(-1, batch, hidden)          # Vᵀ e_y(t)
    return OutputGrads(float(loss) * scale, dV, dc, dstates)


def _softmax_cross_entropy(z, targets, weight):
    """Cross-entropy summed over rows; overwrites the logits ``z`` with e_y = p − onehot."""
    xp = get_array_module(z)
    rows = xp.arange(z.shape[0])
    z -= z.max(axis=1, keepdims=True)
    target_logit = z[rows, targets]
    xp.exp(z, out=z)
    total = z.sum(axis=1)
    nll = xp.log(total) - target_logit                               # −log p[target]
    z /= total[:, None]
    z[rows, targets] -= 1
    if weight is None:
        return nll.sum()
    z *= weight
    return (nll * weight[:, 0]).sum()


def _squared_error(output, z, targets, weight):
    """½ Σ (y − t)² over rows; overwrites ``z`` with e_y = g'(ŷ) ⊙ (y − t)."""
    y = apply(output, z, out=z)
    diff = y - targets
    err = diff * diff
    if weight is not None:
        diff *= weight
        err *= weight
    loss = 0.5 * err.sum()
    diff *= derivative_from_output(output, y)
    z[...] = diff
    return loss
