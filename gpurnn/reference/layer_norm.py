"""Plain per-sequence loops for the layer-normalised GRU and LSTM, written from their equations.

The test oracle for :mod:`gpurnn.engine.normalized`: one sequence at a time, one step at a
time, one layer at a time, vectors only, NumPy, float64; it imports nothing from gpurnn.

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


def _input_vector(x_t, params, input_size):
    if np.ndim(x_t) == 0:                                            # a token id
        if "E" in params:
            return params["E"][int(x_t)].copy()
        onehot = np.zeros(input_size)
        onehot[int(x_t)] = 1.0
        return onehot
    return np.asarray(x_t, dtype=float)


def _zero_state(kind, H):
    return (np.zeros(H), np.zeros(H)) if kind == "lstm" else np.zeros(H)


def _h(kind, state):
    return state[0] if kind == "lstm" else state


_OUTPUTS = {"identity": (lambda a: a, np.ones_like), "sigmoid": (_sigmoid, lambda y: y * (1 - y)),
            "tanh": (np.tanh, lambda y: 1 - y * y)}


def bptt(kind, layers, params, x, targets, *, output="softmax", truncate=None, h0=None):
    """One sequence: (loss, layer_grads (list of dicts), out_grads (V, c, E), last state).

    ``layers``: one parameter dict per layer (bottom first); ``params``: V, c (optional), E
    (optional). y_t = g(V h_t + c) of the top layer, loss −Σ log y_t[target] (softmax) or
    ½ Σ (y_t − target)². The error of output t goes back to step max(0, t − truncate)
    (0 when ``truncate`` is None), through every layer at each step.
    """
    T, L = len(x), len(layers)
    H = layers[0]["weight_hh"].shape[1]
    state = [(_zero_state(kind, H) if h0 is None else h0[l]) for l in range(L)]
    caches, ys = [], []
    for t in range(T):
        inp = _input_vector(x[t], params, layers[0]["weight_ih"].shape[1])
        step = []
        for l, p in enumerate(layers):
            state[l], cache = layer_step(kind, p, inp, state[l])
            step.append(cache)
            inp = _h(kind, state[l])
        a = params["V"] @ inp + (params["c"] if "c" in params else 0)
        if output == "softmax":
            e = np.exp(a - a.max())
            ys.append((inp, e / e.sum()))
        else:
            ys.append((inp, _OUTPUTS[output][0](a)))
        caches.append(step)
    layer_grads = [{k: np.zeros_like(v) for k, v in p.items()} for p in layers]
    out_grads = {k: np.zeros_like(v) for k, v in params.items()}
    loss = 0.0
    for t in reversed(range(T)):
        top, y = ys[t]
        if output == "softmax":
            loss -= np.log(y[targets[t]])
            e_y = y.copy()
            e_y[targets[t]] -= 1.0
        else:
            loss += 0.5 * np.sum((y - targets[t]) ** 2)
            e_y = _OUTPUTS[output][1](y) * (y - targets[t])
        out_grads["V"] += np.outer(e_y, top)
        if "c" in out_grads:
            out_grads["c"] += e_y
        g = [_zero_state(kind, H) for _ in range(L)]                 # origin t alone
        dh_top = params["V"].T @ e_y
        g[-1] = (dh_top, np.zeros(H)) if kind == "lstm" else dh_top
        stop = 0 if truncate is None else max(0, t - truncate)
        for j in range(t, stop - 1, -1):
            dx = None
            for l in reversed(range(L)):
                if dx is not None:                                   # from layer l + 1 at step j
                    g[l] = (g[l][0] + dx, g[l][1]) if kind == "lstm" else g[l] + dx
                g[l], dx = layer_step_backward(kind, layers[l], caches[j][l], g[l],
                                               layer_grads[l])
            if "E" in out_grads:
                out_grads["E"][int(x[j])] += dx
    return loss, layer_grads, out_grads, list(state)


def batch_bptt(kind, layers, params, inputs, targets, *, output="softmax", truncate=None,
               h0=None, mask=None):
    """:func:`bptt` on each sequence of a batch, losses and gradients summed.

    inputs (B, T) ids or (B, T, I); h0: per layer (B, H), or pairs of (B, H) for the LSTM,
    or None; mask (B, T) right-padded. Returns (loss, layer_grads, out_grads, last), ``last``
    per layer the state after each sequence's last real step, batched like h0.
    """
    inputs, targets = np.asarray(inputs), np.asarray(targets)
    B, T = inputs.shape[:2]
    L, H = len(layers), layers[0]["weight_hh"].shape[1]
    lengths = np.full(B, T) if mask is None else np.asarray(mask).sum(axis=1).astype(int)
    layer_grads = [{k: np.zeros_like(v) for k, v in p.items()} for p in layers]
    out_grads = {k: np.zeros_like(v) for k, v in params.items()}
    loss, last = 0.0, []
    for b in range(B):
        start = None if h0 is None else [
            (h0[l][0][b], h0[l][1][b]) if kind == "lstm" else h0[l][b] for l in range(L)]
        if lengths[b] == 0:
            last.append(start or [_zero_state(kind, H) for _ in range(L)])
            continue
        loss_b, lg, og, final = bptt(kind, layers, params, inputs[b, :lengths[b]],
                                     targets[b, :lengths[b]], output=output,
                                     truncate=truncate, h0=start)
        loss += loss_b
        for l in range(L):
            for k in lg[l]:
                layer_grads[l][k] += lg[l][k]
        for k in og:
            out_grads[k] += og[k]
        last.append(final)
    if kind == "lstm":
        last = [tuple(np.array([last[b][l][part] for b in range(B)]) for part in (0, 1))
                for l in range(L)]
    else:
        last = [np.array([last[b][l] for b in range(B)]) for l in range(L)]
    return loss, layer_grads, out_grads, last
