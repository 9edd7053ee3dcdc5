"""Gated cells on the batched BPTT engine: GRU and LSTM, with PyTorch's equations and layout.

Both follow ``torch.nn.GRU`` / ``torch.nn.LSTM`` exactly (gate order, the GRU's hidden
bias inside the reset product), so weights move between the two libraries unchanged
(:mod:`gpurnn.torch_interop`). With H hidden units and G gates (GRU 3, LSTM 4):

    weight_ih (G·H, input)   weight_hh (G·H, H)   bias_ih (G·H,)   bias_hh (G·H,)

GRU (gates r, z, n)::

    r = σ(W_ir x + b_ir + W_hr h + b_hr)
    z = σ(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))
    h' = (1 − z) ⊙ n + z ⊙ h

LSTM (gates i, f, g, o); the cell's state is [h, c], shape (batch, 2H)::

    i, f, o = σ(W_i· x + b_i· + W_h· h + b_h·)      g = tanh(W_ig x + b_ig + W_hg h + b_hg)
    c' = f ⊙ c + i ⊙ g       h' = o ⊙ tanh(c')

LSTM with ``proj_size`` P > 0 (LSTMP, Sak et al. 2014; PyTorch's ``proj_size``): h' =
W_hr (o ⊙ tanh(c')) with weight_hr (P, H), so h is (batch, P), weight_hh is (4H, P) and
the state is [h, c], (batch, P + H). Each step of the backward sweep turns dL/dh into
dL/dm = dL/dh W_hr for m = o ⊙ tanh(c) (a second GEMM, P × H) and goes on from there as
from dL/dh without a projection.

How the work is split (as for the Elman cell): the input projections of all gates for all
steps are one GEMM over batch·time rows (a row gather for token ids); each step adds
h_{t-1} @ weight_hhᵀ for all gates with one GEMM and applies the gate activations in
place, so the projection buffer becomes the gate cache. The backward sweep first turns the
cache into factors K, for all steps at once, such that the gradient on every gate's
pre-activation is (dL/dS_t) ⊙ K_t; then each step is a few elementwise products and one
GEMM with weight_hh. The per-step ``delta`` the engine collects is dL/dS_t itself (state
shaped), and ``param_grads`` multiplies the collected deltas by K for all steps at once
before the weight gradients, single GEMMs over batch·time rows. (The gate gradients are
linear in dL/dS_t, so summing the window origins first, as windowed truncation does, is
exact.)
"""
from __future__ import annotations

import math
import numbers

import numpy

from ..gpu import fused, persistent
from ..arrays.backend import get_array_module, scatter_add
from .cells import Cell, masked_previous
from ..arrays.host_threads import small_products
from ..layers.stack import LayeredRNN
from ..models.torch_interop import TorchInterop
from ..arrays.validation import check_size

__all__ = ["GRUCell", "LSTMCell", "GRU", "LSTM"]


class GateCache:
    """A gated cell's ``xin``: the gate buffer and what the backward sweep derives from it.

    ``gates`` (time, batch, G·H) holds the input projections after ``project_inputs`` (with
    the sigmoid gates' rows halved, see :meth:`_GatedCell.gate_scale`) and the gate values
    after ``forward``; ``extra`` (GRU: W_hn h_{t-1} + b_hn, (time, batch,
    H)); ``K`` (time, batch, G, H) and ``K2`` the backward factors, set by
    ``backward_stepper`` and read by ``param_grads`` and ``input_grads``. ``swept``
    (time, batch, G, H) collects the hidden-side gate gradients that the backward sweep
    computes step by step anyway (summed over window origins), and ``swept_steps`` which
    steps it holds: when it holds all of them, ``param_grads`` takes them from there
    instead of recomputing them from the deltas. ``projection`` (an LSTM with
    ``proj_size``): (weight_hr (P, H), m = o ⊙ tanh(c) (time, batch, H)), set by
    ``backward_stepper``; None otherwise.
    """

    __slots__ = ("gates", "extra", "K", "K2", "swept", "swept_steps", "projection")

    def __init__(self, gates, extra=None):
        self.gates, self.extra, self.K, self.K2 = gates, extra, None, None
        self.swept, self.swept_steps = None, set()
        self.projection = None

    def sweep_target(self, t, d):
        """Where the sweep's gate gradients ``d`` (..., batch, G, H) of step ``t`` go: a
        slot of ``swept`` for a plain step (the caller writes it), or None after adding a
        windowed step's origins up into it."""
        self.swept_steps.add(t)
        if d is None:
            return self.swept[t]
        d.reshape((-1,) + d.shape[-3:]).sum(axis=0, out=self.swept[t])
        return None

    def swept_complete(self, steps) -> bool:
        return self.swept is not None and len(self.swept_steps) == steps

    def __getitem__(self, t):
        return self.gates[t]


class _GatedCell(Cell):
    """What GRU and LSTM share: the fused input projection and the weight gradients.

    Big arrays live in the cell's :attr:`workspace` (reused across calls); their names
    start with ``gate_`` so they never meet the engine's or the output layer's.
    """

    gates: int  # G: gate blocks in weight_ih / weight_hh

    def __init__(self, bias: bool = True):
        self.bias = bool(bias)

    def state_size(self, hidden: int) -> int:
        return hidden

    def delta_size(self, hidden: int) -> int:
        """Width of the per-step delta: dL/dS_t, so the state's."""
        return self.state_size(hidden)

    # (forward, backward) arrays of (time, batch, hidden) each: the cache (gates, extra,
    # states) and the backward factors (K, K2, temporaries, the gate gradients D, D2).
    _cache_widths = (0, 0)

    def cache_bytes(self, params, batch, steps, state_size, itemsize):
        H = params["weight_hh"].shape[0] // self.gates              # (columns: P if projected)
        forward, backward = self._cache_widths
        step = 8 * self.gates * batch * H * itemsize                # per-step scratch
        return (forward * steps * batch * H * itemsize + step,
                backward * steps * batch * H * itemsize + step)

    def _buffer(self, name, shape, like):
        return self.workspace.empty("gate_" + name, shape, like.dtype, get_array_module(like))

    def kernel_hidden(self, params, array) -> int:
        return params["weight_hh"].shape[0] // self.gates

    def _choose(self, params, array, phase, steps, window=None, allow_persistent=True):
        """The plan's choice for this block's phase (:meth:`Cell.choose`)."""
        return self.choose(array, phase, steps, array.shape[-2],
                           self.kernel_hidden(params, array), window, allow_persistent)

    def backward_sweep(self, params, xin, h0, states, dstates, carry, window):
        """The whole block's deltas as one persistent kernel (after the factors kernel,
        which leaves ``xin.K``, ``xin.K2`` for ``param_grads``) where the plan chooses it;
        None otherwise (the engine then sweeps ``backward_stepper``)."""
        choice, launch = self.sweep_choice(params, states, window)
        if choice.path != "persistent":
            return None
        xp = get_array_module(states)
        run = getattr(persistent, f"{self.kernel_family}_backward")
        return run(self, params, xin, h0, states, fused.contiguous(xp, dstates), launch,
                   carry=carry, out=self._buffer("persistent_deltas", states.shape, states))

    def gate_scale(self, hidden, like):
        """(G·H,): ½ on the rows of sigmoid gates, 1 on tanh ones. The forward works on the
        pre-activations scaled by it, so that one tanh serves every gate:
        σ(a) = ½ tanh(a/2) + ½ (two cheap operations on the sigmoid blocks afterwards)."""
        xp = get_array_module(like)
        scale = xp.full(self.gates * hidden, 0.5, dtype=like.dtype)
        scale[self._tanh_block * hidden:(self._tanh_block + 1) * hidden] = 1.0
        return scale

    def _scaled_WT(self, W, hidden):
        """(scale ⊙ W)ᵀ, (columns, G·H), as a C-contiguous copy (the same values as the
        transposed view): NumPy's BLAS runs the step's h @ Wᵀ on a transposed view 1.1-2.2×
        slower than on a contiguous operand at small batches (``benchmarks/cpu_roofline.py
        --kernels``)."""
        return get_array_module(W).ascontiguousarray(W.T) * self.gate_scale(hidden, W)

    def _project(self, W, inputs, bias, scale):
        """Input side of every gate for all steps, (time, batch, G·H) = scale ⊙ (W x_t + bias)."""
        xp = get_array_module(inputs)
        steps, batch = inputs.shape[:2]
        gates = self._buffer("gates", (steps, batch, W.shape[0]), W)
        if inputs.dtype.kind in "iu":
            xp.take(W.T, inputs, axis=0, out=gates)                  # columns of W_ih
            gates *= scale                                           # (a vocabulary can be large)
        else:
            xp.matmul(inputs.reshape(steps * batch, -1), (W * scale[:, None]).T,
                      out=gates.reshape(steps * batch, -1))          # one GEMM for all steps
        if bias is not None:
            gates += bias * scale
        return gates

    def _weight_grads(self, params, inputs, rows, rows_h, hprev, h0, batch):
        """The weight gradients of :meth:`_matrix_grads` and, with biases, db_ih = Σ δ and
        db_hh = Σ δʰ."""
        grads = self._matrix_grads(params, inputs, rows, rows_h, hprev, h0, batch)
        if self.bias:
            grads["bias_ih"] = rows.sum(axis=0)
            grads["bias_hh"] = rows_h.sum(axis=0) if rows_h is not rows else grads["bias_ih"].copy()
        return grads

    def _matrix_grads(self, params, inputs, rows, rows_h, hprev, h0, batch):
        """dW_ih = Σ_t δ_tᵀ x_t and dW_hh = Σ_t δʰ_tᵀ h_{t-1} from the gradients ``rows`` /
        ``rows_h`` (time·batch, G·H) on W_ih x_t / W_hh h_{t-1}; ``hprev`` holds
        h_0 … h_{T-2} (time − 1, batch, H), h_{-1} = h0 is taken separately (no concatenation)."""
        xp = get_array_module(rows)
        W = params["weight_ih"]
        if inputs.dtype.kind in "iu":
            dWT = xp.zeros(W.shape[::-1], dtype=W.dtype)             # (I, G·H)
            scatter_add(dWT, inputs.reshape(-1), rows)               # dW[:, x_t] += δ_t
            dW_ih = xp.ascontiguousarray(dWT.T)
        else:
            dW_ih = rows.T @ inputs.reshape(rows.shape[0], -1)
        hidden = h0.shape[-1]
        dW_hh = rows_h[batch:].T @ hprev.reshape(-1, hidden) + rows_h[:batch].T @ h0
        return {"weight_ih": dW_ih, "weight_hh": dW_hh}

    def input_grads(self, params, xin, deltas, t=None):
        """dL/dx = δ W_ih: what a layer below (or an embedding) receives.

        ``deltas`` are the engine's deltas (dL/dS) for all steps (time, batch, S), or for
        step ``t`` only (..., batch, S); needs ``backward_stepper`` to have run on ``xin``.
        """
        W = params["weight_ih"]
        d = self._gate_grads(xin, deltas, t)                         # (..., B, G, H)
        return (d.reshape(-1, W.shape[0]) @ W).reshape(deltas.shape[:-1] + (W.shape[1],))


class GRUCell(_GatedCell):
    """PyTorch's GRU step (module docstring), batched over batch·time where it can be.

    ``xin`` is a :class:`GateCache`: gates (time, batch, 3H) = W_ih x + b_ih (with b_hr,
    b_hz folded in; r and z halved) before the forward, r, z, n after it, and ``extra`` =
    W_hn h_{t-1} + b_hn,
    which the reset gate's gradient needs. ``K`` gives the input-side gate gradients
    δ = g ⊙ K, ``K2`` the hidden side (a_n's hidden part is r ⊙ (W_hn h + b_hn)).
    """

    gates = 3
    kernel_family = "gru"
    _tanh_block = 2  # n
    _cache_widths = (5, 13)

    def project_inputs(self, params, inputs):
        W = params["weight_ih"]
        hidden = W.shape[0] // 3
        scale = self.gate_scale(hidden, W)
        bias = None
        if self.bias:
            bias = params["bias_ih"].copy()
            bias[:2 * hidden] += params["bias_hh"][:2 * hidden]      # b_hr, b_hz sit outside r ⊙ ·
        gates = self._project(W, inputs, bias, scale)
        return GateCache(gates, self._buffer("hn", gates.shape[:2] + (hidden,), gates))

    def step(self, params, x_t, s_prev):
        """One step from the row ``x_t`` (batch, 3H) of ``project_inputs``, left intact."""
        xp = get_array_module(s_prev)
        H = s_prev.shape[-1]
        gh = self.masked(s_prev) @ params["weight_hh"].T             # (B, 3H)
        if self.bias:
            gh[:, 2 * H:] += params["bias_hh"][2 * H:]
        rz = 0.5 * xp.tanh(x_t[:, :2 * H] + 0.5 * gh[:, :2 * H]) + 0.5   # σ; x_t holds a/2
        r, z = rz[:, :H], rz[:, H:]
        n = xp.tanh(x_t[:, 2 * H:3 * H] + r * gh[:, 2 * H:])
        return n + z * (s_prev - n)

    def forward(self, params, xin, h0, steps):
        choice, launch = self._choose(params, h0, "forward", steps)
        if choice.path == "persistent":
            return persistent.gru_forward(self, params, xin, h0, launch)
        if choice.path == "step":
            return fused.gru_forward(self, params, xin, h0, steps, launch)
        xp = get_array_module(h0)
        gates, hn = xin.gates, xin.extra
        batch, H = h0.shape
        W = params["weight_hh"]
        WT = self._scaled_WT(W, H)                                   # (H, 3H), r and z rows halved
        b_hn = params["bias_hh"][2 * H:] if self.bias else None
        states = self._buffer("states", (steps, batch, H), h0)       # (T, B, H)
        gh = self._buffer("gh", (batch, 3 * H), h0)
        # The gate maths runs in contiguous scratch and the gate values are copied into the
        # cache once: NumPy is several times slower on column slices of a (batch, 3H) row
        # than on whole contiguous arrays (about 30% less time per step here).
        rz = self._buffer("rz", (batch, 2 * H), h0)                  # [r, z]
        n = self._buffer("n", (batch, H), h0)
        m = self.state_mask
        hm = None if m is None else self._buffer("masked_h", (batch, H), h0)
        h = h0
        with small_products(xp, 2 * batch * H * 3 * H):          # see host_threads
            for t in range(steps):
                a = gates[t]                                         # (B, 3H)
                xp.matmul(h if m is None else xp.multiply(h, m, out=hm), WT,
                          out=gh)                                    # W_hh h_{t-1}, all gates
                xp.add(a[:, :2 * H], gh[:, :2 * H], out=rz)
                xp.tanh(rz, out=rz)
                rz *= 0.5
                rz += 0.5                                            # r, z = σ(a) = ½ tanh(a/2) + ½
                a[:, :2 * H] = rz
                if b_hn is None:
                    hn[t] = gh[:, 2 * H:]
                else:
                    xp.add(gh[:, 2 * H:], b_hn, out=hn[t])           # W_hn h + b_hn
                xp.multiply(rz[:, :H], hn[t], out=n)
                n += a[:, 2 * H:]
                xp.tanh(n, out=n)                                    # n = tanh(a_in + r ⊙ hn)
                a[:, 2 * H:] = n
                out = states[t]
                xp.subtract(h, n, out=out)
                out *= rz[:, H:]
                out += n                                             # h_t = n + z ⊙ (h_{t-1} − n)
                h = out
        return states

    def backward_stepper(self, params, xin, h0, states):
        choice, launch = self._choose(params, states, "backward", states.shape[0],
                                      allow_persistent=False)
        if choice.path == "step":
            return fused.gru_backward_stepper(self, params, xin, h0, states, launch)
        xp = get_array_module(states)
        steps, batch, H = states.shape
        gates = xin.gates
        r, z, n = (gates[..., k * H:(k + 1) * H] for k in range(3))
        hn = xin.extra
        K = self._buffer("K", (steps, batch, 3, H), states)
        tmp = self._buffer("tmp", (steps, batch, H), states)
        kr, kz, kn = K[:, :, 0], K[:, :, 1], K[:, :, 2]
        xp.subtract(1, z, out=kn)
        xp.multiply(n, n, out=tmp)
        xp.subtract(1, tmp, out=tmp)
        kn *= tmp                                                    # ∂h/∂a_n = (1 − z)(1 − n²)
        xp.multiply(kn, hn, out=kr)
        xp.subtract(1, r, out=tmp)
        tmp *= r
        kr *= tmp                                                    # ∂h/∂a_r = ∂h/∂a_n · hn · σ'(a_r)
        xp.subtract(states[:-1], n[1:], out=kz[1:])
        xp.subtract(h0, n[0], out=kz[0])
        xp.subtract(1, z, out=tmp)
        tmp *= z
        kz *= tmp                                                    # ∂h/∂a_z = (h_{t-1} − n) σ'(a_z)
        K2 = self._buffer("K2", K.shape, states)
        K2[...] = K
        K2[:, :, 2] *= r                                             # hidden side of a_n
        xin.K, xin.K2 = K, K2
        xin.swept, xin.swept_steps = self._buffer("swept", K.shape, states), set()
        W = params["weight_hh"]                                      # (3H, H)
        def buffer(name, shape, dtype):                              # per-step scratch
            return self.workspace.empty(("step", name), shape, dtype, xp)

        made = {}                                                    # g's shape -> its buffers

        def buffers(g):
            if g.shape not in made:                                  # once per sweep, not per step
                made[g.shape] = (buffer("d", g.shape[:-1] + (3, H), g.dtype),
                                 buffer(0, g.shape, g.dtype), buffer(1, g.shape, g.dtype),
                                 buffer("gz", g.shape, g.dtype))
            return made[g.shape]

        def back(t, g):
            plain = g.ndim == 2                                      # no window origins
            d, *g_buffers, gz = buffers(g)
            if plain:
                d = xin.sweep_target(t, None)
            xp.multiply(g[..., None, :], K2[t], out=d)               # hidden-side gate gradients
            if not plain:
                xin.sweep_target(t, d)
            g_prev = g_buffers[t % 2]
            xp.matmul(d.reshape(-1, 3 * H), W, out=g_prev.reshape(-1, H))   # δʰ W_hh
            if self.state_mask is not None:
                g_prev *= self.state_mask                            # W_hh saw h ⊙ m
            xp.multiply(g, z[t], out=gz)
            g_prev += gz                                             # + the direct path z ⊙ h_{t-1}
            return g, g_prev

        back.loop_context = lambda shape: small_products(          # as in ElmanCell
            xp, 2 * math.prod(shape[:-1]) * 3 * H * H)
        return back

    def _gate_grads(self, xin, deltas, t=None, out=None):
        """Input-side gate gradients δ = g ⊙ K, shape (..., batch, 3, H)."""
        xp = get_array_module(deltas)
        K = xin.K if t is None else xin.K[t]
        return xp.multiply(deltas[..., None, :], K, out=out)

    def param_grads(self, params, inputs, xin, h0, states, deltas):
        steps, batch, H = deltas.shape
        D = self._gate_grads(xin, deltas, out=self._buffer("D", xin.K.shape, deltas))
        rows = D.reshape(steps * batch, 3 * H)                       # δ for all (t, b)
        if xin.swept_complete(steps):
            D2 = xin.swept                                           # the sweep's δʰ
        else:
            D2 = self._buffer("D2", D.shape, deltas)
            get_array_module(D).multiply(deltas[..., None, :], xin.K2, out=D2)
        return self._weight_grads(params, inputs, rows, D2.reshape(steps * batch, 3 * H),
                                  *masked_previous(self.state_mask, states[:-1], h0), batch)

    def activations(self, xin, states):
        """Gate values after ``forward``: name -> (array (T, B, H), "sigmoid" | "tanh")."""
        H = states.shape[-1]
        g = xin.gates
        return {"r": (g[..., :H], "sigmoid"), "z": (g[..., H:2 * H], "sigmoid"),
                "n": (g[..., 2 * H:], "tanh")}


class LSTMCell(_GatedCell):
    """PyTorch's LSTM step (module docstring); the state is [h, c], shape (batch, 2H), or
    (batch, P + H) with ``proj_size`` P > 0.

    ``xin`` is a :class:`GateCache`: gates (time, batch, 4H) = W_ih x + b_ih + b_hh (i, f, o
    halved) before the forward, i, f, g, o after it. With dL/dS_t = [dh, dc_in]: dc = dc_in + dh ⊙ K2
    (K2 = o ⊙ (1 − tanh² c_t)), the gate gradients are dc ⊙ K[:3] for i, f, g and dh ⊙ K[3]
    for o, the same on the input and the hidden side. With a projection dh there is
    dL/dm = dL/dh W_hr, and dW_hr = Σ_t dh_tᵀ m_t (m = o ⊙ tanh(c)).
    """

    gates = 4
    kernel_family = "lstm"
    _tanh_block = 2  # g
    _cache_widths = (6, 11)

    def __init__(self, bias: bool = True, proj_size: int = 0):
        super().__init__(bias)
        self.proj_size = int(proj_size)

    def state_size(self, hidden: int) -> int:
        return self.hidden_width(hidden) + hidden

    def hidden_width(self, hidden: int) -> int:
        return self.proj_size or hidden

    def project_inputs(self, params, inputs):
        W = params["weight_ih"]
        scale = self.gate_scale(W.shape[0] // 4, W)
        bias = params["bias_ih"] + params["bias_hh"] if self.bias else None
        return GateCache(self._project(W, inputs, bias, scale))

    def step(self, params, x_t, s_prev):
        """One step from the row ``x_t`` (batch, 4H) of ``project_inputs``, left intact."""
        xp = get_array_module(s_prev)
        W = params["weight_hh"]
        H = W.shape[0] // 4
        h, c = s_prev[:, :-H], s_prev[:, -H:]
        a = xp.tanh(x_t + (self.masked(h) @ W.T) * self.gate_scale(H, W))   # x_t: a/2 for i, f, o
        i, f, o = (0.5 * a[:, k * H:(k + 1) * H] + 0.5 for k in (0, 1, 3))
        g = a[:, 2 * H:3 * H]
        c_new = f * c + i * g
        h_new = o * xp.tanh(c_new)
        if self.proj_size:
            h_new = h_new @ params["weight_hr"].T                    # h = W_hr m
        return xp.concatenate([h_new, c_new], axis=1)

    def launcher(self, array):
        """As :meth:`Cell.launcher`; the kernels compute h = o ⊙ tanh(c) in place and know
        no projection, so with ``proj_size`` the plain path runs whatever the plan says."""
        return None if self.proj_size else super().launcher(array)

    def kernel_decline(self):
        if self.proj_size:
            return "proj_size > 0 (the kernels compute h = o ⊙ tanh(c) and know no projection)"
        return super().kernel_decline()

    def forward(self, params, xin, h0, steps):
        choice, launch = self._choose(params, h0, "forward", steps)
        if choice.path == "persistent":
            return persistent.lstm_forward(self, params, xin, h0, launch)
        if choice.path == "step":
            return fused.lstm_forward(self, params, xin, h0, steps, launch)
        xp = get_array_module(h0)
        gates = xin.gates
        W = params["weight_hh"]
        H = W.shape[0] // 4
        batch, R = h0.shape[0], h0.shape[1] - H                      # R: h's width, P or H
        WT = self._scaled_WT(W, H)                                   # (R, 4H), i, f, o rows halved
        states = self._buffer("states", (steps, batch, R + H), h0)   # (T, B, [h, c])
        gh = self._buffer("gh", (batch, 4 * H), h0)
        ig = self._buffer("ig", (batch, H), h0)
        m = self.state_mask
        hm = None if m is None else self._buffer("masked_h", (batch, R), h0)
        if self.proj_size:                                           # o ⊙ tanh(c), W_hr ·
            mo, hp = self._buffer("m", (batch, H), h0), self._buffer("hp", (batch, R), h0)
            WrT = xp.ascontiguousarray(params["weight_hr"].T)        # (H, P)
        # i, f, o = ½ tanh(a/2) + ½ and g = tanh(a) as two whole-row operations (× half,
        # + offset: ½, ½ on sigmoid rows, 1, 0 on g's, which leave g as it is) rather than
        # four on column blocks: the same values, fewer and contiguous passes.
        half = self.gate_scale(H, h0)
        offset = half * (half != 1)                                  # ½ on sigmoid rows, 0 on g
        h, c = h0[:, :R], h0[:, R:]
        with small_products(xp, 2 * batch * R * 4 * H):              # see host_threads
            for t in range(steps):
                a = gates[t]                                         # (B, 4H)
                xp.matmul(h if m is None else xp.multiply(h, m, out=hm), WT,
                          out=gh)                                    # W_hh h_{t-1}, all gates
                a += gh
                xp.tanh(a, out=a)                                    # g, and 2σ − 1 for i, f, o
                a *= half
                a += offset                                          # i, f, o = ½ tanh(a/2) + ½
                c_new, h_new = states[t, :, R:], states[t, :, :R]
                xp.multiply(a[:, H:2 * H], c, out=c_new)             # f ⊙ c_{t-1}
                xp.multiply(a[:, :H], a[:, 2 * H:3 * H], out=ig)
                c_new += ig                                          # + i ⊙ g
                out = mo if self.proj_size else h_new
                xp.tanh(c_new, out=out)
                out *= a[:, 3 * H:]                                  # h_t (or m_t) = o ⊙ tanh(c_t)
                if self.proj_size:
                    xp.matmul(mo, WrT, out=hp)                       # h_t = W_hr m_t (a contiguous
                    h_new[...] = hp                                  # GEMM target, then the slot)
                h, c = h_new, c_new
        return states

    def backward_stepper(self, params, xin, h0, states):
        choice, launch = self._choose(params, states, "backward", states.shape[0],
                                      allow_persistent=False)
        if choice.path == "step":
            return fused.lstm_backward_stepper(self, params, xin, h0, states, launch)
        xp = get_array_module(states)
        steps, batch, width = states.shape
        H = xin.gates.shape[-1] // 4
        R = width - H                                                # h's width, P or H
        i, f, g, o = (xin.gates[..., k * H:(k + 1) * H] for k in range(4))
        c = states[..., R:]
        K = self._buffer("K", (steps, batch, 4, H), states)
        A = self._buffer("K2", (steps, batch, H), states)
        tc = self._buffer("tc", (steps, batch, H), states)
        tmp = self._buffer("tmp", (steps, batch, H), states)
        xp.tanh(c, out=tc)
        # σ' = (1 − x) x for all four gate blocks at once (two whole, contiguous passes over
        # K, 1.3× less time than per block), then each block times its partner; the g block
        # is overwritten. The same products in the same order as per block: bit-identical.
        G = xin.gates.reshape(K.shape)
        xp.subtract(1, G, out=K)
        K *= G
        K[:, :, 0] *= g                                              # ∂c/∂a_i = g σ'(a_i)
        K[1:, :, 1] *= c[:-1]                                        # ∂c/∂a_f = c_{t-1} σ'(a_f)
        K[0, :, 1] *= h0[:, R:]
        xp.multiply(g, g, out=tmp)
        xp.subtract(1, tmp, out=tmp)
        xp.multiply(i, tmp, out=K[:, :, 2])                          # ∂c/∂a_g = i (1 − g²)
        K[:, :, 3] *= tc                                             # ∂h/∂a_o = tanh(c) σ'(a_o)
        xp.multiply(tc, tc, out=A)
        xp.subtract(1, A, out=A)
        A *= o                                                       # ∂h/∂c = o (1 − tanh² c)
        xin.K, xin.K2 = K, A
        if self.proj_size:
            tc *= o                                                  # m = o ⊙ tanh(c), for dW_hr
            xin.projection = (params["weight_hr"], tc)
        xin.swept, xin.swept_steps = self._buffer("swept", K.shape, states), set()
        W = params["weight_hh"]                                      # (4H, R)
        def buffer(name, shape, dtype):                              # per-step scratch
            return self.workspace.empty(("step", name), shape, dtype, xp)

        made = {}                                                    # grad's shape -> its buffers

        def buffers(grad):
            if grad.shape not in made:                               # once per sweep, not per step
                rows = grad.shape[:-1]
                made[grad.shape] = (buffer("dc", rows + (H,), grad.dtype),   # dL/dc_t
                                    buffer("d", rows + (4, H), grad.dtype),
                                    buffer(0, grad.shape, grad.dtype),
                                    buffer(1, grad.shape, grad.dtype),
                                    buffer("dh_prev", rows + (R,), grad.dtype))
            return made[grad.shape]

        def back(t, grad):
            plain = grad.ndim == 2                                   # no window origins
            dc, d, *g_buffers, dh_prev = buffers(grad)
            if plain:
                d = xin.sweep_target(t, None)
            self._gate_grads(xin, grad, t, out=d, dc=dc)
            if not plain:
                xin.sweep_target(t, d)
            g_prev = g_buffers[t % 2]
            xp.matmul(d.reshape(-1, 4 * H), W, out=dh_prev.reshape(-1, R))   # δ W_hh
            if self.state_mask is not None:
                dh_prev *= self.state_mask                           # W_hh saw h ⊙ m
            g_prev[..., :R] = dh_prev
            xp.multiply(dc, f[t], out=g_prev[..., R:])               # dL/dc_{t-1} = dc ⊙ f
            return grad, g_prev

        back.loop_context = lambda shape: small_products(          # as in ElmanCell
            xp, 2 * math.prod(shape[:-1]) * 4 * H * R)
        return back

    def _gate_grads(self, xin, deltas, t=None, out=None, dc=None):
        """Gate gradients (..., batch, 4, H) from dL/dS = [dh, dc_in]; dL/dc goes to ``dc``."""
        xp = get_array_module(deltas)
        K, A = (xin.K, xin.K2) if t is None else (xin.K[t], xin.K2[t])
        H = K.shape[-1]
        dh = deltas[..., :-H]
        if xin.projection is not None:
            dh = self._unproject(xin.projection[0], dh, t)           # dL/dm: the maths goes on
        if dc is None:
            dc = xp.empty(deltas.shape[:-1] + (H,), dtype=deltas.dtype)
        xp.multiply(dh, A, out=dc)
        dc += deltas[..., -H:]                                       # dc = dc_in + dh ⊙ ∂h/∂c
        if out is None:
            out = xp.empty(deltas.shape[:-1] + (4, H), dtype=deltas.dtype)
        xp.multiply(dc[..., None, :], K[..., :3, :], out=out[..., :3, :])
        xp.multiply(dh, K[..., 3, :], out=out[..., 3, :])
        return out

    def _unproject(self, W_hr, dh, t):
        """dL/dm = dL/dh W_hr (..., batch, H) through h = W_hr m: one GEMM over all rows (in
        a per-step buffer for a step ``t`` of the sweep)."""
        xp = get_array_module(dh)
        P, H = W_hr.shape
        shape = dh.shape[:-1] + (H,)
        dm = (xp.empty(shape, dtype=dh.dtype) if t is None else
              self.workspace.empty(("step", "dm"), shape, dh.dtype, xp))
        xp.matmul(dh.reshape(-1, P), W_hr, out=dm.reshape(-1, H))
        return dm

    def param_grads(self, params, inputs, xin, h0, states, deltas):
        steps, batch, width = deltas.shape
        H = xin.K.shape[-1]
        R = width - H                                                # h's width, P or H
        if xin.swept_complete(steps):
            D = xin.swept                                            # the sweep's δ
        else:
            D = self._gate_grads(xin, deltas, out=self._buffer("D", xin.K.shape, deltas))
        rows = D.reshape(steps * batch, 4 * H)
        grads = self._weight_grads(params, inputs, rows, rows,
                                   *masked_previous(self.state_mask, states[:-1, :, :R],
                                                    h0[:, :R]), batch)
        if xin.projection is not None:                               # dW_hr = Σ_t dh_tᵀ m_t
            m = xin.projection[1]
            grads["weight_hr"] = deltas[..., :R].reshape(-1, R).T @ m.reshape(-1, H)
        return grads

    def activations(self, xin, states):
        """Gate values after ``forward`` and tanh(c): name -> (array (T, B, H), kind)."""
        xp = get_array_module(states)
        H = xin.gates.shape[-1] // 4
        g = xin.gates
        out = {name: (g[..., k * H:(k + 1) * H], "tanh" if name == "g" else "sigmoid")
               for k, name in enumerate("ifgo")}
        out["tanh(c)"] = (xp.tanh(states[..., -H:]), "tanh")
        return out


# --------------------------------------------------------------------------- models

_GATED_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


class _GatedRNN(TorchInterop, LayeredRNN):
    """Shared constructor of :class:`GRU` and :class:`LSTM`."""

    _cell_class: type
    _layer_norm_cell: type  # set by gpurnn.engine.recurrences.normalized, which builds on _GatedCell

    def __init__(self, input_size, hidden_size, output_size, *, num_layers=1,
                 embedding_size=None, output="softmax", bias=True, layer_norm=False,
                 dtype="float32", device="cpu", seed=0, bidirectional=False, **dropout):
        if not isinstance(layer_norm, bool):
            raise TypeError(f"layer_norm must be True or False, got {type(layer_norm).__name__}")
        self.layer_norm = layer_norm
        self._build(input_size, hidden_size, output_size, num_layers=num_layers,
                    embedding_size=embedding_size, output=output, bias=bias, dtype=dtype,
                    device=device, seed=seed, bidirectional=bidirectional, dropout=dropout)

    def _make_cell(self):
        return (self._layer_norm_cell if self.layer_norm else self._cell_class)(self.bias)

    def _layer_specs(self, fan_in, bias):
        # PyTorch's initialisation: every weight and bias uniform in ±1/sqrt(hidden).
        G, H = self._cell_class.gates, self.hidden_size
        init = ("uniform", 1 / numpy.sqrt(H))
        shapes = {"weight_ih": (G * H, fan_in), "weight_hh": (G * H, H)}
        if self.layer_norm:
            return self._layer_norm_specs(shapes, bias)
        if bias:
            shapes.update(bias_ih=(G * H,), bias_hh=(G * H,))
        return {name: (shape, init) for name, shape in shapes.items()}

    def _layer_norm_specs(self, shapes, bias):
        """The weights as PyTorch draws them, the normalisations' gains 1 and shifts 0; the
        shifts of W_ih x and W_hh h are bias_ih and bias_hh (gpurnn.engine.recurrences.normalized)."""
        G, H = self._cell_class.gates, self.hidden_size
        specs = {name: (shape, ("uniform", 1 / numpy.sqrt(H))) for name, shape in shapes.items()}
        gains = {"ln_ih_weight": G * H, "ln_hh_weight": G * H}
        shifts = {"bias_ih": G * H, "bias_hh": G * H}
        if G == 4:                                                   # the LSTM's LN(c_t)
            gains["ln_c_weight"], shifts["ln_c_bias"] = H, H
        specs.update({name: ((size,), ("ones",)) for name, size in gains.items()})
        if bias:
            specs.update({name: ((size,), ("zeros",)) for name, size in shifts.items()})
        return specs

    @property
    def config(self) -> dict:
        config = super().config
        if self.layer_norm:                                          # absent: the plain cells
            config["layer_norm"] = True
        return config

    def to_torch(self):
        if self.layer_norm:
            raise ValueError(f"torch.nn.{type(self).__name__} has no layer normalisation; a "
                             f"layer_norm=True model has no torch counterpart")
        return super().to_torch()


class GRU(_GatedRNN):
    """A GRU (PyTorch's ``nn.GRU`` equations and layout) under y_t = g(V h_t + c).

    Args:
        input_size: vocabulary size for token inputs, features for dense inputs.
        hidden_size: H, the size of h in every layer.
        output_size: classes (``output="softmax"``) or output features.
        num_layers: stacked layers; layer l ≥ 1 reads layer l−1's h_t.
        embedding_size: with token inputs, look ids up in E (input_size, embedding_size)
            instead of taking a column of weight_ih; None for no embedding.
        output: g, one of softmax (cross-entropy) | identity | sigmoid | tanh (½Σ(y − t)²).
        bias: with bias_ih, bias_hh and c; without, none of them.
        layer_norm: layer-normalised cells (:mod:`gpurnn.engine.recurrences.normalized`, Ba et al.
            2016): LN on W_ih x and on W_hh h, with the gains ln_ih_weight, ln_hh_weight
            (initially 1) and bias_ih, bias_hh as the shifts (initially 0); no torch
            counterpart, and always the plain path (no fused kernels).
        dtype: float32 (training) or float64 (checks).
        device: "cpu", "cuda", "cuda:N" or "auto".
        seed: initialisation seed: gate weights and biases uniform in ±1/sqrt(hidden) as
            PyTorch does, V uniform in ±1/sqrt(hidden), c zero, E ~ N(0, 1); also the seed
            of the dropout masks' stream.
        dropout, dropout_input, dropout_output, dropout_state, weight_drop,
            dropout_embedding: dropout rates in [0, 1), 0 by default, in training mode only
            (:mod:`gpurnn.engine.layers.dropout`; ``model.train()`` / ``model.eval()``).
        bidirectional: also run every layer over each sequence reversed, with parameters
            named ``..._reverse`` (:mod:`gpurnn.engine.layers.bidirectional`); V is then
            (output, 2H), uniform in ±1/sqrt(2H).

    Parameters: weight_ih (3H, input), weight_hh (3H, H), bias_ih (3H,), bias_hh (3H,)
    per layer (``_l1``, ``_l2``, … above layer 0), V (output, H), c (output,), E.
    """

    cell_type = "gru"
    _cell_class = GRUCell


class LSTM(_GatedRNN):
    """An LSTM (PyTorch's ``nn.LSTM`` equations and layout) under y_t = g(V h_t + c).

    Arguments as for :class:`GRU`; weight_ih (4H, input), weight_hh (4H, H), bias_ih and
    bias_hh (4H,) with the gates in the order i, f, g, o. With ``layer_norm`` also
    ln_ih_weight, ln_hh_weight (4H,) and the cell state's ln_c_weight, ln_c_bias (H,), in
    h_t = o ⊙ tanh(LN(c_t)). ``h0`` and ``last_hidden`` are
    pairs (h, c), each (batch, hidden), or (num_layers, batch, hidden) for a stack.

    ``proj_size`` P, 0 < P < hidden_size, projects h as PyTorch's ``proj_size`` does (LSTMP,
    Sak et al. 2014): h_t = W_hr (o_t ⊙ tanh(c_t)) with weight_hr (P, H) per layer (uniform
    in ±1/sqrt(hidden), as PyTorch draws it); weight_hh is then (4H, P), weight_ih of layers
    l ≥ 1 (4H, P) and V (output, P); h in ``h0`` and ``last_hidden`` has P columns, c keeps
    H. 0 (the default) for no projection.
    """

    cell_type = "lstm"
    _cell_class = LSTMCell

    def __init__(self, input_size, hidden_size, output_size, *, proj_size=0, **kw):
        self.proj_size = _check_proj_size(proj_size, hidden_size)
        super().__init__(input_size, hidden_size, output_size, **kw)

    def _make_cell(self):
        if not self.proj_size:
            return super()._make_cell()
        if self.layer_norm:
            raise ValueError("layer_norm=True has no projection (proj_size); give one of "
                             "them")
        return LSTMCell(self.bias, self.proj_size)

    def _layer_specs(self, fan_in, bias):
        specs = super()._layer_specs(fan_in, bias)
        if self.proj_size:                                           # h is W_hr m, P wide
            G, H, P = LSTMCell.gates, self.hidden_size, self.proj_size
            init = ("uniform", 1 / numpy.sqrt(H))
            specs["weight_hh"] = ((G * H, P), init)
            specs["weight_hr"] = ((P, H), init)
        return specs

    @property
    def config(self) -> dict:
        config = super().config
        if self.proj_size:  # left out at 0: configs and checkpoints of plain LSTMs unchanged
            config["proj_size"] = self.proj_size
        return config


def _check_proj_size(proj_size, hidden_size) -> int:
    """PyTorch's rule: an int, 0 <= proj_size < hidden_size (0: no projection)."""
    hidden = check_size(hidden_size, "hidden_size")
    if isinstance(proj_size, bool) or not isinstance(proj_size, numbers.Integral):
        raise TypeError(f"proj_size must be an int with 0 <= proj_size < hidden_size "
                        f"({hidden}), got {type(proj_size).__name__}")
    if not 0 <= proj_size < hidden:
        raise ValueError(f"proj_size must satisfy 0 <= proj_size < hidden_size ({hidden}), got "
                         f"{proj_size}; choose 0 < proj_size < {hidden} for a projection, or "
                         f"0 for none")
    return int(proj_size)
