"""Plain per-sequence loops for GRU, LSTM and stacked layers, written from the cells' equations.

The test oracle for :mod:`gpurnn.gated` and :mod:`gpurnn.stack`: one sequence at a time,
one step at a time, one layer at a time, vectors only, NumPy, float64. Token inputs are
turned into explicit one-hot vectors (or embedding rows), so every layer reads a vector x.

Equations (PyTorch's ``nn.GRU`` and ``nn.LSTM``; σ the logistic function)::

    Elman   h' = f(U x + W h + b)   (U, W, b: weight_ih, weight_hh, bias_ih)
    GRU     r = σ(W_ir x + b_ir + W_hr h + b_hr)     z = σ(W_iz x + b_iz + W_hz h + b_hz)
            n = tanh(W_in x + b_in + r (W_hn h + b_hn))     h' = (1 − z) n + z h
    LSTM    i, f, g, o = σ, σ, tanh, σ of (W_ih x + b_ih + W_hh h + b_hh), in blocks of H
            c' = f c + i g     h' = o tanh(c')
            with weight_hr (PyTorch's proj_size P):  m = o tanh(c'),  h' = W_hr m  (P entries)

Output y_t = g(V h_t + c) of the top layer; loss −Σ log y_t[target] (softmax) or
½ Σ (y_t − target)² (identity, sigmoid, tanh). Truncation: the error of output t is pushed
back through steps t, t−1, …, max(0, t − truncate), through every layer at each step
(the window is on the stacked state). Layer l ≥ 1 reads layer l−1's h at the same step.

Parameters: a list with one dict per layer, keyed by the names of layer 0 in the models
(``weight_ih``, ``weight_hh``, ``bias_ih`` and, for GRU/LSTM, ``bias_hh``, the Elman
layer's U, W, b among them; missing biases are zero; ``weight_hr`` for a projected LSTM), plus ``V``, ``c`` (optional) and ``E`` (optional, (vocabulary, embedding)).
"""
import numpy as np

__all__ = ["layer_step", "layer_step_backward", "forward", "bptt", "batch_bptt"]


def _sigmoid(a):
    return 0.5 * (1.0 + np.tanh(0.5 * a))


_ACT = {"tanh": (np.tanh, lambda y: 1 - y * y),
        "relu": (lambda a: np.maximum(a, 0.0), lambda y: (y > 0).astype(float)),
        "sigmoid": (_sigmoid, lambda y: y * (1 - y)),
        "identity": (lambda a: a, np.ones_like)}


def _zero_bias(p, name, size):
    return p[name] if name in p else np.zeros(size)


def layer_step(kind, p, x, state, activation="tanh"):
    """One step of one layer: (new state, cache). ``state`` is h, or (h, c) for LSTM."""
    if kind == "elman":
        f, _ = _ACT[activation]
        h = f(p["weight_ih"] @ x + p["weight_hh"] @ state + _zero_bias(p, "bias_ih", len(state)))
        return h, dict(x=x, h_prev=state, h=h)
    if kind == "gru":
        h = state
        H = len(h)
        gi = p["weight_ih"] @ x + _zero_bias(p, "bias_ih", 3 * H)
        gh = p["weight_hh"] @ h + _zero_bias(p, "bias_hh", 3 * H)
        r = _sigmoid(gi[:H] + gh[:H])
        z = _sigmoid(gi[H:2 * H] + gh[H:2 * H])
        n = np.tanh(gi[2 * H:] + r * gh[2 * H:])
        h_new = (1 - z) * n + z * h
        return h_new, dict(x=x, h_prev=h, r=r, z=z, n=n, hn=gh[2 * H:])
    if kind == "lstm":
        h, c = state
        H = len(c)
        a = (p["weight_ih"] @ x + _zero_bias(p, "bias_ih", 4 * H)
             + p["weight_hh"] @ h + _zero_bias(p, "bias_hh", 4 * H))
        i, f, g, o = _sigmoid(a[:H]), _sigmoid(a[H:2 * H]), np.tanh(a[2 * H:3 * H]), _sigmoid(a[3 * H:])
        c_new = f * c + i * g
        m = o * np.tanh(c_new)
        h_new = p["weight_hr"] @ m if "weight_hr" in p else m
        return (h_new, c_new), dict(x=x, h_prev=h, c_prev=c, i=i, f=f, g=g, o=o, c=c_new, m=m)
    raise ValueError(f"unknown layer kind {kind!r}")


def _add(grads, name, value):
    if name in grads:
        grads[name] += value


def layer_step_backward(kind, p, cache, dstate, grads, activation="tanh"):
    """Backward through one step of one layer.

    ``dstate`` is dL/d(new state): dh, or (dh, dc) for LSTM. Adds the parameter gradients
    into ``grads`` (keys of ``p``); returns (dL/d(previous state), dL/dx).
    """
    if kind == "elman":
        _, fprime = _ACT[activation]
        e = dstate * fprime(cache["h"])                              # e_h = f'(a) dL/dh
        _add(grads, "weight_ih", np.outer(e, cache["x"]))
        _add(grads, "weight_hh", np.outer(e, cache["h_prev"]))
        _add(grads, "bias_ih", e)
        return p["weight_hh"].T @ e, p["weight_ih"].T @ e
    if kind == "gru":
        dh = dstate
        r, z, n, hn, h = cache["r"], cache["z"], cache["n"], cache["hn"], cache["h_prev"]
        dn = dh * (1 - z)
        dz = dh * (h - n)
        da_n = dn * (1 - n * n)                                      # through tanh
        dr = da_n * hn
        da_r = dr * r * (1 - r)
        da_z = dz * z * (1 - z)
        d_gi = np.concatenate([da_r, da_z, da_n])                    # input side
        d_gh = np.concatenate([da_r, da_z, da_n * r])                # hidden side: r (W_hn h + b_hn)
        _add(grads, "weight_ih", np.outer(d_gi, cache["x"]))
        _add(grads, "weight_hh", np.outer(d_gh, h))
        _add(grads, "bias_ih", d_gi)
        _add(grads, "bias_hh", d_gh)
        return dh * z + p["weight_hh"].T @ d_gh, p["weight_ih"].T @ d_gi
    if kind == "lstm":
        dh, dc = dstate
        if "weight_hr" in p:                                         # h = W_hr m
            _add(grads, "weight_hr", np.outer(dh, cache["m"]))
            dh = p["weight_hr"].T @ dh                               # dL/dm
        i, f, g, o, c = cache["i"], cache["f"], cache["g"], cache["o"], cache["c"]
        tc = np.tanh(c)
        dc = dc + dh * o * (1 - tc * tc)                             # both paths into c_t
        do = dh * tc
        di, df, dg = dc * g, dc * cache["c_prev"], dc * i
        da = np.concatenate([di * i * (1 - i), df * f * (1 - f), dg * (1 - g * g),
                             do * o * (1 - o)])
        _add(grads, "weight_ih", np.outer(da, cache["x"]))
        _add(grads, "weight_hh", np.outer(da, cache["h_prev"]))
        _add(grads, "bias_ih", da)
        _add(grads, "bias_hh", da)
        return (p["weight_hh"].T @ da, dc * f), p["weight_ih"].T @ da
    raise ValueError(f"unknown layer kind {kind!r}")




def _input_vector(x_t, params, input_size):
    if np.ndim(x_t) == 0:                                            # a token id
        if "E" in params:
            return params["E"][int(x_t)].copy()
        onehot = np.zeros(input_size)
        onehot[int(x_t)] = 1.0
        return onehot
    return np.asarray(x_t, dtype=float)


def zero_state(kind, p):
    """Zeros shaped like the state of the layer with parameters ``p``: h has weight_hh's
    columns (a projected LSTM's P), an LSTM's c its rows / 4."""
    h = np.zeros(p["weight_hh"].shape[1])
    return (h, np.zeros(p["weight_hh"].shape[0] // 4)) if kind == "lstm" else h


# What the loops below run for a layer: its step, the step's backward and its zero state.
# Another cell's reference (layer-normalised, diagonal) passes its own triple as ``steps``.
STEPS = (layer_step, layer_step_backward, zero_state)


def _h(kind, state):
    return state[0] if kind == "lstm" else state


def forward(kind, layers, params, x, *, output="softmax", h0=None, activation="tanh",
            steps=None):
    """One sequence forward. ``layers``: list of per-layer dicts; ``params``: V, c, E.

    x: (T,) token ids or (T, I) floats; h0: list of per-layer states (h, or (h, c)) or None.
    Returns (y (T, O), states: list over t of lists over layers, caches likewise).
    """
    first = layers[0]["weight_ih"]
    steps = steps or STEPS
    state = [(steps[2](kind, p) if h0 is None else h0[l]) for l, p in enumerate(layers)]
    g_out = {"softmax": None, "identity": lambda a: a, "sigmoid": _sigmoid, "tanh": np.tanh}
    ys, states, caches = [], [], []
    for t in range(len(x)):
        inp = _input_vector(x[t], params, first.shape[1])
        step_caches = []
        for l, p in enumerate(layers):
            state[l], cache = steps[0](kind, p, inp, state[l], activation)
            step_caches.append(cache)
            inp = _h(kind, state[l])
        a = params["V"] @ inp + (params["c"] if "c" in params else 0)
        if output == "softmax":
            e = np.exp(a - a.max())
            ys.append(e / e.sum())
        else:
            ys.append(g_out[output](a))
        states.append(list(state))
        caches.append(step_caches)
    return np.array(ys), states, caches


def bptt(kind, layers, params, x, targets, *, output="softmax", truncate=None, h0=None,
         activation="tanh", steps=None):
    """One sequence: (loss, layer_grads (list of dicts), out_grads (V, c, E), last state).

    For every output t the error is pushed back from step t to max(0, t − truncate)
    (to 0 when ``truncate`` is None), through all layers at each step.
    """
    x, targets = np.asarray(x), np.asarray(targets)
    T, L = len(x), len(layers)
    y, states, caches = forward(kind, layers, params, x, output=output, h0=h0,
                                activation=activation, steps=steps)
    top = [_h(kind, states[t][-1]) for t in range(T)]
    if output == "softmax":
        loss = -np.sum(np.log(y[np.arange(T), targets]))
        e_y = y.copy()
        e_y[np.arange(T), targets] -= 1.0
    else:
        loss = 0.5 * np.sum((y - targets) ** 2)
        gprime = {"identity": np.ones_like, "sigmoid": lambda v: v * (1 - v),
                  "tanh": lambda v: 1 - v * v}[output]
        e_y = gprime(y) * (y - targets)
    layer_grads = [{k: np.zeros_like(v) for k, v in p.items()} for p in layers]
    out_grads = {k: np.zeros_like(v) for k, v in params.items()}
    for t in reversed(range(T)):
        out_grads["V"] += np.outer(e_y[t], top[t])
        if "c" in out_grads:
            out_grads["c"] += e_y[t]
        # origin t: the error of output t alone, through the stack
        g = [(steps or STEPS)[2](kind, p) for p in layers]
        g[-1] = (params["V"].T @ e_y[t], g[-1][1]) if kind == "lstm" else params["V"].T @ e_y[t]
        stop = 0 if truncate is None else max(0, t - truncate)
        for j in range(t, stop - 1, -1):
            dx = None
            for l in reversed(range(L)):
                if dx is not None:                                   # from layer l+1 at step j
                    g[l] = (g[l][0] + dx, g[l][1]) if kind == "lstm" else g[l] + dx
                g[l], dx = (steps or STEPS)[1](kind, layers[l], caches[j][l], g[l],
                                               layer_grads[l], activation)
            if "E" in out_grads:
                out_grads["E"][int(x[j])] += dx
    return loss, layer_grads, out_grads, states[-1]


def batch_bptt(kind, layers, params, inputs, targets, *, output="softmax", truncate=None,
               h0=None, mask=None, activation="tanh", steps=None):
    """:func:`bptt` on each sequence of a batch, losses and gradients summed.

    inputs (B, T) ids or (B, T, I); targets (B, T) ids or (B, T, O); h0: list over layers
    of per-layer states, each (B, H) (LSTM: pairs of (B, H), h (B, P) with a projection),
    or None; mask (B, T) right-padded.
    Returns (loss, layer_grads, out_grads, last) with ``last`` the per-layer final states of
    each sequence's last real step (h0, or zeros, for an empty sequence), batched like h0.
    """
    inputs, targets = np.asarray(inputs), np.asarray(targets)
    B, T = inputs.shape[:2]
    L = len(layers)
    lengths = np.full(B, T) if mask is None else np.asarray(mask).sum(axis=1).astype(int)
    layer_grads = [{k: np.zeros_like(v) for k, v in p.items()} for p in layers]
    out_grads = {k: np.zeros_like(v) for k, v in params.items()}

    def state_of(b):
        if h0 is None:
            return None
        return [(h0[l][0][b], h0[l][1][b]) if kind == "lstm" else h0[l][b] for l in range(L)]

    loss = 0.0
    last = []
    for b in range(B):
        start = state_of(b)
        if lengths[b] == 0:
            last.append(start if start is not None else
                        [(steps or STEPS)[2](kind, p) for p in layers])
            continue
        loss_b, lg, og, final = bptt(kind, layers, params, inputs[b, :lengths[b]],
                                     targets[b, :lengths[b]], output=output, truncate=truncate,
                                     h0=start, activation=activation, steps=steps)
        loss += loss_b
        for l in range(L):
            for k in lg[l]:
                layer_grads[l][k] += lg[l][k]
        for k in og:
            out_grads[k] += og[k]
        last.append(final)
    if kind == "lstm":
        last = [(np.array([last[b][l][0] for b in range(B)]),
                 np.array([last[b][l][1] for b in range(B)])) for l in range(L)]
    else:
        last = [np.array([last[b][l] for b in range(B)]) for l in range(L)]
    return loss, layer_grads, out_grads, last
