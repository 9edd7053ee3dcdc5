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
from .workspace import Workspace

__all__ = ["OutputGrads", "output_loss_and_grads", "output_forward", "LOGIT_BLOCK_ELEMENTS"]

# Elements of one block of logits (8 MiB in float32): large enough that the output
# GEMMs stay efficient, small enough that a long sequence never holds all its logits.
LOGIT_BLOCK_ELEMENTS = 1 << 21


class OutputGrads(NamedTuple):
    loss: float
    dV: object
    dc: object
    dstates: object  # (time, batch, hidden): dL/dh_t through output t only


def _logits(states2d, V, c, out=None):
    xp = get_array_module(states2d)
    z = xp.matmul(states2d, V.T, out=out)
    if c is not None:
        z += c
    return z


def output_forward(output, V, c, states):
    """Outputs y_t = g(V h_t + c) for time-major states (time, batch, hidden)."""
    steps, batch, hidden = states.shape
    z = _logits(states.reshape(steps * batch, hidden), V, c)
    if output == "softmax":
        z -= z.max(axis=1, keepdims=True)
        _normalised_exp(z)
    else:
        z = apply(output, z, out=z)
    return z.reshape(steps, batch, -1)


def _normalised_exp(z):
    """exp(z) / Σ exp(z) row by row, in place; returns log Σ exp(z) per row."""
    xp = get_array_module(z)
    xp.exp(z, out=z)
    total = z.sum(axis=1)
    z *= (1 / total)[:, None]
    return xp.log(total)


# exp of a logit in [-SAFE, SAFE] neither overflows nor underflows to 0 in float32, even
# summed over a large vocabulary, so the usual max-subtraction pass can be skipped.
_SAFE_LOGIT = 60.0


def _logits_need_shift(states2d, V, c) -> bool:
    """True unless |logit| ≤ max_rows ‖h‖₁ · max |V| + max |c| is safely small (one sync)."""
    xp = get_array_module(states2d)
    bound = xp.abs(states2d).sum(axis=1).max() * xp.abs(V).max()
    if c is not None:
        bound = bound + xp.abs(c).max()
    return float(bound) > _SAFE_LOGIT


def output_loss_and_grads(output, V, c, states, targets, mask=None, scale=1.0,
                          workspace=None) -> OutputGrads:
    """Loss and gradients of the output layer, a block of rows at a time.

    Args:
        output: "softmax" (int targets (time, batch)) or identity|sigmoid|tanh (float
            targets (time, batch, outputs)).
        V: (outputs, hidden); c: (outputs,) or None.
        states: (time, batch, hidden), time-major.
        mask: (time, batch) of 0/1 or None; masked steps add nothing.
        scale: multiplies the loss and every gradient (1 / count for a mean).
        workspace: a :class:`gpurnn.workspace.Workspace` for the scratch arrays; the
            returned ``dstates`` lives in it.
    """
    xp = get_array_module(states)
    workspace = workspace if workspace is not None else Workspace()
    steps, batch, hidden = states.shape
    outputs = V.shape[0]
    h_all = states.reshape(steps * batch, hidden)                    # rows are (t, b)
    t_all = targets.reshape(steps * batch, -1) if output != "softmax" else targets.reshape(-1)
    w_all = None if mask is None else mask.reshape(-1, 1)
    dstates = workspace.empty("dstates", states.shape, states.dtype, xp)
    d_all = dstates.reshape(steps * batch, hidden)
    dV = xp.zeros_like(V)
    dV_block = workspace.empty("dV_block", V.shape, V.dtype, xp)
    dc = xp.zeros(outputs, dtype=V.dtype)
    loss = xp.zeros((), dtype=states.dtype)
    block = max(1, min(h_all.shape[0], LOGIT_BLOCK_ELEMENTS // outputs))
    z_buffer = workspace.empty("logits", (block, outputs), states.dtype, xp)
    shift = output == "softmax" and _logits_need_shift(h_all, V, c)
    for start in range(0, h_all.shape[0], block):
        rows = slice(start, min(start + block, h_all.shape[0]))
        h = h_all[rows]                                              # (rows, H)
        z = _logits(h, V, c, out=z_buffer[:h.shape[0]])              # (rows, O)
        weight = None if w_all is None else w_all[rows]
        if output == "softmax":
            loss += _softmax_cross_entropy(z, t_all[rows], weight, shift)
        else:
            loss += _squared_error(output, z, t_all[rows], weight)
        # z now holds e_y for each row
        if scale != 1.0:
            z *= scale
        dV += xp.matmul(z.T, h, out=dV_block)                        # Σ e_y(t) h_tᵀ
        dc += z.sum(axis=0)
        xp.matmul(z, V, out=d_all[rows])                             # Vᵀ e_y(t)
    return OutputGrads(float(loss) * scale, dV, dc, dstates)


def _softmax_cross_entropy(z, targets, weight, shift):
    """Cross-entropy summed over rows; overwrites the logits ``z`` with e_y = p − onehot."""
    xp = get_array_module(z)
    rows = xp.arange(z.shape[0])
    if shift:
        z -= z.max(axis=1, keepdims=True)
    target_logit = z[rows, targets]
    nll = _normalised_exp(z) - target_logit                          # −log p[target]
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
    if output != "identity":
        diff *= derivative_from_output(output, y)
    z[...] = diff
    return loss
