"""The output layer y_t = g(V h_t + c) with its loss, forward and backward in one pass.

For a language model the logits (batch·time × vocabulary) dwarf everything else, so
they are computed a block of rows at a time and never held whole: peak memory
grows with batch·time·hidden, not batch·time·vocabulary.

Losses (summed over unmasked steps, as the seeds do):

* ``softmax``: cross-entropy −Σ log y_t[target_t]; e_y = y − onehot(target).
* ``identity`` | ``sigmoid`` | ``tanh``: squared error ½ Σ (y − t)²; e_y = g'(ŷ) ⊙ (y − t)
  (seed 004).
"""
from __future__ import annotations

from typing import NamedTuple

from ..gpu import fused
from ..recurrences.activations import apply, derivative_from_output
from ..arrays.backend import get_array_module
from ..arrays.host_threads import host_workers, run_shares
from ..arrays.workspace import Workspace

__all__ = ["OutputGrads", "output_loss_and_grads", "output_loss", "output_forward",
           "LOGIT_BLOCK_ELEMENTS"]

# Elements of one block of logits (16 MiB in float32; one block per host thread): large
# enough that the output GEMMs stay efficient (on one core, T = 64, 262-row blocks cost 12%
# more than 512-row ones, 64-row blocks sized for L2 50% more), small enough that a long
# sequence never holds all its logits.
LOGIT_BLOCK_ELEMENTS = 1 << 22


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


def output_forward(output, V, c, states, *, logits=False):
    """Outputs y_t = g(V h_t + c) for time-major states (time, batch, hidden); with
    ``logits``, z_t = V h_t + c before g."""
    steps, batch, hidden = states.shape
    z = _logits(states.reshape(steps * batch, hidden), V, c)
    if logits:
        return z.reshape(steps, batch, -1)
    if output == "softmax":
        xp = get_array_module(z)
        z -= z.max(axis=1, keepdims=True)
        xp.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
    else:
        z = apply(output, z, out=z)
    return z.reshape(steps, batch, -1)


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
                          workspace=None, plan=None, keep_loss=False) -> OutputGrads:
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
        keep_loss: return the loss as a 0-d device array instead of a Python float (no
            read-back: what a captured step needs, :mod:`gpurnn.engine.gpu.graphs`).
        plan: a :class:`gpurnn.engine.plan.Plan`; a fused one runs the softmax row block
            as one kernel on CuPy arrays.
    """
    xp = get_array_module(states)
    workspace = workspace if workspace is not None else Workspace()
    steps, batch, hidden = states.shape
    h_all = states.reshape(steps * batch, hidden)                    # rows are (t, b)
    w_all = None if mask is None else mask.reshape(-1)
    dstates = workspace.empty("dstates", states.shape, states.dtype, xp)
    d_all = dstates.reshape(steps * batch, hidden)
    launch = fused.launcher_for(plan, states) if output == "softmax" else None
    if launch is not None:
        loss, dV, dc = fused.softmax_cross_entropy(
            V, c, h_all, targets.reshape(-1), w_all, scale, d_all, workspace,
            _row_blocks(h_all.shape[0], V.shape[0])[1], launch)
    elif output == "softmax":
        loss, dV, dc = _softmax_cross_entropy(V, c, h_all, targets.reshape(-1), w_all, scale,
                                              d_all, workspace)
    else:
        loss, dV, dc = _squared_error(output, V, c, h_all, targets.reshape(steps * batch, -1),
                                      w_all, scale, d_all, workspace)
    return OutputGrads((loss * scale) if keep_loss else float(loss) * scale, dV, dc, dstates)


def output_loss(output, V, c, states, targets, weights=None) -> float:
    """The loss alone, without gradients, a block of rows at a time like
    :func:`output_loss_and_grads`; ``weights`` (time, batch) may be any non-negative
    numbers (no recurrence is differentiated, so they need not be a right-padded mask)."""
    xp = get_array_module(states)
    steps, batch, hidden = states.shape
    h_all = states.reshape(steps * batch, hidden)
    t_all = targets.reshape(-1) if output == "softmax" else targets.reshape(steps * batch, -1)
    w_all = None if weights is None else weights.reshape(-1)
    loss = xp.zeros((), dtype=states.dtype)
    for rows in _row_blocks(h_all.shape[0], V.shape[0])[1]:
        z = _logits(h_all[rows], V, c)
        if output == "softmax":
            top = z.max(axis=1)
            target_logit = z[xp.arange(z.shape[0]), t_all[rows]]
            z -= top[:, None]
            xp.exp(z, out=z)
            per_row = xp.log(z.sum(axis=1)) + top - target_logit     # −log p[target]
        else:
            e = apply(output, z, out=z) - t_all[rows]
            per_row = 0.5 * (e * e).sum(axis=1)                      # ½ Σ (y − t)²
        loss += per_row.sum() if w_all is None else (per_row * w_all[rows]).sum()
    return float(loss)


def _row_blocks(rows, outputs):
    """The rows of one block of logits, and the slices that cover ``rows`` rows."""
    block = max(1, min(rows, LOGIT_BLOCK_ELEMENTS // outputs))
    return block, [slice(start, min(start + block, rows)) for start in range(0, rows, block)]


def _softmax_cross_entropy(V, c, h_all, t_all, w_all, scale, d_all, workspace):
    """Cross-entropy −Σ w log p[target] with its gradients, e_y = p − onehot.

    The logits are exponentiated in place and never normalised: with E = exp(z), row sums
    s and row weights r = w·scale / s,

        e_y V = (E V) r − V[target] w·scale        dV = (E − s·onehot)ᵀ (h r)

    and a column of ones beside V makes the same GEMM return s. Subtracting s at each row's
    target in E, after E V and before the dV product, puts the one-hot terms of dV and dc
    into that product (s r = w·scale), so no scatter over the vocabulary is needed. One
    elementwise pass (the exp) touches the (rows × vocabulary) block; everything else is
    GEMMs and (rows × hidden) work. The logits GEMM and E [V, 1] read one buffer [c, V, 1]
    (a column-range view each), refreshed with one copy of V per call.

    On NumPy with several cores the rows are split into one contiguous share per core
    (:mod:`gpurnn.engine.arrays.host_threads`): each share runs its own blocks, products on one
    BLAS thread, into its own [dV, dc], and the shares are summed at the end.
    """
    xp = get_array_module(h_all)
    rows, hidden = h_all.shape
    outputs = V.shape[0]
    dtype = h_all.dtype
    block, blocks = _row_blocks(rows, outputs)
    # [c, V, 1]: [1, h] [c, V]ᵀ = V h + c (the logits) and E [V, 1] = [E V, s].
    cV1 = workspace.empty("cV1", (outputs, hidden + 2), dtype, xp)
    cV1[:, 1:hidden + 1] = V
    cV1[:, hidden + 1] = 1
    if c is not None:
        cV1[:, 0] = c
    shift = _logits_need_shift(h_all, V, c)
    # A share of one logit block gains nothing from a thread of its own: in the engine's
    # time blocks of ~1024 rows (two blocks at a vocabulary of 8,000) splitting them made
    # the step 1.4x slower (thread hand-offs and BLAS limits per call), so each core
    # needs two or more blocks of its own.
    workers = host_workers(xp, len(blocks) // 2)
    bounds = [rows * k // workers for k in range(workers + 1)]
    shares = []
    for k in range(workers):                       # every buffer made here, none in a thread
        start, stop = bounds[k], bounds[k + 1]
        rows_k = stop - start
        block_k = max(1, min(block, rows_k))
        def name(base, k=k):                       # share 0 keeps the plain path's names
            return base if k == 0 else (base, k)
        buffers = {key: workspace.empty(name(key), (block_k, width), dtype, xp)
                   for key, width in (("logits", outputs), ("EV", hidden + 1),
                                      ("hr", hidden + 1), ("h1", hidden + 1))}
        buffers["h1"][:, 0] = 1
        buffers["dVc_block"] = workspace.empty(name("dVc_block"), (outputs, hidden + 1),
                                               dtype, xp)
        # [dV, dc] of this share: share 0 adds into the returned array, the others into
        # scratch summed into it at the end.
        buffers["dVc"] = (xp.empty((outputs, hidden + 1), dtype=dtype) if k == 0 else
                          workspace.empty(name("dVc"), (outputs, hidden + 1), dtype, xp))
        shares.append(([slice(r, min(r + block_k, stop)) for r in range(start, stop, block_k)],
                       buffers))

    def run(share):
        blocks_k, buffers = share
        loss = xp.zeros((), dtype=dtype)
        dVc = buffers["dVc"]
        for number, rows_ in enumerate(blocks_k):
            h, t = h_all[rows_], t_all[rows_]
            n = h.shape[0]
            index = xp.arange(n)
            if c is not None:
                h1 = buffers["h1"][:n]
                h1[:, 1:] = h
                z = xp.matmul(h1, cV1[:, :hidden + 1].T, out=buffers["logits"][:n])  # V h + c
            else:
                z = xp.matmul(h, V.T, out=buffers["logits"][:n])
            if shift:
                z -= z.max(axis=1, keepdims=True)
            target_logit = z[index, t]
            xp.exp(z, out=z)                                         # E
            g = xp.matmul(z, cV1[:, 1:], out=buffers["EV"][:n])      # [E V, s]
            total = g[:, hidden]
            nll = xp.log(total) - target_logit                       # −log p[target]
            weight = scale if w_all is None else w_all[rows_] * scale   # w·scale
            r = weight / total
            loss += nll.sum() if w_all is None else (nll * w_all[rows_]).sum()
            d = d_all[rows_]
            xp.multiply(g[:, :hidden], r[:, None], out=d)            # (E V) r
            d -= V[t] * (weight if w_all is None else weight[:, None])  # − V[target] w·scale
            hr = buffers["hr"][:n]
            xp.multiply(h, r[:, None], out=hr[:, :hidden])
            hr[:, hidden] = r
            z[index, t] -= total                                     # E − s·onehot
            # [dV, dc] += (E − s·onehot)ᵀ [h r, r]; the first block writes it directly.
            if number == 0:
                xp.matmul(z.T, hr, out=dVc)
            else:
                dVc += xp.matmul(z.T, hr, out=buffers["dVc_block"])
        if not blocks_k:
            dVc.fill(0)
        return loss

    losses_ = run_shares(run, shares) if workers > 1 else [run(shares[0])]
    dVc = shares[0][1]["dVc"]
    for _, buffers in shares[1:]:
        dVc += buffers["dVc"]
    dV = xp.ascontiguousarray(dVc[:, :hidden])
    dc = dVc[:, hidden].copy() if c is not None else None
    return sum(losses_[1:], losses_[0]), dV, dc


def _squared_error(output, V, c, h_all, t_all, w_all, scale, d_all, workspace):
    """½ Σ w (y − t)² with its gradients, e_y = g'(ŷ) ⊙ (y − t)."""
    xp = get_array_module(h_all)
    outputs = V.shape[0]
    dtype = h_all.dtype
    block, blocks = _row_blocks(h_all.shape[0], outputs)
    z_buffer = workspace.empty("logits", (block, outputs), dtype, xp)
    diff_buffer = workspace.empty("diff", (block, outputs), dtype, xp)
    gprime_buffer = workspace.empty("gprime", (block, outputs), dtype, xp)
    dV_block = workspace.empty("dV_block", V.shape, dtype, xp)
    dV = xp.zeros_like(V)
    dc = xp.zeros(outputs, dtype=dtype)
    loss = xp.zeros((), dtype=dtype)
    for rows in blocks:
        h = h_all[rows]
        n = h.shape[0]
        y = _logits(h, V, c, out=z_buffer[:n])
        apply(output, y, out=y)                                      # y = g(V h + c)
        e = xp.subtract(y, t_all[rows], out=diff_buffer[:n])         # y − t
        if w_all is not None:
            e *= w_all[rows][:, None]
        loss += 0.5 * (e * e).sum()
        if output != "identity":
            e *= derivative_from_output(output, y, out=gprime_buffer[:n])  # e_y = g'(ŷ) ⊙ (y − t)
        if scale != 1.0:
            e *= scale
        dV += xp.matmul(e.T, h, out=dV_block)                        # Σ e_y(t) h_tᵀ
        dc += e.sum(axis=0)
        xp.matmul(e, V, out=d_all[rows])                             # e_y(t) V
    return loss, dV, (dc if c is not None else None)
