"""The ParaGRU: a GRU whose recurrent weights are diagonal, so that its Jacobian
∂h_t/∂h_{t−1} is diagonal and its forward can be solved by Newton's method in time
(:mod:`gpurnn.engine.sweeps.newton`), each iteration one linear scan, and its backward by one
reverse scan of the adjoint (ParaRNN, Danieli et al. 2025, who train such GRUs and LSTMs at
7B parameters; Newton in time after DEER, Lim et al. 2023).

PyTorch's GRU equations with each recurrent matrix W_h· replaced by a vector a_· (σ the
logistic function, ⊙ elementwise)::

    r_t = σ(W_ir x_t + b_ir + a_r ⊙ h_{t−1} + b_hr)
    z_t = σ(W_iz x_t + b_iz + a_z ⊙ h_{t−1} + b_hz)
    n_t = tanh(W_in x_t + b_in + r_t ⊙ (a_n ⊙ h_{t−1} + b_hn))
    h_t = (1 − z_t) ⊙ n_t + z_t ⊙ h_{t−1}

    weight_ih (3H, input): rows [r; z; n]   bias_ih (3H,)   weight_hh (3H,): [a_r; a_z; a_n]
    bias_hh (3H,)

so a ParaGRU is ``nn.GRU`` with weight_hh's three (H, H) blocks diagonal (the tests hold it
to exactly that). Initialised as ``nn.GRU``: every parameter uniform in ±1/√H.

The Jacobian, from the step's own factors (dL/dpre_g = dL/dh_t ⊙ K_g for the input
projections pre = W_ih x + b_ih)::

    K_n = (1 − z)(1 − n²)   K_z = (h_{t−1} − n) z (1 − z)   K_r = K_n (a_n h_{t−1} + b_hn) r (1 − r)
    ∂h_t/∂h_{t−1} = z + a_r K_r + a_z K_z + a_n r K_n

The plan's ``time`` field picks, per block, the forward by Newton (``"scan"``) or the loop
(``"loop"``); ``"auto"`` takes Newton on a GPU for blocks of
:data:`gpurnn.engine.sweeps.scan.AUTO_MIN_STEPS_GPU` steps or more and the loop on a CPU,
where every Newton iteration costs about as much as the loop
(``benchmarks/newton_in_time.py``). The backward sweep is the linear adjoint of the diagonal
cells and follows their rule (:func:`gpurnn.engine.sweeps.scan.uses_scan`).

Newton is exact in at most T iterations whatever its guess, but each of its linear solves
multiplies the Jacobians along the block, and at a poor first guess they can exceed 1 for
long stretches (random large weights): the iterate then overshoots by many orders before it
settles (DEER's known instability). Every guess is clipped to the bound that the true
states obey (|h_t| ≤ max(1, |h0|): each is a convex mix of tanh's n and h_{t−1}), and a
block longer than :data:`NEWTON_STEPS` is solved in pieces of that length, each from the
last state of the one before, and a piece that has not converged in ``max_iterations``
(default :data:`MAX_ITERATIONS`) runs by the loop instead: the states are always the loop's to rounding. The model's
``newton_log`` records every solve's iteration count and the blocks that fell back.
"""
from __future__ import annotations

import collections

import numpy

from ..arrays.backend import get_array_module, is_device_array
from ..gpu import scan as gpu_scan
from ..sweeps import newton, scan
from .activations import apply
from .diagonal import DiagonalCache, DiagonalCell, _DiagonalRNN

__all__ = ["ParaGRUCell", "ParaGRU", "NewtonLog", "MAX_ITERATIONS", "NEWTON_STEPS"]

# Newton iterations before a block falls back to the loop: ParaRNN's trained models need
# about three; an untrained model at nn.GRU's initialisation five; random weights of scale
# 0.8 about ten (tests/engine/test_paragru.py); a character model trained here 12-43
# (benchmarks/newton_in_time.py). A cap on wasted work, not a measured break-even point
MAX_ITERATIONS = 50
# the longest stretch one Newton solve takes: a longer block (model.forward runs a whole
# sequence as one) is solved piece by piece, each from the last state of the one before,
# which bounds the solver's working arrays (about a dozen of the piece's states) and keeps
# them in cache on a CPU (benchmarks/newton_in_time.py: 128-step blocks beat 10^4-step ones)
NEWTON_STEPS = 1024


class NewtonLog:
    """What the Newton solves of a model's layers did: ``iterations``, the count of each of
    the latest ``keep`` solves (one per layer and block, newest last), and ``fallbacks``,
    how many blocks ran by the loop because Newton had not converged."""

    def __init__(self, keep: int = 4096):
        self.iterations = collections.deque(maxlen=keep)
        self.fallbacks = 0

    def clear(self) -> None:
        self.iterations.clear()
        self.fallbacks = 0

    def __repr__(self):
        counts = list(self.iterations)
        summary = (f"{len(counts)} solves, {min(counts)}–{max(counts)} iterations"
                   if counts else "no solves")
        return f"NewtonLog({summary}, {self.fallbacks} fallbacks)"


class ParaGRUCache(DiagonalCache):
    """:class:`DiagonalCache` with the reset gate ``r`` (time, batch, H) at the states, which
    the gradient of a_n and b_hn needs."""

    __slots__ = ("r",)

    def __init__(self, pre):
        super().__init__(pre)
        self.r = None


class ParaGRUCell(DiagonalCell):
    """One ParaGRU layer (module docstring). ``tol`` as
    :func:`gpurnn.engine.sweeps.newton.solve`'s, ``max_iterations`` (None:
    :data:`MAX_ITERATIONS`) before the block falls back to the loop; ``log`` the
    :class:`NewtonLog` that records the solves (None: one of its own)."""

    gates = 3
    cache_class = ParaGRUCache
    state_mask_refusal = ("its recurrent weight is diagonal and Newton in time solves the "
                          "unmasked recurrence")

    def __init__(self, bias: bool = True, *, tol=None, max_iterations=None, log=None):
        super().__init__(bias)
        self.tol, self.max_iterations = tol, max_iterations
        self.log = NewtonLog() if log is None else log

    def cache_bytes(self, params, batch, steps, state_size, itemsize):
        rows = steps * batch * state_size * itemsize
        # forward: pre (3), states, hprev, the gate arrays (r, z, n and the recurrent
        # projections, 6), K (3), F, J, the scan's scratch (2); backward: hprev, K (3), J,
        # r, dL/dpre (3), the gate arrays (6), the reverse scan's copies and scratch (4)
        return 17 * rows + 8 * batch * state_size * itemsize, 19 * rows

    # --- the gate maths: one function for the step and for whole blocks ---------------
    def _gates(self, params, pre, h):
        """(r, z, n, hn) for inputs ``pre`` (..., 3H) and previous states ``h`` (..., H),
        hn = a_n ⊙ h + b_hn."""
        xp = get_array_module(pre)
        H = h.shape[-1]
        hh = xp.multiply(h[..., None, :], params["weight_hh"].reshape(3, H))
        if self.bias and "bias_hh" in params:
            hh += params["bias_hh"].reshape(3, H)
        rz = pre[..., :2 * H].reshape(pre.shape[:-1] + (2, H)) + hh[..., :2, :]
        apply("sigmoid", rz, out=rz)
        r, z, hn = rz[..., 0, :], rz[..., 1, :], hh[..., 2, :]
        n = xp.multiply(r, hn)
        n += pre[..., 2 * H:]
        xp.tanh(n, out=n)
        return r, z, n, hn

    def step(self, params, x_t, s_prev):
        r, z, n, _ = self._gates(params, x_t, s_prev)
        return n + z * (s_prev - n)                                  # (1 − z) n + z h

    def linearise(self, params, pre, hprev):
        """Every step of a block at the previous states ``hprev`` (time, batch, H): (F, J, r,
        K) with F the steps' states, J the diagonal Jacobians, r the reset gates, K (time,
        batch, 3, H) the factors (module docstring)."""
        xp = get_array_module(pre)
        steps, batch, width = pre.shape
        H = width // 3
        r, z, n, hn = self._gates(params, pre, hprev)
        A = params["weight_hh"].reshape(3, H)
        K = self._buffer("K", (steps, batch, 3, H), pre)
        kr, kz, kn = K[:, :, 0], K[:, :, 1], K[:, :, 2]
        F = self._buffer("F", hprev.shape, pre)
        J = self._buffer("J", hprev.shape, pre)
        xp.subtract(hprev, n, out=kz)                                # h_{t−1} − n
        xp.multiply(z, kz, out=F)
        F += n                                                       # h_t = n + z (h − n)
        xp.subtract(1.0, z, out=J)                                   # 1 − z
        kz *= z
        kz *= J                                                      # (h − n) z (1 − z)
        xp.multiply(n, n, out=kn)
        xp.subtract(1.0, kn, out=kn)
        kn *= J                                                      # (1 − z)(1 − n²)
        xp.subtract(1.0, r, out=kr)
        kr *= r
        kr *= hn
        kr *= kn                                                     # K_n hn r (1 − r)
        xp.multiply(kr, A[0], out=J)
        J += z
        J += xp.multiply(kz, A[1], out=z)                            # z is spent: scratch
        xp.multiply(r, kn, out=n)                                    # n is spent: scratch
        n *= A[2]
        J += n                                                       # + a_n r K_n
        return F, J, r, K

    # --- forward: Newton or the loop --------------------------------------------------
    def uses_newton(self, steps, like) -> bool:
        time = getattr(self.plan, "time", "auto")
        if time == "loop" or steps < 2:
            return False
        return time == "scan" or (is_device_array(like) and steps >= scan.AUTO_MIN_STEPS_GPU)

    def forward(self, params, xin, h0, steps):
        self._refuse_state_mask()
        pre = xin.pre
        states = self._buffer("states", pre.shape[:-1] + (pre.shape[-1] // 3,), pre)
        if not self.uses_newton(steps, pre):
            return self._loop(params, pre, h0, states)
        h = h0
        for start in range(0, steps, NEWTON_STEPS):                 # a long block in pieces
            piece = slice(start, min(steps, start + NEWTON_STEPS))
            if not self._newton(params, pre[piece], h, states[piece]):
                self._loop(params, pre[piece], h, states[piece])
            h = states[piece.stop - 1]
        return states

    def _loop(self, params, pre, h0, states):
        h = h0
        for t in range(pre.shape[0]):
            states[t] = self.step(params, pre[t], h)
            h = states[t]
        return states

    def _newton(self, params, pre, h0, states) -> bool:
        """The states of the steps of ``pre`` into ``states`` by Newton; False if it did not
        converge."""
        xp = get_array_module(pre)
        launch = self.launcher(pre)

        def solve_linear(a, b, init, out):
            work = self._buffer("scratch", scan.scratch_shape(b.shape), b)
            return gpu_scan.linear_scan(a, b, init, out=out, scratch=work, launch=launch)

        bound = max(1.0, float(xp.abs(h0).max()))                    # |h_t| ≤ max(1, |h0|)
        solution = newton.solve(
            lambda hprev: self.linearise(params, pre, hprev)[:2], h0, pre.shape[0],
            tol=self.tol, max_iterations=self.max_iterations or MAX_ITERATIONS, bound=bound,
            out=states, hprev=self._buffer("hprev", states.shape, pre), scan=solve_linear)
        self.log.iterations.append(solution.iterations)
        self.log.fallbacks += not solution.converged
        return solution.converged

    # --- backward: the diagonal cells' sweep on the Jacobian ---------------------------
    def factors(self, params, xin, hprev, states):
        _, xin.a, xin.r, K = self.linearise(params, xin.pre, hprev)
        return K

    def extra_grads(self, params, xin, deltas, dpre):
        # a_g h_{t−1} + b_hg enters gate g's pre-activation as pre_g does, except n's,
        # which r multiplies: dL/d(a_n h + b_hn) = dL/dpre_n ⊙ r
        xp = get_array_module(deltas)
        H = deltas.shape[-1]
        dhh = xp.array(dpre, copy=True)
        dhh[:, :, 2] *= xin.r
        grads = {"weight_hh": xp.einsum("tbgh,tbh->gh", dhh, xin.hprev).reshape(3 * H)}
        if self.bias and "bias_hh" in params:
            grads["bias_hh"] = dhh.sum(axis=(0, 1)).reshape(3 * H)
        return grads


class ParaGRU(_DiagonalRNN):
    """ParaGRU layers (:mod:`gpurnn.engine.recurrences.paragru`) under y_t = g(V h_t + c).

    Arguments as for :class:`gpurnn.GRU` (no ``layer_norm``; ``dropout_state`` and
    ``weight_drop`` refused), and ``newton_tol`` (None: to rounding) and
    ``newton_max_iterations`` (None: :data:`MAX_ITERATIONS`; a block not converged by then
    runs by the loop) for the forward by Newton in time. Parameters per layer weight_ih (3H, input) with rows [r; z; n],
    weight_hh (3H,) the diagonals [a_r; a_z; a_n], bias_ih, bias_hh (3H,); V, c, E.
    ``newton_log``: a :class:`NewtonLog` of the Newton solves (iterations, fallbacks).
    """

    cell_type = "paragru"
    _cell_class = ParaGRUCell

    def __init__(self, input_size, hidden_size, output_size, *, newton_tol=None,
                 newton_max_iterations=None, **kw):
        if newton_tol is not None and not float(newton_tol) > 0:
            raise ValueError(f"newton_tol must be a positive number or None (to rounding), "
                             f"got {newton_tol!r}")
        if newton_max_iterations is not None and int(newton_max_iterations) < 1:
            raise ValueError(f"newton_max_iterations must be at least 1 or None "
                             f"({MAX_ITERATIONS}), got {newton_max_iterations!r}")
        self.newton_tol = None if newton_tol is None else float(newton_tol)
        self.newton_max_iterations = (None if newton_max_iterations is None
                                      else int(newton_max_iterations))
        self.newton_log = NewtonLog()
        super().__init__(input_size, hidden_size, output_size, **kw)

    def _make_cell(self):
        return ParaGRUCell(self.bias, tol=self.newton_tol,
                           max_iterations=self.newton_max_iterations, log=self.newton_log)

    def _layer_specs(self, fan_in, bias):
        H = self.hidden_size
        init = ("uniform", 1 / numpy.sqrt(H))                         # nn.GRU's
        specs = {"weight_ih": ((3 * H, fan_in), init), "weight_hh": ((3 * H,), init)}
        if bias:
            specs["bias_ih"] = ((3 * H,), init)
            specs["bias_hh"] = ((3 * H,), init)
        return specs

    @property
    def config(self) -> dict:
        config = dict(super().config)
        if self.newton_tol is not None:
            config["newton_tol"] = self.newton_tol
        if self.newton_max_iterations is not None:
            config["newton_max_iterations"] = self.newton_max_iterations
        return config
