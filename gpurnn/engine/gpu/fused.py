"""The fused path: cell steps, the softmax row block and optimizer updates as CUDA kernels.

``Plan(kernels="fused")`` sends the Elman, GRU and LSTM cells, the softmax output layer and
the optimizers here when their arrays are CuPy's; NumPy arrays run plain (the callers ask
:func:`launcher_for`, which returns None for them). Each function mirrors the plain one it
replaces, writes the same buffers in the same layouts, and keeps the GEMMs (cuBLAS) as
they are: what the kernels fuse is the elementwise work between them, one launch where
the plain path needs several.

The kernels themselves are in :mod:`gpurnn.engine.gpu.kernels`. Tests run every function here
on NumPy arrays through the host emulation of those kernels (:func:`emulate_on_host`), so
the launch configurations and argument lists are checked on the CPU too.
"""
from __future__ import annotations

import contextlib
import math

from ..recurrences.activations import ACTIVATIONS
from ..arrays.backend import device_of, get_array_module
from .launches import elementwise_grid

__all__ = ["launcher_for", "emulate_on_host", "threads_per_block", "contiguous",
           "elman_forward", "elman_backward_stepper",
           "gru_forward", "gru_backward_stepper", "lstm_forward", "lstm_backward_stepper",
           "softmax_cross_entropy", "optimizer_update",
           "OPTIMIZERS"]

_cuda_launcher = None
_host_launcher = None  # set by emulate_on_host: NumPy arrays then run the fused path too


def launcher_for(plan, array):
    """The kernel launcher for ``array`` under ``plan`` ("fused" or "auto"), or None to run
    the plain path."""
    if plan is None or plan.kernels == "plain":
        return None
    # CuPy arrays go to the GPU; NumPy and cpu-strict arrays to the host emulation where
    # one is active (the CPU check of the callers), else they run plain.
    if device_of(array).kind == "cuda":
        global _cuda_launcher
        if _cuda_launcher is None:
            from .kernels import CudaLauncher
            _cuda_launcher = CudaLauncher()
        return _cuda_launcher
    return _host_launcher


@contextlib.contextmanager
def emulate_on_host(launcher):
    """Within this block, fused plans run NumPy arrays through ``launcher`` (a
    :class:`gpurnn.engine.gpu.kernels.host.HostLauncher`): the CPU check of the fused path."""
    global _host_launcher
    previous, _host_launcher = _host_launcher, launcher
    try:
        yield launcher
    finally:
        _host_launcher = previous


# ------------------------------------------------------------------------ launch shapes
def threads_per_block(launch) -> int:
    return getattr(launch, "block_size", 256)


def _elementwise(launch, kernel, dtype, n, args):
    """Launch a grid-stride elementwise kernel over ``n`` elements."""
    threads = threads_per_block(launch)
    blocks = elementwise_grid(n, threads, getattr(launch, "max_blocks", 65535))
    launch(kernel, dtype, (blocks,), (threads,), args)


def contiguous(xp, array):
    """``array`` itself when C-contiguous (what a kernel indexes), else a contiguous copy."""
    return array if array.flags.c_contiguous else xp.ascontiguousarray(array)


# ------------------------------------------------------------------------------- Elman
def elman_forward(cell, params, xin, h0, steps, launch):
    """``ElmanCell.forward``: per step the GEMM W h_{t-1} into the state buffer, then one
    kernel for h_t = f(· + U x_t + b). Under a fused plan ``project_inputs`` leaves b out of
    ``xin`` (U x_t only): the step kernel adds it, saving a pass over (T, B, H)."""
    xp = get_array_module(xin)
    WT = params["weight_hh"].T
    states = cell.workspace.empty("states", xin.shape, xin.dtype, xp)   # (T, B, H)
    hidden = xin.shape[-1]
    act = ACTIVATIONS.index(cell.activation)
    bias = params["bias_ih"] if cell.bias else None
    h = contiguous(xp, h0)
    for t in range(steps):
        a = states[t]
        xp.matmul(h, WT, out=a)                                          # W h_{t-1}
        _elementwise(launch, "elman_step", a.dtype, a.size,
                     (a, xin[t], bias, a.size, hidden, act))             # h_t = f(a_t)
        h = a
    return states


def elman_backward_stepper(cell, params, xin, h0, states, launch):
    """``ElmanCell.backward_stepper``: e_h(t) = g ⊙ f'(a_t) in one kernel, then the GEMM."""
    xp = get_array_module(states)
    workspace = cell.workspace
    W = params["weight_hh"]
    hidden = W.shape[0]
    act = ACTIVATIONS.index(cell.activation)

    def back(t, g):
        g = contiguous(xp, g)
        delta = workspace.empty("delta", g.shape, g.dtype, xp)
        _elementwise(launch, "elman_backward_delta", g.dtype, g.size,
                     (delta, g, states[t], g.size, states[t].size, act))  # e_h(t) = g ⊙ f'
        g_prev = workspace.empty(("g", t % 2), g.shape, g.dtype, xp)
        xp.matmul(delta.reshape(-1, hidden), W, out=g_prev.reshape(-1, hidden))  # e_h(t) W
        return delta, g_prev
    return back


# --------------------------------------------------------------------------------- GRU
def _scaled_WT(cell, W, hidden):
    return (W * cell.gate_scale(hidden, W)[:, None]).T       # (H, G·H), sigmoid rows halved


def gru_forward(cell, params, xin, h0, steps, launch):
    """``GRUCell.forward``: per step the GEMM W_hh h_{t-1} for all gates, then one kernel
    for r, z, n and h_t (writing the same gate cache as the plain path)."""
    xp = get_array_module(h0)
    gates, hn = xin.gates, xin.extra
    batch, H = h0.shape
    WT = _scaled_WT(cell, params["weight_hh"], H)
    b_hn = params["bias_hh"][2 * H:] if cell.bias else None
    ws = cell.workspace
    states = ws.empty("gate_states", (steps, batch, H), h0.dtype, xp)
    gh = ws.empty("gate_gh", (batch, 3 * H), h0.dtype, xp)
    h = contiguous(xp, h0)
    for t in range(steps):
        xp.matmul(h, WT, out=gh)                                         # W_hh h_{t-1}
        _elementwise(launch, "gru_step", h.dtype, batch * H,
                     (gates[t], hn[t], states[t], gh, h, b_hn, batch * H, H))
        h = states[t]
    return states


def gru_backward_stepper(cell, params, xin, h0, states, launch):
    """``GRUCell.backward_stepper``: the factors K, K2 for all steps in one kernel; per step
    one kernel (gate gradients and the direct path z ⊙ g), the GEMM with W_hh, one add."""
    xp = get_array_module(states)
    steps, batch, H = states.shape
    ws = cell.workspace
    K = ws.empty("gate_K", (steps, batch, 3, H), states.dtype, xp)
    K2 = ws.empty("gate_K2", K.shape, states.dtype, xp)
    n = steps * batch * H
    _elementwise(launch, "gru_factors", states.dtype, n,
                 (K, K2, xin.gates, xin.extra, states, contiguous(xp, h0), n, batch * H, H))
    xin.K, xin.K2 = K, K2
    W = params["weight_hh"]                                              # (3H, H)

    def back(t, g):
        g = contiguous(xp, g)
        d = ws.empty(("step", "d"), g.shape[:-1] + (3, H), g.dtype, xp)
        g_prev = ws.empty(("step", t % 2), g.shape, g.dtype, xp)
        _elementwise(launch, "gru_backward_step", g.dtype, g.size,
                     (d, g_prev, g, K2[t], xin.gates[t], g.size, batch * H, H))
        dh = ws.empty(("step", "dh"), g.shape, g.dtype, xp)
        xp.matmul(d.reshape(-1, 3 * H), W, out=dh.reshape(-1, H))       # δʰ W_hh
        g_prev += dh
        return g, g_prev
    return back


# -------------------------------------------------------------------------------- LSTM
def lstm_forward(cell, params, xin, h0, steps, launch):
    """``LSTMCell.forward``: per step the GEMM W_hh h_{t-1}, then one kernel for the gates,
    c_t and h_t."""
    xp = get_array_module(h0)
    gates = xin.gates
    batch, H = h0.shape[0], h0.shape[1] // 2
    WT = _scaled_WT(cell, params["weight_hh"], H)
    ws = cell.workspace
    states = ws.empty("gate_states", (steps, batch, 2 * H), h0.dtype, xp)   # (T, B, [h, c])
    gh = ws.empty("gate_gh", (batch, 4 * H), h0.dtype, xp)
    prev = contiguous(xp, h0)
    for t in range(steps):
        xp.matmul(prev[:, :H], WT, out=gh)                               # W_hh h_{t-1}
        _elementwise(launch, "lstm_step", h0.dtype, batch * H,
                     (gates[t], states[t], gh, prev, batch * H, H))
        prev = states[t]
    return states


def lstm_backward_stepper(cell, params, xin, h0, states, launch):
    """``LSTMCell.backward_stepper``: factors K, ∂h/∂c for all steps in one kernel; per step
    one kernel (dc, the gate gradients, dL/dc_{t-1}) and the GEMM with W_hh."""
    xp = get_array_module(states)
    steps, batch, width = states.shape
    H = width // 2
    ws = cell.workspace
    K = ws.empty("gate_K", (steps, batch, 4, H), states.dtype, xp)
    A = ws.empty("gate_K2", (steps, batch, H), states.dtype, xp)
    n = steps * batch * H
    _elementwise(launch, "lstm_factors", states.dtype, n,
                 (K, A, xin.gates, states, contiguous(xp, h0), n, batch * H, H))
    xin.K, xin.K2 = K, A
    W = params["weight_hh"]                                              # (4H, H)

    def back(t, grad):
        grad = contiguous(xp, grad)
        d = ws.empty(("step", "d"), grad.shape[:-1] + (4, H), grad.dtype, xp)
        g_prev = ws.empty(("step", t % 2), grad.shape, grad.dtype, xp)
        count = grad.size // 2
        _elementwise(launch, "lstm_backward_step", grad.dtype, count,
                     (d, g_prev, grad, K[t], A[t], xin.gates[t], count, batch * H, H))
        dh = ws.empty(("step", "dh_prev"), grad.shape[:-1] + (H,), grad.dtype, xp)
        xp.matmul(d.reshape(-1, 4 * H), W, out=dh.reshape(-1, H))       # δ W_hh
        g_prev[..., :H] = dh
        return grad, g_prev
    return back


# ----------------------------------------------------------------------- output layer
def softmax_cross_entropy(V, c, h_all, t_all, w_all, scale, d_all, workspace, blocks, launch):
    """The plain ``_softmax_cross_entropy`` (same arguments and results; ``blocks`` are its
    row slices): per block of rows the logits GEMM, one kernel for max, exp, row sums, loss
    and e_y = (p − onehot)·w·scale in place, then the GEMMs e_y V and e_yᵀ [h, 1]."""
    xp = get_array_module(h_all)
    rows, hidden = h_all.shape
    outputs = V.shape[0]
    dtype = h_all.dtype
    block = max(s.stop - s.start for s in blocks)
    threads = threads_per_block(launch)
    t_all = xp.ascontiguousarray(t_all, dtype=xp.int64)
    z_buffer = workspace.empty("logits", (block, outputs), dtype, xp)
    h1 = workspace.empty("fused_h1", (block, hidden + 1), dtype, xp)
    h1[:, hidden] = 1
    losses = workspace.empty("fused_row_loss", (rows,), dtype, xp)
    dVc_block = workspace.empty("dVc_block", (outputs, hidden + 1), dtype, xp)
    dVc = xp.zeros((outputs, hidden + 1), dtype=dtype)                  # [dV, dc]
    for part in blocks:
        h = h_all[part]
        n = h.shape[0]
        z = xp.matmul(h, V.T, out=z_buffer[:n])                          # V h (c in the kernel)
        grid = max(1, min(n, getattr(launch, "max_blocks", 65535)))
        launch("softmax_xent", dtype, (grid,), (threads,),
               (z, losses[part], c, t_all[part], None if w_all is None else w_all[part],
                scale, n, outputs), shared_mem=threads * max(4, dtype.itemsize))  # 16-bit: float
        xp.matmul(z, V, out=d_all[part])                                 # e_y V
        h1[:n, :hidden] = h
        dVc += xp.matmul(z.T, h1[:n], out=dVc_block)                     # [e_yᵀ h, Σ e_y]
    dV = xp.ascontiguousarray(dVc[:, :hidden])
    dc = dVc[:, hidden].copy() if c is not None else None
    return losses.sum(), dV, dc


# ---------------------------------------------------------------------------- optimizers
def _sgd(opt, n):
    return "sgd", (n, opt.lr)


def _momentum(opt, n):
    return "momentum", (n, opt.lr, opt.momentum, int(opt.nesterov))


def _adagrad(opt, n):
    return "adagrad", (n, opt.lr, opt.eps)


def _rmsprop(opt, n):
    return "rmsprop", (n, opt.lr, opt.decay, 1.0 - opt.decay, opt.eps)


def _adam(opt, n):
    correction1 = 1.0 - opt.beta1 ** opt.t
    correction2 = 1.0 - opt.beta2 ** opt.t
    return "adam", (n, opt.lr / correction1, opt.beta1, 1.0 - opt.beta1, opt.beta2,
                    1.0 - opt.beta2, opt.eps, 1.0 / math.sqrt(correction2))


# Optimizer name -> (kernel, scalar arguments); the slots go in the order of ``slots``.
OPTIMIZERS = {"sgd": _sgd, "momentum": _momentum, "adagrad": _adagrad, "rmsprop": _rmsprop,
              "adam": _adam}


def optimizer_update(plan, optimizer, param, grad, slots) -> bool:
    """One fused update of ``param`` (and its ``slots``, in the optimizer's slot order) in
    place; False when the plain update must run instead (plain plan, NumPy arrays, an
    optimizer without a kernel, or arrays that are not contiguous)."""
    launch = launcher_for(plan, param)
    # the kernels put eps outside the root, as the default: the other placement runs plain
    if launch is None or optimizer.name not in OPTIMIZERS or \
            getattr(optimizer, "eps_placement", "outside") != "outside":
        return False
    if not all(a.flags.c_contiguous for a in (param, grad, *slots)):
        return False
    kernel, scalars = OPTIMIZERS[optimizer.name](optimizer, param.size)
    _elementwise(launch, kernel, param.dtype, param.size, (param, grad, *slots, *scalars))
    return True
