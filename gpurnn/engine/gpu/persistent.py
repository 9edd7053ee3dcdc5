"""Persistent recurrences: a cell's whole forward over time, or its whole full-BPTT
backward sweep, as one cooperative CUDA kernel (``kernels/persistent.cu``).

Each block of the grid owns a slice of the hidden units and keeps the matching slice of the
recurrent weights in shared memory for the whole sequence (rows forward, columns backward);
the blocks meet at a grid barrier once per step. No per-step launches and no cuBLAS call, so
a launch can also be captured in a CUDA graph (CuPy refuses cuBLAS during stream capture).
The technique is that of Baidu's persistent RNNs and cuDNN's PERSIST algorithms.

The results equal the per-step path's: the forward fills the same buffers (a gated cell's
gate cache included, so ``param_grads`` follows unchanged), the backward returns the deltas
``bptt.sweep`` returns with ``truncate=None`` (from a ``carry``: the gradient the next
block of a long sequence left, as ``bptt.run`` carries it). The plan selects them per block
(:meth:`gpurnn.engine.plan.Plan.choose`); the cells call them from ``forward`` and from the
engine's whole-sweep hook ``backward_sweep`` (:func:`gpurnn.engine.sweeps.bptt.run`). ``launch``
is a kernel launcher, as in :mod:`gpurnn.engine.gpu.fused`.
"""
from __future__ import annotations

from . import fused, launches
from .fused import contiguous, threads_per_block
from ..recurrences.activations import ACTIVATIONS
from ..arrays.backend import get_array_module

__all__ = ["launch_shape", "elman_forward", "elman_backward", "gru_forward", "gru_backward",
           "lstm_forward", "lstm_backward"]


def launch_shape(kernel, dtype, hidden, launch, threads, lanes, batch=0):
    """(blocks, threads, lanes, rows, shared bytes) of a persistent launch
    (:func:`gpurnn.engine.gpu.launches.persistent_shape`: one block per multiprocessor, fewer
    when H is smaller, each owning ceil(H / blocks) units and their slice of W in shared
    memory besides one value per thread); a ValueError when that does not fit on chip with
    every block resident."""
    threads = threads or threads_per_block(launch)
    blocks, threads, lanes, rows, shared = launches.persistent_shape(
        kernel, dtype.itemsize, hidden, batch, launch.multiprocessors, threads, lanes)
    fit = launch.max_cooperative_blocks(kernel, dtype, threads, shared)
    if fit < blocks:
        raise ValueError(f"the persistent kernel needs {blocks} resident blocks with "
                         f"{shared} bytes of shared memory each, only {fit} fit: hidden "
                         f"{hidden} is too large for it")
    return blocks, threads, lanes, rows, shared


def elman_forward(params, xin, h0, activation, launch, threads=None, lanes=None,
                             out=None, barrier=None):
    """All states (T, B, H) of h_t = f(W h_{t-1} + xin_t) from one persistent cooperative
    kernel (``kernels/persistent.cu``): W's rows stay in shared memory for the whole
    sequence and no cuBLAS call is made, so the launch can also be captured in a CUDA graph
    (give ``out`` and ``barrier``, two zeroed uint32, to allocate nothing; a barrier is
    back at zero after every use). ``xin`` (T, B, H) holds U x_t + b."""
    xp = get_array_module(xin)
    steps, batch, hidden = xin.shape
    blocks, threads, lanes, rows, shared = launch_shape(
        "elman_persistent_forward", xin.dtype, hidden, launch, threads, lanes)
    states = xp.empty(xin.shape, dtype=xin.dtype) if out is None else out
    launch("elman_persistent_forward", xin.dtype, (blocks,), (threads,),
           (states, contiguous(xp, xin), contiguous(xp, h0), contiguous(xp, params["weight_hh"]),
            xp.zeros(2, dtype=xp.uint32) if barrier is None else barrier, steps, batch,
            hidden, rows, lanes, ACTIVATIONS.index(activation)), shared_mem=shared)
    return states


def elman_backward(params, states, dstates, activation, launch, threads=None,
                              lanes=None, out=None, g=None, barrier=None, carry=None):
    """The per-step deltas e_h(t) (T, B, H) of full BPTT for the Elman cell from one
    persistent cooperative kernel: what ``bptt.sweep`` computes with ``truncate=None`` from
    the states (T, B, H) and each step's output gradient ``dstates`` (T, B, H); W's
    columns stay in shared memory, one grid barrier per step. ``out``, ``g`` (B, H; left
    holding dL/dh_{-1}) and ``barrier`` may be given, as for the forward. ``carry`` (B, H):
    the gradient reaching h_{T-1} from later steps (the sweep of the next block of a long
    sequence), used as the running gradient in place of zeros and left holding
    dL/dh_{-1}; without it the sweep starts from zero, as ``bptt.sweep`` does."""
    xp = get_array_module(states)
    steps, batch, hidden = states.shape
    blocks, threads, lanes, rows, shared = launch_shape(
        "elman_persistent_backward", states.dtype, hidden, launch, threads, lanes)
    deltas = xp.empty(states.shape, dtype=states.dtype) if out is None else out
    if carry is not None:
        g = carry
    elif g is None:
        g = xp.zeros((batch, hidden), dtype=states.dtype)
    else:
        g.fill(0)
    launch("elman_persistent_backward", states.dtype, (blocks,), (threads,),
           (deltas, g, contiguous(xp, dstates), contiguous(xp, states),
            contiguous(xp, params["weight_hh"]), xp.zeros(2, dtype=xp.uint32) if barrier is None
            else barrier, steps, batch, hidden, rows, lanes, ACTIVATIONS.index(activation)),
           shared_mem=shared)
    return deltas


def gru_forward(cell, params, xin, h0, launch, threads=None, lanes=None):
    """``GRUCell.forward`` as one persistent cooperative kernel: the rows of W_hh for a
    block's units (all three gates) stay in shared memory for the whole sequence; fills the
    same gate cache (gates r, z, n and ``extra`` = W_hn h + b_hn) and returns the states."""
    xp = get_array_module(h0)
    gates, hn = xin.gates, xin.extra
    steps, batch, width = gates.shape
    H = width // 3
    blocks, threads, lanes, rows, shared = launch_shape(
        "gru_persistent_forward", h0.dtype, H, launch, threads, lanes, batch)
    states = cell.workspace.empty("gate_states", (steps, batch, H), h0.dtype, xp)
    launch("gru_persistent_forward", h0.dtype, (blocks,), (threads,),
           (states, gates, hn, contiguous(xp, h0), contiguous(xp, params["weight_hh"]),
            params["bias_hh"][2 * H:] if cell.bias else None, xp.zeros(2, dtype=xp.uint32),
            steps, batch, H, rows, lanes), shared_mem=shared)
    return states


def gru_backward(cell, params, xin, h0, states, dstates, launch, threads=None,
                            lanes=None, carry=None, out=None):
    """The GRU's full-BPTT deltas dL/dS_t (T, B, H), what ``bptt.sweep`` returns with
    ``truncate=None``, as one persistent cooperative kernel after the factors kernel (which
    also leaves ``xin.K``, ``xin.K2`` for ``param_grads``, as the stepper does). ``carry``
    (B, H): the gradient from later steps, updated in place to dL/dh_{-1} (see
    :func:`elman_backward`); ``out`` the deltas' buffer."""
    xp = get_array_module(states)
    steps, batch, H = states.shape
    fused.gru_backward_stepper(cell, params, xin, h0, states, launch)  # K, K2, all t
    blocks, threads, lanes, rows, shared = launch_shape(
        "gru_persistent_backward", states.dtype, H, launch, threads, lanes, batch)
    deltas = xp.empty(states.shape, dtype=states.dtype) if out is None else out
    g = xp.zeros((batch, H), dtype=states.dtype) if carry is None else carry
    launch("gru_persistent_backward", states.dtype, (blocks,), (threads,),
           (deltas, g,
            xp.empty((2, batch, 3 * H), dtype=states.dtype), contiguous(xp, dstates),
            xin.K2, xin.gates, contiguous(xp, params["weight_hh"]),
            xp.zeros(2, dtype=xp.uint32), steps, batch, H, rows, lanes), shared_mem=shared)
    return deltas


def lstm_forward(cell, params, xin, h0, launch, threads=None, lanes=None):
    """``LSTMCell.forward`` as one persistent cooperative kernel (the rows of W_hh for a
    block's units, all four gates, in shared memory); fills the same gate cache (i, f, g, o)
    and returns the states (T, B, [h, c])."""
    xp = get_array_module(h0)
    gates = xin.gates
    steps, batch, width = gates.shape
    H = width // 4
    blocks, threads, lanes, rows, shared = launch_shape(
        "lstm_persistent_forward", h0.dtype, H, launch, threads, lanes, batch)
    states = cell.workspace.empty("gate_states", (steps, batch, 2 * H), h0.dtype, xp)
    launch("lstm_persistent_forward", h0.dtype, (blocks,), (threads,),
           (states, gates, contiguous(xp, h0), contiguous(xp, params["weight_hh"]),
            xp.zeros(2, dtype=xp.uint32), steps, batch, H, rows, lanes), shared_mem=shared)
    return states


def lstm_backward(cell, params, xin, h0, states, dstates, launch, threads=None,
                             lanes=None, carry=None, out=None):
    """The LSTM's full-BPTT deltas dL/dS_t (T, B, 2H), what ``bptt.sweep`` returns with
    ``truncate=None``, as one persistent cooperative kernel after the factors kernel (which
    leaves ``xin.K``, ``xin.K2`` for ``param_grads``). ``carry`` (B, 2H) = [dL/dh, dL/dc]
    from later steps, updated in place to dL/dS_{-1}; ``out`` the deltas' buffer."""
    xp = get_array_module(states)
    steps, batch, width = states.shape
    H = width // 2
    fused.lstm_backward_stepper(cell, params, xin, h0, states, launch)  # K, ∂h/∂c, all t
    blocks, threads, lanes, rows, shared = launch_shape(
        "lstm_persistent_backward", states.dtype, H, launch, threads, lanes, batch)
    deltas = xp.empty(states.shape, dtype=states.dtype) if out is None else out
    g = xp.zeros((batch, 2 * H), dtype=states.dtype) if carry is None else carry
    launch("lstm_persistent_backward", states.dtype, (blocks,), (threads,),
           (deltas, g,
            xp.empty((2, batch, 4 * H), dtype=states.dtype), contiguous(xp, dstates),
            xin.K, xin.K2, xin.gates, contiguous(xp, params["weight_hh"]),
            xp.zeros(2, dtype=xp.uint32), steps, batch, H, rows, lanes), shared_mem=shared)
    return deltas
