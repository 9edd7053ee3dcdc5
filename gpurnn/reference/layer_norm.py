"""Plain per-sequence loops for the layer-normalised GRU and LSTM, written from their equations.

The test oracle for :mod:`gpurnn.engine.recurrences.normalized`: one sequence at a time, one step at a
time, one layer at a time, vectors only, NumPy, float64; the time loops are those of
:mod:`gpurnn.reference.gated` (this file gives the step), and nothing outside
``gpurnn.reference`` is imported.

Layer normalisation of a vector u of N entries (Ba, Kiros and Hinton 2016), with gain γ
and shift β::

    LN(u; γ, β) = γ (u − μ) / sqrt(σ² + ε) + β,   μ, σ² the mean and variance of u, ε = 1e-5

Equations (σ the logistic function, gates in PyTorch's order; a missing β is zero)::

    GRU     a = LN(W_ih x; γ_ih, β_ih)    b = LN(W_hh h; γ_hh, β_hh)      (3H each)
            r = σ(a_r + b_r)   z = σ(a_z + b_z)   n = tanh(a_n + r b_n)
            h' = (1 − z) n + z h
    LSTM    i, f, g, o = σ, σ, tanh, σ of LN(W_ih x; γ_ih, β_ih) + LN(W_hh h; γ_hh, β_hh)
            c' = f c + i g     h' = o tanh(LN(c'; γ_c, β_c))

Parameters per layer: ``weight_ih``, ``weight_hh``, the gains ``ln_ih_weight``,
``ln_hh_weight`` (and ``ln_c_weight`` for the LSTM) and the shifts ``bias_ih`` = β_ih,
``bias_hh`` = β_hh (and ``ln_c_bias`` = β_c). Output, loss, truncation, masks, stacks and
embeddings as in :mod:`gpurnn.reference.gated`.
"""
import numpy as np

from . import gated

__all__ = ["EPS", "layer_norm", "layer_norm_backward", "layer_step", "layer_step_backward",
           "bptt", "batch_bptt"]

EPS = 1e-5


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def layer_norm(u, gain, shift):
    """(LN(u; gain, shift), cache)."""
    mu = u.mean()
    sigma = np.sqrt(((u - mu) ** 2).mean() + EPS)
    xhat = (u - mu) / sigma
    return gain * xhat + shift, dict(xhat=xhat, sigma=sigma)


def layer_norm_backward(dy, gain, cache):
    """(dL/du, dL/dgain, dL/dshift) from dL/dy, by the chain rule through μ and σ written out."""
    xhat, sigma = cache["xhat"], cache["sigma"]
    N = len(dy)
    dxhat = dy * gain
    # x̂_j = (u_j − μ)/σ:  ∂x̂_j/∂u_k = (δ_jk − 1/N − x̂_j x̂_k / N) / σ
    jacobian = (np.eye(N) - 1.0 / N - np.outer(xhat, xhat) / N) / sigma
    return jacobian.T @ dxhat, dy * xhat, dy


def _zero(p, name, size):
    return p[name] if name in p else np.zeros(size)


def layer_step(kind, p, x, state):
    """One step of one layer: (new state, cache). ``state`` is h, or (h, c) for LSTM."""
    h = state[0] if kind == "lstm" else state
    H = len(h)
    G = 4 if kind == "lstm" else 3
    a, cache_a = layer_norm(p["weight_ih"] @ x, p["ln_ih_weight"], _zero(p, "bias_ih", G * H))
    b, cache_b = layer_norm(p["weight_hh"] @ h, p["ln_hh_weight"], _zero(p, "bias_hh", G * H))
    cache = dict(x=x, h_prev=h, ln_ih=cache_a, ln_hh=cache_b)
    if kind == "gru":
        r = _sigmoid(a[:H] + b[:H])
        z = _sigmoid(a[H:2 * H] + b[H:2 * H])
        n = np.tanh(a[2 * H:] + r * b[2 * H:])
        cache.update(r=r, z=z, n=n, b_n=b[2 * H:])
        return (1 - z) * n + z * h, cache
    if kind == "lstm":
        c = state[1]
        s = a + b
        i, f, g, o = _sigmoid(s[:H]), _sigmoid(s[H:2 * H]), np.tanh(s[2 * H:3 * H]), _sigmoid(s[3 * H:])
        c_new = f * c + i * g
        c_norm, cache_c = layer_norm(c_new, p["ln_c_weight"], _zero(p, "ln_c_bias", H))
        tc = np.tanh(c_norm)
        cache.update(c_prev=c, i=i, f=f, g=g, o=o, tc=tc, ln_c=cache_c)
        return (o * tc, c_new), cache
    raise ValueError(f"unknown layer kind {kind!r}")


def _add(grads, name, value):
    if name in grads:
        grads[name] += value


def _norm_backward(grads, p, prefix, bias_name, dy, cache):
    """Back through LN(·; γ, β) with γ = p[prefix + "_weight"]; adds dγ, dβ; returns dL/du."""
    du, dgain, dshift = layer_norm_backward(dy, p[prefix + "_weight"], cache)
    _add(grads, prefix + "_weight", dgain)
    _add(grads, bias_name, dshift)
    return du


def layer_step_backward(kind, p, cache, dstate, grads):
    """Backward through one step of one layer: adds the parameter gradients into ``grads``
    (keys of ``p``) and returns (dL/d(previous state), dL/dx)."""
    if kind == "gru":
        dh = dstate
        r, z, n, b_n, h = cache["r"], cache["z"], cache["n"], cache["b_n"], cache["h_prev"]
        da_n = dh * (1 - z) * (1 - n * n)
        da_r = da_n * b_n * r * (1 - r)
        da_z = dh * (h - n) * z * (1 - z)
        da = np.concatenate([da_r, da_z, da_n])                      # on a = LN(W_ih x)
        db = np.concatenate([da_r, da_z, da_n * r])                  # on b = LN(W_hh h)
        dh_prev = dh * z
    elif kind == "lstm":
        dh, dc = dstate
        i, f, g, o, tc = cache["i"], cache["f"], cache["g"], cache["o"], cache["tc"]
        dc_norm = dh * o * (1 - tc * tc)                             # on LN(c_t)
        dc = dc + _norm_backward(grads, p, "ln_c", "ln_c_bias", dc_norm, cache["ln_c"])
        da = np.concatenate([dc * g * i * (1 - i), dc * cache["c_prev"] * f * (1 - f),
                             dc * i * (1 - g * g), dh * tc * o * (1 - o)])
        db = da
        dh_prev = None
    else:
        raise ValueError(f"unknown layer kind {kind!r}")
    du = _norm_backward(grads, p, "ln_ih", "bias_ih", da, cache["ln_ih"])
    dv = _norm_backward(grads, p, "ln_hh", "bias_hh", db, cache["ln_hh"])
    _add(grads, "weight_ih", np.outer(du, cache["x"]))
    _add(grads, "weight_hh", np.outer(dv, cache["h_prev"]))
    dh_from_w = p["weight_hh"].T @ dv
    if kind == "gru":
        return dh_prev + dh_from_w, p["weight_ih"].T @ du
    return (dh_from_w, dc * f), p["weight_ih"].T @ du


def _steps():
    """The layer-normalised step, its backward and zero state as
    :mod:`gpurnn.reference.gated`'s loops call them (they take an activation, which these
    cells do not have)."""
    return (lambda kind, p, x, state, activation: layer_step(kind, p, x, state),
            lambda kind, p, cache, dstate, grads, activation:
            layer_step_backward(kind, p, cache, dstate, grads), gated.zero_state)


def bptt(kind, layers, params, x, targets, *, output="softmax", truncate=None, h0=None):
    """One sequence: (loss, layer_grads (list of dicts), out_grads (V, c, E), last state),
    by the loops of :func:`gpurnn.reference.gated.bptt` on the layer-normalised step.

    ``layers``: one parameter dict per layer (bottom first); ``params``: V, c (optional), E
    (optional). y_t = g(V h_t + c) of the top layer, loss −Σ log y_t[target] (softmax) or
    ½ Σ (y_t − target)². The error of output t goes back to step max(0, t − truncate)
    (0 when ``truncate`` is None), through every layer at each step.
    """
    return gated.bptt(kind, layers, params, x, targets, output=output, truncate=truncate,
                      h0=h0, steps=_steps())


def batch_bptt(kind, layers, params, inputs, targets, *, output="softmax", truncate=None,
               h0=None, mask=None):
    """:func:`bptt` on each sequence of a batch, losses and gradients summed (as
    :func:`gpurnn.reference.gated.batch_bptt`: inputs (B, T) ids or (B, T, I); h0 per layer
    (B, H), or pairs of (B, H) for the LSTM, or None; mask (B, T) right-padded)."""
    return gated.batch_bptt(kind, layers, params, inputs, targets, output=output,
                            truncate=truncate, h0=h0, mask=mask, steps=_steps())
