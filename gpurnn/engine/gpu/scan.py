"""The diagonal cells' scan over time as CUDA kernels (``kernels/scan.cu``).

:func:`linear_scan` and :func:`reverse_scan` solve what :mod:`gpurnn.engine.sweeps.scan`'s
functions of the same names solve — h_t = a_t ⊙ h_{t−1} + b_t from h0, and its adjoint
G_t = d_t + a_{t+1} ⊙ G_{t+1} from a carry — with the same arguments and results, on a
kernel launcher (:func:`gpurnn.engine.gpu.fused.launcher_for`); without one, or for a dtype
the kernels are not built for, they call those functions.

Design: a chunked scan, one thread per (chunk, lane), a lane being one (batch, hidden)
element. Time is cut into C = ⌈T / L⌉ chunks of L = ⌈√T⌉ steps
(:func:`gpurnn.engine.gpu.launches.kernel_chunk_length`; the launches:
``launches.scan_phases``):

1. ``scan_chunk_totals`` — every chunk but the last composes its L steps from zero into one
   affine map h ↦ A h + B (C − 1 chunks × lanes threads);
2. ``scan_carries`` — every lane runs the C − 1 compositions in order from h0 (the carry
   for the adjoint): the state entering each chunk (lanes threads);
3. ``scan_chunk_states`` — every chunk runs its L steps again from that entry state and
   writes the states (C chunks × lanes threads).

So a block is 3 launches (1 when it is one chunk: T ≤ 2), whatever T; the longest thread
runs 2L + C − 1 ≈ 3√T dependent steps (the loop: T launches of T dependent steps), and the
work is about 2 T·B·H compositions, reading a and b twice and writing the states once
(the array-op Blelloch scan: 2⌈log₂ T⌉ levels of launches, about 5 T·B·H operations).
The adjoint is the same recurrence over reversed time (``kernels/scan.cuh``).

Rounding. Every term of h_t passes through at most 2(t − s) + 2 roundings (the loop's
2(t − s) + 1 and one more where a chunk's total enters the carry; a chunk's product A of L
factors takes L − 1 roundings for the L steps it spans, fewer than the loop's 2L), so
|kernel − loop| ≤ (γ_{2T+1} + γ_{2T+2}) S_t ≤ :data:`BOUND_FACTOR` ·
:func:`gpurnn.engine.sweeps.scan.rounding_bound` (γ_{2T+2} − γ_{2T+1} ≈ u is far below the
latter's γ_{4⌈log₂T⌉+2} ≥ γ_6). The first chunk (the last, for the adjoint) is the loop's
arithmetic exactly; a GPU's fused multiply-adds only remove roundings.
"""
from __future__ import annotations

import math

import numpy

from ..arrays.backend import get_array_module
from ..sweeps import scan
from . import kernels
from .fused import _elementwise, contiguous
from .launches import kernel_chunk_length, scan_phases

__all__ = ["linear_scan", "reverse_scan", "BOUND_FACTOR"]

BOUND_FACTOR = 2


def _has_kernels(dtype) -> bool:
    return numpy.dtype(dtype).name in kernels.KERNELS["scan_chunk_states"].dtypes


def linear_scan(a, b, h0, *, out=None, scratch=None, launch=None, chunk=None):
    """States (T, batch, ...) of h_t = a_t ⊙ h_{t−1} + b_t from ``h0`` (batch, ...), ``a``
    (T, batch, ...) or broadcast to it (the LRU's (H,)): the kernels through ``launch``,
    else :func:`gpurnn.engine.sweeps.scan.linear_scan`. ``out`` (may be ``b``) receives the
    states; ``scratch`` (any contiguous array of the dtype with 2 (C − 1) · batch · ...
    elements or more, such as ``scan.scratch_shape``'s) holds the chunk totals; ``chunk``
    overrides ``launches.kernel_chunk_length``."""
    if launch is None or not _has_kernels(b.dtype):
        return scan.linear_scan(a, b, h0, out=out, scratch=scratch)
    states, _ = _solve(launch, a, b, h0, out, scratch, chunk, reverse=False)
    return states


def reverse_scan(a, d, carry=None, *, out=None, scratch=None, launch=None, chunk=None):
    """The adjoint of :func:`linear_scan`: (G, a_0 ⊙ G_0) with G_t = d_t + a_{t+1} ⊙ G_{t+1}
    and G_{T−1} = d_{T−1} + ``carry`` (None: zero), as
    :func:`gpurnn.engine.sweeps.scan.reverse_scan` (called without ``launch``)."""
    if launch is None or not _has_kernels(d.dtype):
        return scan.reverse_scan(a, d, carry, out=out, scratch=scratch)
    return _solve(launch, a, d, carry, out, scratch, chunk, reverse=True)


def _solve(launch, a, x, init, out, scratch, chunk, reverse):
    xp = get_array_module(x)
    steps, dtype = x.shape[0], x.dtype
    lanes, hidden = math.prod(x.shape[1:]), x.shape[-1]
    chunk = chunk or kernel_chunk_length(steps)
    chunks = -(-steps // chunk)
    x = contiguous(xp, x)
    a_steps = a.shape != x.shape[-1:]
    # a (T, batch, ...) or (H,); any other shape is broadcast to (T, batch, ...)
    a = contiguous(xp, _full(xp, a, x.shape) if a_steps else a)
    if init is not None:
        init = contiguous(xp, _full(xp, init, x.shape[1:]))
    target = out if out is not None and out.flags.c_contiguous else xp.empty(x.shape, dtype)
    totals = 2 * (chunks - 1) * lanes
    flat = (scratch.reshape(-1)[:totals] if scratch is not None and scratch.dtype == dtype
            and scratch.flags.c_contiguous and scratch.size >= totals
            else xp.empty(totals, dtype))
    totals_a, totals_b = flat[:totals // 2], flat[totals // 2:]
    before = xp.empty(x.shape[1:], dtype) if reverse else None
    shape = (steps, hidden, int(a_steps), chunk, int(reverse))
    for kernel, items in scan_phases(steps, lanes, chunk):
        args = {"scan_chunk_totals": (a, x, totals_a, totals_b, lanes) + shape,
                "scan_carries": (totals_a, totals_b, init, lanes, chunks),
                "scan_chunk_states": (a, x, target, totals_b if chunks > 1 else None, init,
                                      before, lanes) + shape}[kernel]
        _elementwise(launch, kernel, dtype, items, args)
    if out is not None and target is not out:
        out[...] = target
        target = out
    return target, before


def _full(xp, array, shape):
    """``array`` broadcast to ``shape`` as an array of its own (a kernel is given memory,
    not strides)."""
    if array.shape == tuple(shape):
        return array
    full = xp.empty(shape, array.dtype)
    full[...] = array
    return full
