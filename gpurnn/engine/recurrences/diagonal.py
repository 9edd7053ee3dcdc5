"""Cells whose recurrence is linear in the state with an elementwise transition, solved by
the loop or by a parallel scan over time (:mod:`gpurnn.engine.sweeps.scan`).

Every cell here computes, from the inputs alone, a transition a_t and an input b_t and then

    h_t = a_t ⊙ h_{t−1} + b_t,

so a block's states are one associative scan and its backward sweep one reverse scan of
the adjoint; the plan's ``time`` field picks scan or loop per block (``"auto"`` by
default, :func:`gpurnn.engine.sweeps.scan.uses_scan`). The cells, as their papers define them
(σ the logistic function; "Linear" one affine map of x_t, all gates' maps in one
weight_ih and bias_ih, PyTorch's ``nn.Linear`` layout and initialisation):

minGRU (Feng et al. 2024, "Were RNNs All We Needed?", §3.1, sequential mode)::

    z_t = σ(Linear_z(x_t))     h̃_t = Linear_h(x_t)     h_t = (1 − z_t) ⊙ h_{t−1} + z_t ⊙ h̃_t

    weight_ih (2H, input): rows [z; h̃]    bias_ih (2H,)

minLSTM (the same paper, §3.2, with its length-independence normalisation)::

    f_t = σ(Linear_f(x_t))     i_t = σ(Linear_i(x_t))     h̃_t = Linear_h(x_t)
    f'_t = f_t / (f_t + i_t)   i'_t = i_t / (f_t + i_t)   h_t = f'_t ⊙ h_{t−1} + i'_t ⊙ h̃_t

    weight_ih (3H, input): rows [f; i; h̃]    bias_ih (3H,)

The paper also gives log-space forms (h̃ through g(x) = x + ½ for x ≥ 0, σ(x) else, so that
h̃ > 0, and the scan as cumulative sums of logarithms, Heinsen 2023). They exist for its
scan, which forms ratios of cumulative products; the scan here composes the pairs (a, b)
and never divides, so the sequential-mode equations above run as they are, in any float
type, equal to the loop to rounding, and h̃ keeps its sign.

LRU, real-diagonal (Orvieto et al. 2023, "Resurrecting Recurrent Neural Networks for Long
Sequences", §3, with λ on the real axis)::

    λ = exp(−exp(ν))     γ = exp(γ_log)     h_t = λ ⊙ h_{t−1} + γ ⊙ (B x_t)

    weight_ih = B (H, input)    nu_log = ν (H,)    gamma_log = γ_log (H,)

with the paper's initialisation: |λ|² uniform in [r_min², r_max²] (ν = log(−½ log(u (r_max² −
r_min²) + r_min²))), the normalisation γ = √(1 − λ²), B Glorot-normal (N(0, 1/input)). The
paper's readout y_t = Re(C h_t) + D ⊙ x_t and the MLP between layers are the model's: here
the layer above (its weight_ih) or the output layer V plays C; there is no D.

These cells have no recurrent weight: ``dropout_state`` and ``weight_drop`` (which act on
weight_hh) are refused; the other dropout kinds, stacks, embeddings, bidirectional layers,
masks, chunked state, windowed truncation (by the loop) and memory budgets work as for
every cell.
"""
from __future__ import annotations

import numpy

from ..gpu import scan as gpu_scan
from ..sweeps import scan
from ..arrays.backend import get_array_module, host_rng, scatter_add
from .activations import apply
from .cells import Cell
from ..layers.stack import LayeredRNN
from ..arrays.validation import check_size

__all__ = ["DiagonalCell", "MinGRUCell", "MinLSTMCell", "LRUCell", "MinGRU", "MinLSTM", "LRU"]


class DiagonalCache:
    """A diagonal cell's ``xin``: ``pre`` (time, batch, G·H), the input projections
    W_ih x_t + b_ih of every gate; after ``forward`` the coefficients ``a`` (time, batch, H,
    or (H,) when constant) and ``b`` (time, batch, H); after ``backward_stepper`` the
    previous states ``hprev`` (time, batch, H: h0, h_0 … h_{T−2}) and the factors ``K``
    (time, batch, G, H) with dL/dpre = dL/dh_t ⊙ K."""

    __slots__ = ("pre", "a", "b", "hprev", "K")

    def __init__(self, pre):
        self.pre, self.a, self.b, self.hprev, self.K = pre, None, None, None, None

    def __getitem__(self, t):
        return self.pre[t]


class DiagonalCell(Cell):
    """What the diagonal cells share: the input projection, the two time paths (loop and
    scan) forward and back, the weight gradients. A subclass gives ``gates`` (G),
    ``coefficients(params, pre) -> (a, b)`` and ``factors(params, xin, hprev, states) -> K``
    (which may also set ``xin.a``: a nonlinear cell's transition is its Jacobian at the
    states, :mod:`gpurnn.engine.recurrences.paragru`)."""

    gates = 1
    cache_class = DiagonalCache                  # what project_inputs returns as ``xin``

    def __init__(self, bias: bool = True):
        self.bias = bool(bias)

    def state_size(self, hidden: int) -> int:
        return hidden

    def delta_size(self, hidden: int) -> int:
        return hidden

    def cache_bytes(self, params, batch, steps, state_size, itemsize):
        G, H = self.gates, state_size
        rows = steps * batch * H * itemsize
        # forward: pre (G), a, b, states, the scan's scratch (2); backward: hprev, K (G),
        # dL/dpre (G), the reverse scan's copies and scratch (4)
        return (G + 5) * rows + 8 * batch * H * itemsize, (2 * G + 5) * rows

    def _buffer(self, name, shape, like):
        return self.workspace.empty("diag_" + name, shape, like.dtype, get_array_module(like))

    # why dropout_state and weight_drop do not apply (a cell with a recurrent weight says its own)
    state_mask_refusal = "it has no recurrent weight (its transition is elementwise)"

    def _refuse_state_mask(self):
        if self.state_mask is not None:
            raise ValueError(f"{type(self).__name__} takes no dropout_state: "
                             f"{self.state_mask_refusal}")

    # --- the step and the whole-block paths -----------------------------------------
    def project_inputs(self, params, inputs):
        xp = get_array_module(inputs)
        W = params["weight_ih"]
        steps, batch = inputs.shape[:2]
        pre = self._buffer("pre", (steps, batch, W.shape[0]), W)
        if inputs.dtype.kind in "iu":
            xp.take(W.T, inputs, axis=0, out=pre)                    # columns of W_ih
        else:
            xp.matmul(inputs.reshape(steps * batch, -1), W.T,
                      out=pre.reshape(steps * batch, -1))            # one GEMM for all steps
        if self.bias and "bias_ih" in params:
            pre += params["bias_ih"]
        return self.cache_class(pre)

    def step(self, params, x_t, s_prev):
        a, b = self.coefficients(params, x_t[None])
        return (a[0] if a.ndim == 3 else a) * s_prev + b[0]

    def uses_scan(self, steps, like) -> bool:
        """Whether this block runs as a scan (the plan's ``time``; see
        :func:`gpurnn.engine.sweeps.scan.uses_scan`)."""
        return scan.uses_scan(getattr(self.plan, "time", "auto"), steps, like)

    def forward(self, params, xin, h0, steps):
        self._refuse_state_mask()
        a, b = self.coefficients(params, xin.pre)
        xin.a, xin.b = a, b
        states = self._buffer("states", b.shape, b)
        if self.uses_scan(steps, b):
            scratch = self._buffer("scratch", scan.scratch_shape(b.shape), b)
            return gpu_scan.linear_scan(a, b, h0, out=states, scratch=scratch,
                                        launch=self.launcher(b))
        return scan.linear_loop(a, b, h0, out=states)

    def backward_stepper(self, params, xin, h0, states):
        xp = get_array_module(states)
        hprev = self._buffer("hprev", states.shape, states)
        hprev[0] = h0
        hprev[1:] = states[:-1]
        xin.hprev = hprev
        xin.K = self.factors(params, xin, hprev, states)
        a = xin.a                                  # a nonlinear cell's: its Jacobian, by factors

        def back(t, g):                                              # the loop: one step
            g_prev = self.workspace.empty(("step", t % 2), g.shape, g.dtype, xp)
            xp.multiply(a[t] if a.ndim == 3 else a, g, out=g_prev)  # dL/dh_{t−1} = a_t ⊙ g
            return g, g_prev

        if self.uses_scan(states.shape[0], states):
            def sweep_block(dstates, carry, deltas):                 # the reverse scan
                scratch = self._buffer("scratch", scan.scratch_shape(dstates.shape), dstates)
                _, before = gpu_scan.reverse_scan(a, dstates, carry, out=deltas, scratch=scratch,
                                                  launch=self.launcher(dstates))
                return before
            back.sweep_block = sweep_block
        return back

    def _pre_grads(self, xin, deltas, t=None, out=None):
        """dL/dpre (..., batch, G·H) from dL/dh (..., batch, H), all steps or step ``t``."""
        xp = get_array_module(deltas)
        K = xin.K if t is None else xin.K[t]
        G, H = K.shape[-2:]
        if out is None:
            out = xp.empty(deltas.shape[:-1] + (G, H), dtype=deltas.dtype)
        xp.multiply(deltas[..., None, :], K, out=out)
        return out.reshape(deltas.shape[:-1] + (G * H,))

    def input_grads(self, params, xin, deltas, t=None):
        """dL/dx = dL/dpre W_ih, for all steps or step ``t`` (after ``backward_stepper``)."""
        W = params["weight_ih"]
        d = self._pre_grads(xin, deltas, t)
        return (d.reshape(-1, W.shape[0]) @ W).reshape(deltas.shape[:-1] + (W.shape[1],))

    def param_grads(self, params, inputs, xin, h0, states, deltas):
        steps, batch, H = deltas.shape
        D = self._pre_grads(xin, deltas, out=self._buffer("D", xin.K.shape, deltas))
        grads = self._weight_grads(params, inputs, D.reshape(steps * batch, -1))
        grads.update(self.extra_grads(params, xin, deltas, D.reshape(xin.K.shape)))
        return grads

    def _weight_grads(self, params, inputs, rows):
        xp = get_array_module(rows)
        W = params["weight_ih"]
        if inputs.dtype.kind in "iu":
            dWT = xp.zeros(W.shape[::-1], dtype=W.dtype)             # (I, G·H)
            scatter_add(dWT, inputs.reshape(-1), rows)               # dW[:, x_t] += δ_t
            grads = {"weight_ih": xp.ascontiguousarray(dWT.T)}
        else:
            grads = {"weight_ih": rows.T @ inputs.reshape(rows.shape[0], -1)}
        if self.bias and "bias_ih" in params:
            grads["bias_ih"] = rows.sum(axis=0)
        return grads

    def extra_grads(self, params, xin, deltas, dpre) -> dict:
        """Gradients of parameters other than weight_ih and bias_ih (the LRU's, the
        ParaGRU's), from dL/dh ``deltas`` (time, batch, H) and dL/dpre (time, batch, G, H)."""
        return {}

    # --- what a subclass defines --------------------------------------------------
    def coefficients(self, params, pre):
        raise NotImplementedError

    def factors(self, params, xin, hprev, states):
        raise NotImplementedError


class MinGRUCell(DiagonalCell):
    """minGRU (module docstring): a = 1 − z, b = z ⊙ h̃."""

    gates = 2

    def coefficients(self, params, pre):
        xp = get_array_module(pre)
        H = pre.shape[-1] // 2
        z = apply("sigmoid", pre[..., :H])
        b = xp.multiply(z, pre[..., H:])                             # z ⊙ h̃
        a = xp.subtract(1.0, z, out=z)                               # 1 − z
        return a, b

    def factors(self, params, xin, hprev, states):
        # dL/dk = g (h̃ − h_{t−1}) z (1 − z),  dL/dh̃ = g z
        pre = xin.pre
        xp = get_array_module(pre)
        steps, batch, width = pre.shape
        H = width // 2
        K = self._buffer("K", (steps, batch, 2, H), pre)
        z = apply("sigmoid", pre[..., :H], out=K[:, :, 1])
        kz = K[:, :, 0]
        xp.subtract(1.0, z, out=kz)
        kz *= z
        kz *= xp.subtract(pre[..., H:], hprev)
        return K


class MinLSTMCell(DiagonalCell):
    """minLSTM (module docstring): a = f / (f + i), b = i / (f + i) ⊙ h̃."""

    gates = 3

    def coefficients(self, params, pre):
        xp = get_array_module(pre)
        H = pre.shape[-1] // 3
        f = apply("sigmoid", pre[..., :H])
        i = apply("sigmoid", pre[..., H:2 * H])
        s = f + i
        a = xp.divide(f, s, out=f)                                   # f' = f / (f + i)
        b = xp.divide(i, s, out=i)
        b *= pre[..., 2 * H:]                                        # i' ⊙ h̃
        return a, b

    def factors(self, params, xin, hprev, states):
        # a = f/s, b = i h̃/s with s = f + i:
        # dL/dP_f = g i (h_{t−1} − h̃) / s² · f (1 − f),  dL/dP_i = g f (h̃ − h_{t−1}) / s² · i (1 − i),
        # dL/dh̃ = g i / s
        pre = xin.pre
        xp = get_array_module(pre)
        steps, batch, width = pre.shape
        H = width // 3
        K = self._buffer("K", (steps, batch, 3, H), pre)
        f = apply("sigmoid", pre[..., :H])
        i = apply("sigmoid", pre[..., H:2 * H])
        s = f + i
        xp.divide(i, s, out=K[:, :, 2])                              # i / s
        diff = xp.subtract(pre[..., 2 * H:], hprev)                  # h̃ − h_{t−1}
        diff /= s
        diff /= s                                                    # (h̃ − h_{t−1}) / s²
        kf, ki = K[:, :, 0], K[:, :, 1]
        xp.subtract(1.0, f, out=kf)
        kf *= f
        kf *= i
        kf *= diff
        xp.negative(kf, out=kf)
        xp.subtract(1.0, i, out=ki)
        ki *= i
        ki *= f
        ki *= diff
        return K


class LRUCell(DiagonalCell):
    """The real-diagonal LRU (module docstring): a = λ = exp(−exp(ν)) (constant, (H,)),
    b = γ ⊙ (B x_t) with γ = exp(γ_log). No bias (the paper's B u_k has none)."""

    gates = 1

    def __init__(self, bias: bool = True):
        super().__init__(bias=False)

    @staticmethod
    def transition(params):
        """(λ, γ), each (H,)."""
        xp = get_array_module(params["nu_log"])
        return xp.exp(-xp.exp(params["nu_log"])), xp.exp(params["gamma_log"])

    def coefficients(self, params, pre):
        lam, gamma = self.transition(params)
        return lam, pre * gamma

    def factors(self, params, xin, hprev, states):
        steps, batch, H = xin.pre.shape
        K = self._buffer("K", (steps, batch, 1, H), xin.pre)
        K[...] = self.transition(params)[1].reshape(1, 1, 1, H)
        return K                                                     # dL/d(Bx) = g γ

    def extra_grads(self, params, xin, deltas, dpre):
        # dλ/dν = −exp(ν) λ; dγ/dγ_log = γ
        xp = get_array_module(deltas)
        steps, batch, H = deltas.shape
        lam, gamma = self.transition(params)
        rows = deltas.reshape(-1, H)
        g_lam = (rows * xin.hprev.reshape(-1, H)).sum(axis=0)        # Σ g_t h_{t−1}
        g_gamma = (rows * xin.pre.reshape(-1, H)).sum(axis=0)        # Σ g_t (B x_t)
        return {"nu_log": g_lam * (-xp.exp(params["nu_log"]) * lam),
                "gamma_log": g_gamma * gamma}


# --------------------------------------------------------------------------- models

class _DiagonalRNN(LayeredRNN):
    """Shared constructor of :class:`MinGRU`, :class:`MinLSTM` and :class:`LRU`."""

    _cell_class: type

    def __init__(self, input_size, hidden_size, output_size, *, num_layers=1,
                 embedding_size=None, output="softmax", bias=True, dtype="float32",
                 device="cpu", seed=0, bidirectional=False, **dropout):
        self._build(input_size, hidden_size, output_size, num_layers=num_layers,
                    embedding_size=embedding_size, output=output, bias=bias, dtype=dtype,
                    device=device, seed=seed, bidirectional=bidirectional, dropout=dropout)

    def _check_dropout(self):
        super()._check_dropout()
        for kind in ("dropout_state", "weight_drop"):
            if getattr(self.dropout, kind) > 0:
                raise ValueError(f"{kind} does not apply to {type(self).__name__}: "
                                 f"{self._cell_class.state_mask_refusal}; use dropout, "
                                 f"dropout_input, dropout_output or dropout_embedding")

    def _make_cell(self):
        return self._cell_class(self.bias)

    def _layer_specs(self, fan_in, bias):
        # nn.Linear's initialisation, as the paper's code: weight and bias in ±1/sqrt(fan-in)
        G, H = self._cell_class.gates, self.hidden_size
        init = ("uniform", 1 / numpy.sqrt(fan_in))
        specs = {"weight_ih": ((G * H, fan_in), init)}
        if bias:
            specs["bias_ih"] = ((G * H,), init)
        return specs


class MinGRU(_DiagonalRNN):
    """minGRU layers (Feng et al. 2024; :mod:`gpurnn.engine.recurrences.diagonal`) under y_t = g(V h_t + c).

    Arguments as for :class:`gpurnn.GRU` (no ``layer_norm``; ``dropout_state`` and
    ``weight_drop`` refused: no recurrent weight). Parameters weight_ih (2H, input) with the
    rows [z; h̃], bias_ih (2H,) per layer (``_l1``, … above), V, c, E; weight_ih and bias_ih
    uniform in ±1/sqrt(fan-in) (``nn.Linear``). The time loop runs as a parallel scan or
    step by step as ``model.plan.time`` says (:mod:`gpurnn.engine.sweeps.scan`).
    """

    cell_type = "mingru"
    _cell_class = MinGRUCell


class MinLSTM(_DiagonalRNN):
    """minLSTM layers (Feng et al. 2024) under y_t = g(V h_t + c): as :class:`MinGRU`, with
    weight_ih (3H, input) rows [f; i; h̃] and bias_ih (3H,)."""

    cell_type = "minlstm"
    _cell_class = MinLSTMCell


class LRU(_DiagonalRNN):
    """Real-diagonal linear recurrent units (Orvieto et al. 2023) under y_t = g(V h_t + c).

    h_t = λ ⊙ h_{t−1} + γ ⊙ (B x_t) per layer, λ = exp(−exp(nu_log)) in (0, 1),
    γ = exp(gamma_log); parameters weight_ih = B (H, input), nu_log (H,), gamma_log (H,)
    per layer, V, c, E. Initialised as the paper: |λ|² uniform in [r_min², r_max²], γ =
    √(1 − λ²), B ~ N(0, 1/fan-in). ``bias`` gives the output layer's c only (B x has no
    bias). Other arguments as for :class:`MinGRU`.
    """

    cell_type = "lru"
    _cell_class = LRUCell

    def __init__(self, input_size, hidden_size, output_size, *, r_min=0.0, r_max=1.0, **kw):
        r_min, r_max = float(r_min), float(r_max)
        if not 0.0 <= r_min < r_max <= 1.0:
            raise ValueError(f"the LRU's ring needs 0 <= r_min < r_max <= 1, got r_min={r_min}, "
                             f"r_max={r_max}")
        self.r_min, self.r_max = r_min, r_max
        check_size(hidden_size, "hidden_size")
        super().__init__(input_size, hidden_size, output_size, **kw)

    def _layer_specs(self, fan_in, bias):
        H = self.hidden_size
        return {"weight_ih": ((H, fan_in), ("normal", 1 / numpy.sqrt(fan_in))),
                "nu_log": ((H,), ("lru_nu",)), "gamma_log": ((H,), ("lru_gamma",))}

    def _draw_params(self, specs, seed):
        # ν and γ_log by the paper's ring initialisation, from a generator of their own
        # (the other parameters as every model draws them)
        super()._draw_params(specs, seed)
        rng = host_rng(None if seed is None else [int(seed), 27])
        for name, (shape, init) in specs.items():
            if init[0] != "lru_nu":
                continue
            u = rng.uniform(size=shape)
            radius2 = numpy.clip(u * (self.r_max ** 2 - self.r_min ** 2) + self.r_min ** 2,
                                 1e-12, 1 - 1e-12)                   # |λ|², kept off 0 and 1
            nu_log = numpy.log(-0.5 * numpy.log(radius2))
            lam = numpy.exp(-numpy.exp(nu_log))
            setattr(self, name, nu_log)
            setattr(self, name.replace("nu_log", "gamma_log"),
                    numpy.log(numpy.sqrt(1 - lam ** 2)))

    @property
    def config(self) -> dict:
        return {**super().config, "r_min": self.r_min, "r_max": self.r_max}
