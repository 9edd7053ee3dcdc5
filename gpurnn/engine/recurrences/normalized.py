"""Layer-normalised GRU and LSTM cells (Ba, Kiros and Hinton 2016, "Layer Normalization").

The variant is the paper's LSTM (section 3.1 and its appendix): layer normalisation (LN)
is applied separately to the input projection W_ih x and to the recurrent projection
W_hh h, each over all G·H gate pre-activations together with its own gain γ and shift β,
and to the cell state before its tanh; the GRU takes the same two normalisations (3H
each). With LN(u; γ, β) = γ ⊙ (u − mean u) / sqrt(var u + ε) + β, ε = 1e-5 inside the
root as in ``torch.nn.LayerNorm``, and gates in PyTorch's order::

    GRU     a = LN(W_ih x; γ_ih, β_ih)     b = LN(W_hh h; γ_hh, β_hh)
            r = σ(a_r + b_r)   z = σ(a_z + b_z)   n = tanh(a_n + r ⊙ b_n)
            h' = (1 − z) ⊙ n + z ⊙ h
    LSTM    i, f, g, o = σ, σ, tanh, σ of LN(W_ih x; γ_ih, β_ih) + LN(W_hh h; γ_hh, β_hh)
            c' = f ⊙ c + i ⊙ g       h' = o ⊙ tanh(LN(c'; γ_c, β_c))

The state carried to the next step is the unnormalised c' (the paper's equations).

Parameters per layer: weight_ih (G·H, input) and weight_hh (G·H, H) as in the plain
cells; the gains ln_ih_weight, ln_hh_weight (G·H,) and, for the LSTM, ln_c_weight (H,),
all initialised to 1; the shifts bias_ih = β_ih and bias_hh = β_hh (G·H,) and, for the
LSTM, ln_c_bias = β_c (H,), initialised to 0. The paper also adds a gate bias b after the
two normalisations; it is dropped here, since β_ih already plays that part (for the LSTM
b, β_ih and β_hh only ever enter as their sum). Without ``bias`` there are no shifts at all.

How this differs from Haste's ``LayerNormLSTM`` (lmnt-com/haste, PyTorch module): Haste
normalises the input and the recurrent projections with gains only (``gamma``, (2, 4H)), adds
one bias (4H) after them, and normalises the cell state with a gain and a shift (``gamma_h``,
``beta_h``); its kernels are stored transposed, its forget-gate bias starts at 1 and it
offers zoneout and DropConnect. Haste's ``LayerNormGRU`` has the same two gains with one
bias on each side, which is the GRU here with the shifts as those biases (its gates are in
the order z, r, h).

How the work is split: the input projections of all steps are one GEMM over batch·time rows
(a row gather for token ids) and their normalisation runs for all steps at once, since it
does not depend on the state; each step then does one GEMM W_hh h_{t-1}, normalises it and
applies the gates. The backward sweep's per-step ``delta`` is dL/dS_t (state shaped, as for
the plain gated cells); each step takes the vector–Jacobian product through the
normalisations, dL/du = (dL/dx̂ − mean(dL/dx̂) − x̂ ⊙ mean(dL/dx̂ ⊙ x̂)) / σ, which is linear
in dL/dS_t, so windowed truncation may sum its window origins first. ``param_grads``
recomputes the gate gradients from the deltas for all steps at once and takes the weight
gradients as single GEMMs over batch·time rows.

The fused GPU kernels (:mod:`gpurnn.engine.gpu.fused`) do not cover layer normalisation: these
cells always run the plain NumPy/CuPy path, whatever the plan's ``kernels``.
"""
from __future__ import annotations

from .activations import apply
from ..arrays.backend import get_array_module
from .gated import GRU, LSTM, GRUCell, _GatedCell
from ..arrays.workspace import Workspace

__all__ = ["LayerNormGRUCell", "LayerNormLSTMCell", "EPS", "layer_norm", "layer_norm_vjp"]

EPS = 1e-5  # inside the square root, as torch.nn.LayerNorm


def layer_norm(u, out=None):
    """x̂ = (u − mean u) / σ over the last axis, σ = sqrt(var u + EPS), into ``out`` (may be
    ``u`` itself); returns (x̂, 1/σ) with 1/σ of shape (..., 1)."""
    xp = get_array_module(u)
    xhat = xp.subtract(u, u.mean(axis=-1, keepdims=True), out=out)
    rstd = (xhat * xhat).mean(axis=-1, keepdims=True)
    rstd += EPS
    xp.sqrt(rstd, out=rstd)
    xp.divide(1, rstd, out=rstd)
    xhat *= rstd
    return xhat, rstd


def layer_norm_vjp(g, xhat, rstd):
    """dL/du from ``g`` = dL/dx̂ (..., N): (g − mean g − x̂ ⊙ mean(g ⊙ x̂)) / σ. ``xhat``
    (B, N) and ``rstd`` (B, 1) broadcast over the leading axes of windowed truncation."""
    mean_gx = (g * xhat).mean(axis=-1, keepdims=True)
    du = g - g.mean(axis=-1, keepdims=True)
    du -= xhat * mean_gx
    du *= rstd
    return du


class NormCache:
    """A layer-normalised cell's ``xin``.

    ``gates`` (time, batch, G·H) holds a = LN(W_ih x; γ_ih, β_ih) after ``project_inputs``
    and the gate values after ``forward``; ``x_ih``/``r_ih`` are x̂ and 1/σ of W_ih x
    ((time, batch, G·H), (time, batch, 1)) and ``gain_ih`` the γ_ih they were made with;
    ``forward`` adds ``x_hh``/``r_hh`` for W_hh h_{t-1} and, for the LSTM, ``x_c``/``r_c``
    for c_t with ``norm_c`` = (γ_c, β_c or None); ``backward_stepper`` sets ``K`` and
    ``K2``, its factors.
    """

    __slots__ = ("gates", "x_ih", "r_ih", "gain_ih", "x_hh", "r_hh", "x_c", "r_c", "norm_c",
                 "K", "K2")

    def __init__(self, gates, x_ih, r_ih, gain_ih):
        self.gates, self.x_ih, self.r_ih, self.gain_ih = gates, x_ih, r_ih, gain_ih
        self.x_hh = self.r_hh = self.x_c = self.r_c = self.norm_c = self.K = self.K2 = None

    def __getitem__(self, t):
        return self.gates[t]


class _LayerNormCell(_GatedCell):
    """What the two layer-normalised cells share: the normalised projections, their
    vector–Jacobian products and the parameter gradients. A subclass defines ``_update``
    (one step's gates and state from a and b), ``_factors`` (the backward factors for all
    steps), ``_back_step`` (one step's dL/db and the direct part of dL/dS_{t-1}) and
    ``_preactivation_grads`` (dL/da and dL/db)."""

    def project_inputs(self, params, inputs):
        W = params["weight_ih"]
        xp = get_array_module(W)
        u = self._project(W, inputs, None, xp.ones(W.shape[0], dtype=W.dtype))  # W_ih x
        x_ih, r_ih = layer_norm(u, out=self._buffer("x_ih", u.shape, u))
        gain = params["ln_ih_weight"]
        a = xp.multiply(x_ih, gain, out=u)                           # u's buffer becomes a
        if self.bias:
            a += params["bias_ih"]
        return NormCache(a, x_ih, r_ih, gain)

    def step(self, params, x_t, s_prev):
        """One step from the row ``x_t`` (batch, G·H) of ``project_inputs``, left intact:
        a one-step ``forward`` in a workspace of its own (the cached forward's stays intact)."""
        xp = get_array_module(s_prev)
        x_t = x_t[None]
        one = NormCache(x_t.copy(), xp.zeros_like(x_t), None, None)  # only a is read forward
        previous = self.use_workspace(Workspace())
        try:
            return self.forward(params, one, s_prev, 1)[0]
        finally:
            self.use_workspace(previous)

    def forward(self, params, xin, h0, steps):
        # No fused.launcher_for here: the kernels do not cover layer normalisation.
        batch, width = h0.shape
        H = params["weight_hh"].shape[1]
        xin.x_hh = self._buffer("x_hh", xin.x_ih.shape, h0)
        xin.r_hh = self._buffer("r_hh", xin.x_ih.shape[:-1] + (1,), h0)
        states = self._buffer("states", (steps, batch, width), h0)
        WT = params["weight_hh"].T
        b = self._buffer("b", (batch, self.gates * H), h0)
        s = h0
        for t in range(steps):
            v = xin.x_hh[t]
            get_array_module(h0).matmul(s[:, :H], WT, out=v)         # W_hh h_{t-1}
            _, xin.r_hh[t] = layer_norm(v, out=v)
            self._affine(params, "hh", v, out=b)                     # b = LN(W_hh h; γ_hh, β_hh)
            s = self._update(params, xin, t, b, s, out=states[t])
        return states

    def _affine(self, params, side, xhat, out=None):
        """γ ⊙ x̂ + β of the ``side`` ("ih" or "hh") normalisation."""
        y = get_array_module(xhat).multiply(xhat, params[f"ln_{side}_weight"], out=out)
        if self.bias:
            y += params[f"bias_{side}"]
        return y

    def backward_stepper(self, params, xin, h0, states):
        # No fused.launcher_for here: the kernels do not cover layer normalisation.
        xin.K, xin.K2 = self._factors(params, xin, h0, states)
        W = params["weight_hh"]
        gain = params["ln_hh_weight"]
        G, H = self.gates, W.shape[1]

        def back(t, g):
            delta_b, g_prev = self._back_step(xin, t, g)            # dL/db (..., B, G·H)
            dv = layer_norm_vjp(delta_b * gain, xin.x_hh[t], xin.r_hh[t])   # dL/d(W_hh h)
            g_prev[..., :H] += (dv.reshape(-1, G * H) @ W).reshape(g.shape[:-1] + (H,))
            return g, g_prev
        return back

    def _gate_grads(self, xin, deltas, t=None):
        """dL/d(W_ih x) (..., batch, G·H) from the deltas: what ``input_grads`` multiplies
        by W_ih."""
        x_ih, r_ih = (xin.x_ih, xin.r_ih) if t is None else (xin.x_ih[t], xin.r_ih[t])
        delta_a, _ = self._preactivation_grads(xin, deltas, t)
        return layer_norm_vjp(delta_a * xin.gain_ih, x_ih, r_ih)

    def param_grads(self, params, inputs, xin, h0, states, deltas):
        steps, batch = deltas.shape[:2]
        H = params["weight_hh"].shape[1]
        delta_a, delta_b, grads = self._all_grads(xin, deltas)      # (T, B, G·H) each
        rows = {}
        for side, delta, xhat, rstd in (("ih", delta_a, xin.x_ih, xin.r_ih),
                                        ("hh", delta_b, xin.x_hh, xin.r_hh)):
            flat = delta.reshape(steps * batch, -1)
            grads[f"ln_{side}_weight"] = (flat * xhat.reshape(flat.shape)).sum(axis=0)
            if self.bias:
                grads[f"bias_{side}"] = flat.sum(axis=0)
            rows[side] = layer_norm_vjp(delta * params[f"ln_{side}_weight"], xhat,
                                        rstd).reshape(flat.shape)
        grads.update(self._matrix_grads(params, inputs, rows["ih"], rows["hh"],
                                        states[:-1, :, :H], h0[:, :H], batch))
        return grads

    def _all_grads(self, xin, deltas):
        """dL/da, dL/db for all steps and the gradients of any parameters past the two
        projections' normalisations (none here)."""
        return (*self._preactivation_grads(xin, deltas), {})


class LayerNormGRUCell(_LayerNormCell):
    """The layer-normalised GRU step (module docstring); the state is h, (batch, H).

    Backward factors for all steps, as for :class:`gpurnn.GRUCell` with b_n = LN(W_hh h)_n
    in place of W_hn h + b_hn: ``K`` (time, batch, 3, H) gives dL/da = dL/dh ⊙ K, ``K2``
    dL/db (the n block times r).
    """

    gates = 3
    _tanh_block = 2  # n
    # (T, B, H) arrays: gates, x̂ of both sides, states; K, K2, b_n, the gate gradients of
    # both sides and their products through the normalisations.
    _cache_widths = (10, 22)

    def _update(self, params, xin, t, b, h, out):
        xp = get_array_module(h)
        H = h.shape[-1]
        a = xin.gates[t]
        rz = apply("sigmoid", a[:, :2 * H] + b[:, :2 * H])          # r, z
        n = xp.tanh(a[:, 2 * H:] + rz[:, :H] * b[:, 2 * H:])
        a[:, :2 * H] = rz
        a[:, 2 * H:] = n
        xp.subtract(h, n, out=out)
        out *= rz[:, H:]
        out += n                                                     # h_t = n + z ⊙ (h_{t-1} − n)
        return out

    def _factors(self, params, xin, h0, states):
        H = states.shape[-1]
        r, z, n = (xin.gates[..., k * H:(k + 1) * H] for k in range(3))
        b_n = self._affine(params, "hh", xin.x_hh)[..., 2 * H:]      # LN(W_hh h)_n
        K = self._buffer("K", states.shape[:2] + (3, H), states)
        K[:, :, 2] = (1 - z) * (1 - n * n)                          # ∂h/∂a_n
        K[:, :, 0] = K[:, :, 2] * b_n * r * (1 - r)                  # ∂h/∂a_r
        K[1:, :, 1] = states[:-1] - n[1:]
        K[0, :, 1] = h0 - n[0]
        K[:, :, 1] *= z * (1 - z)                                    # ∂h/∂a_z = (h_{t-1} − n) σ'
        K2 = self._buffer("K2", K.shape, states)
        K2[...] = K
        K2[:, :, 2] *= r                                             # b_n enters as r ⊙ b_n
        return K, K2

    def _preactivation_grads(self, xin, deltas, t=None):
        """(dL/da, dL/db), each (..., batch, 3H), from dL/dh."""
        K, K2 = (xin.K, xin.K2) if t is None else (xin.K[t], xin.K2[t])
        shape = deltas.shape[:-1] + (-1,)
        g = deltas[..., None, :]
        return (g * K).reshape(shape), (g * K2).reshape(shape)

    def _back_step(self, xin, t, g):
        H = g.shape[-1]
        delta_b = (g[..., None, :] * xin.K2[t]).reshape(g.shape[:-1] + (3 * H,))
        return delta_b, g * xin.gates[t, :, H:2 * H]                 # the direct path z ⊙ dL/dh_t

    activations = GRUCell.activations


class LayerNormLSTMCell(_LayerNormCell):
    """The layer-normalised LSTM step (module docstring); the state is [h, c], (batch, 2H).

    Backward factors for all steps: ``K`` (time, batch, 4, H) as for :class:`gpurnn.LSTMCell`
    with tanh(LN(c_t)) in place of tanh(c_t) for the o gate, and ``K2`` = o ⊙ (1 − tanh²
    LN(c_t)), so that dL/dc_t = dc_in + LN's product of dL/dh ⊙ K2 ⊙ γ_c. Both projections
    feed the same pre-activations, so dL/da = dL/db.
    """

    gates = 4
    _tanh_block = 2  # g
    # (T, B, H) arrays: gates, x̂ of both sides and of c, states; K, K2, tanh LN(c), the
    # gate gradients and their products through the normalisations.
    _cache_widths = (15, 24)

    def state_size(self, hidden: int) -> int:
        return 2 * hidden

    def forward(self, params, xin, h0, steps):
        H = h0.shape[-1] // 2
        xin.x_c = self._buffer("x_c", (steps, h0.shape[0], H), h0)
        xin.r_c = self._buffer("r_c", (steps, h0.shape[0], 1), h0)
        xin.norm_c = (params["ln_c_weight"], params["ln_c_bias"] if self.bias else None)
        return super().forward(params, xin, h0, steps)

    def _update(self, params, xin, t, b, s, out):
        xp = get_array_module(s)
        H = s.shape[-1] // 2
        a = xin.gates[t]
        a += b
        for block in (a[:, :2 * H], a[:, 3 * H:]):
            apply("sigmoid", block, out=block)                       # i, f, o
        xp.tanh(a[:, 2 * H:3 * H], out=a[:, 2 * H:3 * H])            # g
        c_new, h_new = out[:, H:], out[:, :H]
        xp.multiply(a[:, H:2 * H], s[:, H:], out=c_new)
        c_new += a[:, :H] * a[:, 2 * H:3 * H]                        # c_t = f ⊙ c + i ⊙ g
        x_c = xin.x_c[t]
        _, xin.r_c[t] = layer_norm(c_new, out=x_c)
        xp.tanh(self._cell_norm(xin, x_c, out=h_new), out=h_new)
        h_new *= a[:, 3 * H:]                                        # h_t = o ⊙ tanh(LN(c_t))
        return out

    @staticmethod
    def _cell_norm(xin, x_c, out=None):
        """LN(c) = γ_c ⊙ x̂_c + β_c."""
        gain, shift = xin.norm_c
        y = get_array_module(x_c).multiply(x_c, gain, out=out)
        if shift is not None:
            y += shift
        return y

    def _factors(self, params, xin, h0, states):
        xp = get_array_module(states)
        H = states.shape[-1] // 2
        i, f, g, o = (xin.gates[..., k * H:(k + 1) * H] for k in range(4))
        tc = xp.tanh(self._cell_norm(xin, xin.x_c))                  # tanh(LN(c_t))
        K = self._buffer("K", states.shape[:2] + (4, H), states)
        K[:, :, 0] = g * i * (1 - i)                                 # ∂c/∂a_i
        K[1:, :, 1] = states[:-1, :, H:]
        K[0, :, 1] = h0[:, H:]
        K[:, :, 1] *= f * (1 - f)                                    # ∂c/∂a_f = c_{t-1} σ'
        K[:, :, 2] = i * (1 - g * g)                                 # ∂c/∂a_g
        K[:, :, 3] = tc * o * (1 - o)                                # ∂h/∂a_o
        K2 = self._buffer("K2", i.shape, states)
        xp.multiply(o, 1 - tc * tc, out=K2)                          # ∂h/∂LN(c)
        return K, K2

    def _grads(self, xin, deltas, t=None):
        """From dL/dS = [dh, dc_in] (..., batch, 2H): dL/da = dL/db (..., batch, 4H), dL/dc
        and dL/dLN(c) (..., batch, H)."""
        xp = get_array_module(deltas)
        H = deltas.shape[-1] // 2
        K, K2, x_c, r_c = ((xin.K, xin.K2, xin.x_c, xin.r_c) if t is None else
                           (xin.K[t], xin.K2[t], xin.x_c[t], xin.r_c[t]))
        dh = deltas[..., :H]
        d_norm = dh * K2
        dc = layer_norm_vjp(d_norm * xin.norm_c[0], x_c, r_c)
        dc += deltas[..., H:]                                        # both paths into c_t
        d = xp.empty(deltas.shape[:-1] + (4, H), dtype=deltas.dtype)
        xp.multiply(dc[..., None, :], K[..., :3, :], out=d[..., :3, :])
        xp.multiply(dh, K[..., 3, :], out=d[..., 3, :])
        return d.reshape(deltas.shape[:-1] + (4 * H,)), dc, d_norm

    def _preactivation_grads(self, xin, deltas, t=None):
        d, _, _ = self._grads(xin, deltas, t)
        return d, d

    def _back_step(self, xin, t, g):
        H = g.shape[-1] // 2
        d, dc, _ = self._grads(xin, g, t)
        g_prev = get_array_module(g).empty_like(g)
        g_prev[..., :H] = 0                                          # back() adds dL/db W_hh
        get_array_module(g).multiply(dc, xin.gates[t, :, H:2 * H], out=g_prev[..., H:])
        return d, g_prev                                             # dL/dc_{t-1} = dc ⊙ f

    def _all_grads(self, xin, deltas):
        d, _, d_norm = self._grads(xin, deltas)
        flat = d_norm.reshape(-1, d_norm.shape[-1])
        grads = {"ln_c_weight": (flat * xin.x_c.reshape(flat.shape)).sum(axis=0)}
        if self.bias:
            grads["ln_c_bias"] = flat.sum(axis=0)
        return d, d, grads

    def activations(self, xin, states):
        """Gate values after ``forward`` and tanh(LN(c)): name -> (array (T, B, H), kind)."""
        H = states.shape[-1] // 2
        g = xin.gates
        out = {name: (g[..., k * H:(k + 1) * H], "tanh" if name == "g" else "sigmoid")
               for k, name in enumerate("ifgo")}
        out["tanh(LN(c))"] = (get_array_module(states).tanh(self._cell_norm(xin, xin.x_c)),
                              "tanh")
        return out


# The models build these cells for layer_norm=True (gated.py cannot import this module,
# which builds on its _GatedCell).
GRU._layer_norm_cell = LayerNormGRUCell
LSTM._layer_norm_cell = LayerNormLSTMCell
