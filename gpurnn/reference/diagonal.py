"""Plain per-sequence loops for minGRU, minLSTM, the real-diagonal LRU and the ParaGRU, from
their papers.

The test oracle for :mod:`gpurnn.engine.recurrences.diagonal` (its loop and its scan alike): one
sequence at a time, one step at a time, one layer at a time, vectors only, NumPy, float64;
the time loops are those of :mod:`gpurnn.reference.gated` (this file gives the step), and
nothing outside ``gpurnn.reference`` is imported. Token inputs become one-hot vectors (or
embedding rows).

Equations (σ the logistic function; W = weight_ih, b = bias_ih, zero where absent)::

    minGRU  (Feng et al. 2024)   z = σ(W_z x + b_z)   h̃ = W_h x + b_h   h' = (1 − z) h + z h̃
    minLSTM (Feng et al. 2024)   f = σ(W_f x + b_f)   i = σ(W_i x + b_i)   h̃ = W_h x + b_h
                                 h' = f/(f + i) h + i/(f + i) h̃
    LRU     (Orvieto et al. 2023, real λ)   λ = exp(−exp(ν))   γ = exp(γ_log)
                                 h' = λ h + γ (B x)      (B = weight_ih, ν = nu_log, γ_log = gamma_log)
    ParaGRU (Danieli et al. 2025: PyTorch's GRU, each recurrent matrix a diagonal)
                                 p = W x + b    q = a ⊙ [h; h; h] + b_h    (a = weight_hh, b_h = bias_hh)
                                 r = σ(p_r + q_r)   z = σ(p_z + q_z)   n = tanh(p_n + r q_n)
                                 h' = (1 − z) n + z h

weight_ih's rows are [z; h̃] (minGRU), [f; i; h̃] (minLSTM), [r; z; n] (ParaGRU, as are
weight_hh's, bias_ih's and bias_hh's). Output y_t = g(V h_t + c) of
the top layer, losses and truncation exactly as :mod:`gpurnn.reference.gated`.
"""
import numpy as np

from . import gated

__all__ = ["GATES", "layer_step", "layer_step_backward", "forward", "bptt", "batch_bptt"]

GATES = {"mingru": 2, "minlstm": 3, "lru": 1, "paragru": 3}


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def _pre(p, x):
    W = p["weight_ih"]
    return W @ x + (p["bias_ih"] if "bias_ih" in p else 0.0)


def layer_step(kind, p, x, h):
    """One step of one layer: (h', cache)."""
    H = len(h)
    if kind == "mingru":
        a = _pre(p, x)
        z, ht = _sigmoid(a[:H]), a[H:]
        return (1 - z) * h + z * ht, dict(x=x, h=h, z=z, ht=ht)
    if kind == "minlstm":
        a = _pre(p, x)
        f, i, ht = _sigmoid(a[:H]), _sigmoid(a[H:2 * H]), a[2 * H:]
        s = f + i
        return f / s * h + i / s * ht, dict(x=x, h=h, f=f, i=i, ht=ht)
    if kind == "lru":
        lam, gamma = np.exp(-np.exp(p["nu_log"])), np.exp(p["gamma_log"])
        u = p["weight_ih"] @ x
        return lam * h + gamma * u, dict(x=x, h=h, u=u, lam=lam, gamma=gamma)
    if kind == "paragru":
        p_, q = _pre(p, x), p["weight_hh"] * np.tile(h, 3) + p.get("bias_hh", 0.0)
        r, z = _sigmoid(p_[:H] + q[:H]), _sigmoid(p_[H:2 * H] + q[H:2 * H])
        n = np.tanh(p_[2 * H:] + r * q[2 * H:])
        return (1 - z) * n + z * h, dict(x=x, h=h, r=r, z=z, n=n, qn=q[2 * H:])
    raise ValueError(f"unknown layer kind {kind!r}")


def _add(grads, name, value):
    if name in grads:
        grads[name] += value


def layer_step_backward(kind, p, cache, dh, grads):
    """Backward through one step: adds into ``grads``; returns (dL/dh_prev, dL/dx)."""
    x, h = cache["x"], cache["h"]
    if kind == "lru":
        lam, gamma, u = cache["lam"], cache["gamma"], cache["u"]
        _add(grads, "nu_log", dh * h * (-np.exp(p["nu_log"]) * lam))
        _add(grads, "gamma_log", dh * u * gamma)
        du = dh * gamma
        _add(grads, "weight_ih", np.outer(du, x))
        return lam * dh, p["weight_ih"].T @ du
    if kind == "mingru":
        z, ht = cache["z"], cache["ht"]
        dz = dh * (ht - h)
        dpre = np.concatenate([dz * z * (1 - z), dh * z])
        dh_prev = dh * (1 - z)
    elif kind == "paragru":
        r, z, n, qn = cache["r"], cache["z"], cache["n"], cache["qn"]
        dn = dh * (1 - z) * (1 - n ** 2)                             # dL/dp_n
        dz = dh * (h - n) * z * (1 - z)
        dr = dn * qn * r * (1 - r)
        dpre = np.concatenate([dr, dz, dn])
        dq = np.concatenate([dr, dz, dn * r])                        # dL/dq
        _add(grads, "weight_hh", dq * np.tile(h, 3))
        _add(grads, "bias_hh", dq)
        dh_prev = dh * z + (p["weight_hh"] * dq).reshape(3, -1).sum(axis=0)  # Σ_g a_g dq_g
    elif kind == "minlstm":
        f, i, ht = cache["f"], cache["i"], cache["ht"]
        s = f + i
        da, db = dh * h, dh                                          # h' = a h + b, a = f/s, b = i ht/s
        df = da * i / s ** 2 - db * i * ht / s ** 2
        di = -da * f / s ** 2 + db * f * ht / s ** 2
        dpre = np.concatenate([df * f * (1 - f), di * i * (1 - i), db * i / s])
        dh_prev = dh * f / s
    else:
        raise ValueError(f"unknown layer kind {kind!r}")
    _add(grads, "weight_ih", np.outer(dpre, x))
    _add(grads, "bias_ih", dpre)
    return dh_prev, p["weight_ih"].T @ dpre


def _hidden(kind, p):
    return p["weight_ih"].shape[0] // GATES[kind]


def _steps():
    """The diagonal step, its backward and zero state as :mod:`gpurnn.reference.gated`'s
    loops call them (they take an activation, which these cells do not have)."""
    return (lambda kind, p, x, h, activation: layer_step(kind, p, x, h),
            lambda kind, p, cache, dh, grads, activation:
            layer_step_backward(kind, p, cache, dh, grads),
            lambda kind, p: np.zeros(_hidden(kind, p)))


def forward(kind, layers, params, x, *, output="softmax", h0=None):
    """One sequence forward: (y (T, O), states (list over t of lists over layers), caches),
    by the loops of :func:`gpurnn.reference.gated.forward` on the diagonal step."""
    return gated.forward(kind, layers, params, x, output=output, h0=h0, steps=_steps())


def bptt(kind, layers, params, x, targets, *, output="softmax", truncate=None, h0=None):
    """One sequence: (loss, layer_grads, out_grads (V, c, E), last states); the error of
    output t is pushed back from step t to max(0, t − truncate), through every layer."""
    return gated.bptt(kind, layers, params, x, targets, output=output, truncate=truncate,
                      h0=h0, steps=_steps())


def batch_bptt(kind, layers, params, inputs, targets, *, output="softmax", truncate=None,
               h0=None, mask=None):
    """:func:`bptt` on each sequence of a batch, summed; h0 a list over layers of (B, H);
    mask (B, T) right-padded. Returns (loss, layer_grads, out_grads, last per layer (B, H))."""
    return gated.batch_bptt(kind, layers, params, inputs, targets, output=output,
                            truncate=truncate, h0=h0, mask=mask, steps=_steps())
