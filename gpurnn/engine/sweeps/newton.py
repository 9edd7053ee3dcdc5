"""Nonlinear recurrences solved by Newton's method in time, each iteration one linear scan.

A recurrence h_t = f_t(h_{t−1}) (t = 0 … T−1, h_{−1} = h0) is a system of T equations in
the T states. Newton's method on it (DEER, Lim et al. 2023) linearises every step at the
current guess h^(k) and solves the linear recurrence that results,

    h^(k+1)_t = f_t(h^(k)_{t−1}) + J_t (h^(k+1)_{t−1} − h^(k)_{t−1}),   J_t = ∂f_t/∂h at h^(k)_{t−1},

which, where J_t is diagonal, is the linear recurrence h_t = a_t ⊙ h_{t−1} + b_t with
a_t = J_t and b_t = f_t(h^(k)_{t−1}) − J_t ⊙ h^(k)_{t−1}: one scan
(:mod:`gpurnn.engine.sweeps.scan`), O(log T) deep. Two facts make it safe:

* **It cannot take more than T iterations.** h_{−1} = h0 is known, so the first iteration
  gives h_0 exactly, and by induction iteration k gives h_0 … h_{k−1} exactly, whatever the
  guess and whatever J (it need not be the true Jacobian): at worst the loop's T steps.
* **Where J is the exact Jacobian, convergence is quadratic** once the guess is close: a
  cell whose Jacobian is diagonal (the ParaGRU, ParaRNN: Danieli et al. 2025) reaches
  rounding in a handful of iterations; ParaRNN reports three enough for its trained
  language models. Where J is only the diagonal of a dense Jacobian (quasi-DEER, Gonzalez
  et al. 2024, on the GRU and LSTM), the fixed point is the same and the convergence linear:
  ``benchmarks/newton_in_time.py`` measures how many iterations that takes.

The solution is the loop's to rounding: once converged, h^(k+1)_t − f_t(h^(k+1)_{t−1}) is
rounding in f and in the scan (whose reassociation :mod:`gpurnn.engine.sweeps.scan` bounds).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy

from ..arrays.backend import get_array_module
from . import scan as host_scan

__all__ = ["solve", "Solution", "rounding_tolerance", "ROUNDING_UNITS"]

# the change (in units of the largest |state|, at least 1) below which an iteration is at
# rounding (the default tolerance)
ROUNDING_UNITS = 16


class Solution(NamedTuple):
    """What :func:`solve` returns: the states, the iterations run, the largest change of the
    last one, and whether it met the tolerance (or ran the T iterations that are always
    enough)."""
    states: object
    iterations: int
    change: float
    converged: bool


def rounding_tolerance(dtype, scale=1.0) -> float:
    """The default tolerance: ROUNDING_UNITS unit roundoffs of ``dtype`` times ``scale``."""
    return ROUNDING_UNITS * float(numpy.finfo(dtype).eps) / 2 * max(float(scale), 1.0)


def solve(linearise, h0, steps, *, tol=None, max_iterations=None, bound=None, out=None,
          hprev=None, scan=None) -> Solution:
    """The states (steps, batch, ...) of h_t = f_t(h_{t−1}) from ``h0`` by Newton's method.

    ``linearise(hprev)`` takes every step's previous state, hprev (steps, batch, ...) =
    (h0, h_0, …, h_{T−2}) of the current guess, and returns (F, J): f_t(hprev_t) and the
    diagonal J_t used as ∂f_t/∂h (exact or an approximation), arrays it may reuse from
    call to call but that must not alias ``hprev`` or ``out``. The first guess is h0 at
    every step. ``tol``: stop when no state changes by more than this (None: to rounding,
    :func:`rounding_tolerance` of the largest state, or when the change has stopped falling
    below the square root of that, the rounding floor of a long scan); ``max_iterations``
    (None: ``steps``, which is always enough). ``bound``: a bound on every true |h_t|
    (None: none known); each guess is clipped to it and what overflowed is reset to 0,
    which keeps a linearisation that grows without bound (|J| > 1 over a long stretch, at
    a poor first guess) from leaving inf or NaN behind and changes no exact state. ``out``
    and ``hprev`` are optional buffers of the states' shape; ``scan(a, b, h0, out)``
    solves one linear recurrence (None: :func:`gpurnn.engine.sweeps.scan.linear_scan`).
    """
    xp = get_array_module(h0)
    shape = (steps,) + tuple(h0.shape)
    if out is None:
        out = xp.empty(shape, dtype=h0.dtype)
    if hprev is None:
        hprev = xp.empty(shape, dtype=h0.dtype)
    if scan is None:
        def scan(a, b, init, out):
            return host_scan.linear_scan(a, b, init, out=out)
    limit = steps if max_iterations is None else max(1, int(max_iterations))
    hprev[...] = h0
    last = xp.array(h0, copy=True)                                   # the guess's h_{T−1}
    iterations, change, previous, converged = 0, numpy.inf, numpy.inf, False
    while iterations < limit and not converged:
        F, J = linearise(hprev)
        xp.multiply(J, hprev, out=out)
        xp.subtract(F, out, out=F)                                   # b = F − J ⊙ hprev
        scan(J, F, h0, F)                                            # the new guess, in F
        if bound is not None:
            xp.nan_to_num(F, copy=False, nan=0.0, posinf=bound, neginf=-bound)
            xp.clip(F, -bound, bound, out=F)
        changes = (_largest_change(xp, F[:-1], hprev[1:], out[:-1]),
                   _largest_change(xp, F[-1], last, out[-1]))
        change = math.nan if any(map(math.isnan, changes)) else max(changes)  # (max drops nan)
        hprev[1:] = F[:-1]
        last[...] = F[-1]
        iterations += 1
        if not math.isfinite(change):
            # an overflowed guess (no ``bound`` to hold it) is no solution, however small
            # its change looks against a largest state that is itself inf
            converged = False
        elif tol is not None:
            converged = change <= tol
        else:
            floor = rounding_tolerance(F.dtype, float(xp.abs(F).max()))
            converged = change <= floor or (change >= previous and change <= floor ** 0.5)
            previous = change
    out[...] = F
    # T iterations are exact in exact arithmetic, not once a guess has overflowed
    return Solution(out, iterations, change,
                    converged or (iterations >= steps and math.isfinite(change)))


def _largest_change(xp, new, old, work):
    """max |new − old|; inf or nan where either holds them (the max propagates nan)."""
    if new.size == 0:
        return 0.0
    xp.subtract(new, old, out=work)
    xp.abs(work, out=work)
    return float(work.max())
