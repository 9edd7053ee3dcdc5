"""Plain per-sequence Backpropagation Through Time, written straight from the seed documents.

These loops are the test oracle and the benchmark baseline for the batched engine, so they favour
being obviously right over being fast: one sequence at a time, one time step at a time, NumPy only.

Seeds (``/work/shared/seeds/``):

* 000 / 002 -- WildML RNN tutorial part 3: ``forward_propagation`` and ``bptt`` with ``bptt_truncate``.
* 001 -- Peter Roelants' linear RNN that counts ones: ``forward_states`` and ``backward_gradient``.
* 003 -- the nested recursion ``S_t = (1 + w S_{t-1})^2`` and its derivative.
* 004 -- RNN with biases ``b``, ``c``, hidden activation ``f``, output activation ``g``, squared
  error and the errors ``e_h``, ``e_y`` summed over a window of ``tau`` past steps.

Shapes: ``T`` time steps, ``I`` inputs (vocabulary size for token ids), ``H`` hidden units,
``O`` outputs, ``B`` sequences in a batch.
"""

import functools

import numpy as np


def _sigmoid(a):
    # Same value as 1 / (1 + exp(-a)), without overflow warnings for large negative a.
    return 0.5 * (1.0 + np.tanh(0.5 * a))


def _softmax(a):
    e = np.exp(a - np.max(a))
    return e / e.sum()


# name -> (function, derivative written from the pre-activation a).
_ACTIVATIONS = {
    "tanh": (np.tanh, lambda a: 1.0 - np.tanh(a) ** 2),
    "relu": (lambda a: np.maximum(a, 0.0), lambda a: (a > 0).astype(a.dtype)),
    "sigmoid": (_sigmoid, lambda a: _sigmoid(a) * (1.0 - _sigmoid(a))),
    "identity": (lambda a: a, np.ones_like),
}
_OUTPUTS = {
    "softmax": (_softmax, None),  # paired with cross-entropy, so g' is never needed on its own
    "identity": _ACTIVATIONS["identity"],
    "sigmoid": _ACTIVATIONS["sigmoid"],
    "tanh": _ACTIVATIONS["tanh"],
}
__all__ = ["tutorial_forward", "tutorial_loss", "tutorial_bptt", "general_forward", "general_bptt",
           "batch_bptt", "linear_forward_states", "linear_loss", "linear_output_gradient",
           "backward_gradient", "nested_recursion"]

_PARAM_KEYS = ("U", "W", "V", "b", "c")


# --------------------------------------------------------------------------- seeds 000 / 002


def tutorial_forward(U, V, W, x):
    """Seeds 000/002: the tutorial's ``forward_propagation`` for one sentence.

    U (H, I), V (O, H), W (H, H); x (T,) token ids.
    Returns o (T, O) with o[t] = softmax(V s[t]) and s (T+1, H) with
    s[t] = tanh(U[:, x[t]] + W s[t-1]). The extra last row s[T] stays zero and is the initial
    state: at t = 0, ``s[t-1]`` is ``s[-1]``, exactly as in the tutorial.
    """
    x = np.asarray(x)
    T, H = len(x), W.shape[0]
    dtype = np.result_type(U, V, W)
    s = np.zeros((T + 1, H), dtype=dtype)
    o = np.zeros((T, V.shape[0]), dtype=dtype)
    for t in range(T):
        s[t] = np.tanh(U[:, x[t]] + W.dot(s[t - 1]))
        o[t] = _softmax(V.dot(s[t]))
    return o, s


def tutorial_loss(U, V, W, x, y):
    """Seeds 000/002: summed cross-entropy ``-sum_t log o[t, y[t]]`` of one sentence.

    x (T,) token ids, y (T,) target token ids; U, V, W as in :func:`tutorial_forward`.
    """
    y = np.asarray(y)
    o, _ = tutorial_forward(U, V, W, x)
    return -np.sum(np.log(o[np.arange(len(y)), y]))


def tutorial_bptt(U, V, W, x, y, bptt_truncate):
    """Seeds 000/002: the tutorial's ``bptt``, loop for loop.

    x, y (T,) token ids; U (H, I), V (O, H), W (H, H). Returns [dLdU (H, I), dLdV (O, H),
    dLdW (H, H)] of :func:`tutorial_loss`. The error of output t reaches steps
    t, t-1, ..., max(0, t - bptt_truncate): ``bptt_truncate + 1`` steps, not ``bptt_truncate``.
    """
    x, y = np.asarray(x), np.asarray(y)
    T = len(y)
    o, s = tutorial_forward(U, V, W, x)
    dLdU = np.zeros(U.shape)
    dLdV = np.zeros(V.shape)
    dLdW = np.zeros(W.shape)
    # The seed writes ``delta_o = o`` and edits o in place; copy so o stays the softmax output.
    delta_o = o.copy()
    delta_o[np.arange(T), y] -= 1.0
    for t in np.arange(T)[::-1]:
        dLdV += np.outer(delta_o[t], s[t])
        delta_t = V.T.dot(delta_o[t]) * (1 - s[t] ** 2)
        for bptt_step in np.arange(max(0, t - bptt_truncate), t + 1)[::-1]:
            # At bptt_step == 0, s[-1] is the zero initial state: no W term, and the last
            # delta_t update is computed but never used.
            dLdW += np.outer(delta_t, s[bptt_step - 1])
            dLdU[:, x[bptt_step]] += delta_t
            delta_t = W.T.dot(delta_t) * (1 - s[bptt_step - 1] ** 2)
    return [dLdU, dLdV, dLdW]


# --------------------------------------------------------------------------- seed 004


# gpurnn's models name the seeds' U, W, b as PyTorch does; the loops below take either name,
# so a model's ``params`` can be passed as they are.
_MODEL_NAMES = {"weight_ih": "U", "weight_hh": "W", "bias_ih": "b"}


def _either_names(function):
    """``function(params, ...)`` on params named like the seeds or like gpurnn's models; the
    grads it returns (if any) carry the names the params came with."""
    back = {seed: model for model, seed in _MODEL_NAMES.items()}

    @functools.wraps(function)
    def wrapper(params, *args, **kwargs):
        if not any(name in params for name in _MODEL_NAMES):
            return function(params, *args, **kwargs)
        result = function({_MODEL_NAMES.get(k, k): v for k, v in params.items()}, *args,
                          **kwargs)
        if len(result) == 3:                              # (loss, grads, last_hidden)
            loss, grads, last = result
            return loss, {back.get(k, k): v for k, v in grads.items()}, last
        return result
    return wrapper


def _check_params(params):
    unknown = set(params) - set(_PARAM_KEYS)
    if unknown:
        raise ValueError(f"unknown parameter keys {sorted(unknown)}; expected a subset of {_PARAM_KEYS}")


def _is_tokens(x):
    if np.issubdtype(x.dtype, np.integer):
        if x.ndim != 1:
            raise ValueError(f"token ids must be 1-D (T,), got shape {x.shape}")
        return True
    if x.ndim != 2:
        raise ValueError(f"dense inputs must be 2-D (T, I), got shape {x.shape}")
    return False


def _general_forward_full(params, x, activation, output, h0):
    """Seed 004 forward pass keeping the pre-activations: (h_hat, h, y_hat, y), shapes
    (T, H), (T, H), (T, O), (T, O), plus the initial state h0 (H,)."""
    _check_params(params)
    f, _ = _ACTIVATIONS[activation]
    g, _ = _OUTPUTS[output]
    U, W, V = params["U"], params["W"], params["V"]
    b, c = params.get("b"), params.get("c")
    tokens = _is_tokens(x)
    T, H, O = len(x), W.shape[0], V.shape[0]
    h0 = np.zeros(H, dtype=W.dtype) if h0 is None else np.asarray(h0)
    dtype = np.result_type(U, W, V, h0, *([] if tokens else [x]))
    h_hat, h = np.zeros((T, H), dtype=dtype), np.zeros((T, H), dtype=dtype)
    y_hat, y = np.zeros((T, O), dtype=dtype), np.zeros((T, O), dtype=dtype)
    h_prev = h0
    for t in range(T):
        Ux = U[:, x[t]] if tokens else U @ x[t]
        h_hat[t] = Ux + W @ h_prev + (0 if b is None else b)
        h[t] = f(h_hat[t])
        y_hat[t] = V @ h[t] + (0 if c is None else c)
        y[t] = g(y_hat[t])
        h_prev = h[t]
    return h_hat, h, y_hat, y, h0


@_either_names
def general_forward(params, x, *, activation="tanh", output="softmax", h0=None):
    """Seed 004: h(t) = f(U x(t) + W h(t-1) + b), y(t) = g(V h(t) + c) for one sequence.

    params: dict with "U" (H, I), "W" (H, H), "V" (O, H) and optionally "b" (H,), "c" (O,)
    (a missing bias is no bias), or with "weight_ih", "weight_hh", "bias_ih" for U, W, b as a
    gpurnn model's ``params`` name them. x: (T,) integer token ids (U x(t) is the column U[:, x[t]])
    or (T, I) floats. h0: (H,) initial state, zeros by default.
    activation f: tanh | relu | sigmoid | identity; output g: softmax | identity | sigmoid | tanh.
    Returns y (T, O) and h (T, H), where h[t] is the state after step t (h0 is not included).
    """
    _, h, _, y, _ = _general_forward_full(params, np.asarray(x), activation, output, h0)
    return y, h


@_either_names
def general_bptt(params, x, targets, *, activation="tanh", output="softmax", truncate=None, h0=None):
    """Seed 004 (windowed BPTT, which reduces to seeds 000/002 for tanh/softmax without biases).

    params, x, h0, activation, output: as in :func:`general_forward` (x (T,) ints or (T, I)).
    targets: (T,) int class ids when output is "softmax" (loss = -sum_t log y[t, targets[t]],
    e_y(t) = y(t) - onehot(targets[t])), else (T, O) floats (loss = 0.5 sum (y - targets)^2,
    e_y(t) = g'(y_hat(t)) * (y(t) - targets(t))).
    truncate: the error of output t reaches steps t, t-1, ..., max(0, t - truncate) (the
    seed's z = 0..tau); None means all the way to step 0, 0 means step t only.
    Returns (loss, grads, last_hidden): grads has the keys of params with their shapes;
    last_hidden (H,) is h[T-1].
    """
    x, targets = np.asarray(x), np.asarray(targets)
    if len(x) == 0:
        raise ValueError("general_bptt needs at least one time step")
    h_hat, h, y_hat, y, h0 = _general_forward_full(params, x, activation, output, h0)
    _, f_prime = _ACTIVATIONS[activation]
    W, V = params["W"], params["V"]
    T = len(x)
    tokens = _is_tokens(x)

    if output == "softmax":
        loss = -np.sum(np.log(y[np.arange(T), targets]))
        e_y = y.copy()
        e_y[np.arange(T), targets] -= 1.0
    else:
        _, g_prime = _OUTPUTS[output]
        loss = 0.5 * np.sum((y - targets) ** 2)
        e_y = g_prime(y_hat) * (y - targets)

    grads = {k: np.zeros_like(v) for k, v in params.items()}
    for t in reversed(range(T)):
        grads["V"] += np.outer(e_y[t], h[t])
        if "c" in grads:
            grads["c"] += e_y[t]
        e = f_prime(h_hat[t]) * (V.T @ e_y[t])  # e_h(t) from output t alone
        stop = 0 if truncate is None else max(0, t - truncate)
        for j in range(t, stop - 1, -1):
            grads["W"] += np.outer(e, h[j - 1] if j > 0 else h0)
            if tokens:
                grads["U"][:, x[j]] += e
            else:
                grads["U"] += np.outer(e, x[j])
            if "b" in grads:
                grads["b"] += e
            if j > stop:  # e_h(j-1) = f'(h_hat(j-1)) * W^T e_h(j)
                e = f_prime(h_hat[j - 1]) * (W.T @ e)
    return loss, grads, h[T - 1]


@_either_names
def batch_bptt(params, inputs, targets, *, activation="tanh", output="softmax", truncate=None,
               h0=None, mask=None):
    """Seed 004 over a batch: :func:`general_bptt` on each sequence, losses and grads summed.

    inputs: (B, T) token ids or (B, T, I) floats; targets: (B, T) ints (softmax) or (B, T, O)
    floats; h0: (B, H) or None (zeros). mask: (B, T) of 0/1, right-padded: sequence b has
    length L_b = mask[b].sum() and only its first L_b steps exist (None means all T).
    Returns (loss, grads, last_hidden): grads has the keys and shapes of params;
    last_hidden (B, H) is each sequence's last real state (h0[b], or zeros, when L_b == 0).
    Sequences with L_b == 0 add nothing to loss or grads.
    """
    inputs, targets = np.asarray(inputs), np.asarray(targets)
    B, T = inputs.shape[:2]
    H = params["W"].shape[0]
    if mask is None:
        lengths = np.full(B, T)
    else:
        mask = np.asarray(mask)
        lengths = mask.sum(axis=1).astype(int)
        for b in range(B):
            if np.any(mask[b, :lengths[b]] != 1) or np.any(mask[b, lengths[b]:] != 0):
                raise ValueError(f"mask row {b} is not 0/1 and right-padded: {mask[b]}")

    loss = 0.0
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    last_hidden = np.zeros((B, H), dtype=params["W"].dtype) if h0 is None else np.array(h0)
    for b in range(B):
        L = lengths[b]
        if L == 0:
            continue
        loss_b, grads_b, last_hidden[b] = general_bptt(
            params, inputs[b, :L], targets[b, :L], activation=activation, output=output,
            truncate=truncate, h0=None if h0 is None else h0[b])
        loss += loss_b
        for k in grads:
            grads[k] += grads_b[k]
    return loss, grads, last_hidden


# --------------------------------------------------------------------------- seed 001


def linear_forward_states(X, wx, wRec):
    """Seed 001 (Roelants' ``forward_states``): linear RNN S_k = S_{k-1} wRec + X_{k-1} wx.

    X (n_samples, T); wx, wRec scalars. Returns S (n_samples, T+1) with S[:, 0] = 0;
    S[:, -1] is the network output.
    """
    S = np.zeros((X.shape[0], X.shape[1] + 1))
    for k in range(1, X.shape[1] + 1):
        S[:, k] = S[:, k - 1] * wRec + X[:, k - 1] * wx
    return S


def linear_loss(y, t):
    """Seed 001: mean squared error ``mean((t - y)**2)``; y, t (n_samples,)."""
    return np.mean((t - y) ** 2)


def linear_output_gradient(y, t):
    """Seed 001: ``2 (y - t)``, the gradient of the *summed* squared error; y, t (n_samples,).

    The mean in :func:`linear_loss` comes from the division by n_samples in
    :func:`backward_gradient`.
    """
    return 2.0 * (y - t)


def backward_gradient(X, S, grad_out, wRec):
    """Seed 001: Roelants' ``backward_gradient`` for the linear RNN.

    X (n_samples, T); S (n_samples, T+1) from :func:`linear_forward_states`; grad_out
    (n_samples,) the loss gradient w.r.t. the output S[:, -1]; wRec scalar.
    Returns ((wx_grad, wRec_grad), grad_over_time) with grad_over_time (n_samples, T+1) the
    per-sample gradient w.r.t. each state S[:, k] (before the division by n_samples).
    """
    n_samples = X.shape[0]  # a module-level global in the seed
    grad_over_time = np.zeros((X.shape[0], X.shape[1] + 1))
    grad_over_time[:, -1] = grad_out
    wx_grad = 0
    wRec_grad = 0
    for k in range(X.shape[1], 0, -1):
        wx_grad += np.dot(grad_over_time[:, k], X[:, k - 1])
        wRec_grad += np.dot(grad_over_time[:, k], S[:, k - 1])
        grad_over_time[:, k - 1] = grad_over_time[:, k] * wRec
    return (wx_grad / n_samples, wRec_grad / n_samples), grad_over_time


# --------------------------------------------------------------------------- seed 003


def nested_recursion(w, s0, steps):
    """Seed 003: S_t = (1 + w S_{t-1})^2 from S_0 = s0, and dS_t/dw by forward mode.

    dS_t/dw = 2 (1 + w S_{t-1}) (S_{t-1} + w dS_{t-1}/dw), with dS_0/dw = 0 (s0 does not
    depend on w). w, s0 scalars; returns floats (S_steps, dS_steps/dw).
    For w = 2, s0 = 1, steps = 4 this is the seed's TensorFlow value 12926834988414.
    """
    S, dS = float(s0), 0.0
    for _ in range(steps):
        S, dS = (1.0 + w * S) ** 2, 2.0 * (1.0 + w * S) * (S + w * dS)
    return S, dS
