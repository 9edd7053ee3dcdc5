"""The seed-derived references checked against each other and against finite differences."""

import copy

import numpy as np
import pytest

from gpurnn import reference

ACTIVATIONS = ["tanh", "relu", "sigmoid", "identity"]
OUTPUTS = ["softmax", "identity", "sigmoid", "tanh"]


def make_case(seed, *, H=3, I=5, O=4, T=6, tokens=True, output="softmax", bias=True, with_h0=True):
    rng = np.random.default_rng(seed)
    params = {"U": rng.normal(0, 0.7, (H, I)), "W": rng.normal(0, 0.7, (H, H)),
              "V": rng.normal(0, 0.7, (O, H))}
    if bias:
        params["b"] = rng.normal(0, 0.3, H)
        params["c"] = rng.normal(0, 0.3, O)
    x = rng.integers(0, I, T) if tokens else rng.normal(0, 1, (T, I))
    targets = rng.integers(0, O, T) if output == "softmax" else rng.normal(0, 0.5, (T, O))
    h0 = rng.normal(0, 0.5, H) if with_h0 else None
    return params, x, targets, h0


def step_losses(y, targets, output):
    """Per-step loss written from general_forward's outputs, independently of general_bptt."""
    if output == "softmax":
        return -np.log(y[np.arange(len(y)), targets])
    return 0.5 * np.sum((y - targets) ** 2, axis=1)


def numerical_grads(loss_fn, params, eps=1e-6):
    """Central differences of loss_fn(params) for every entry of every parameter."""
    params = copy.deepcopy(params)
    grads = {}
    for key, value in params.items():
        grads[key] = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            orig = value[idx]
            value[idx] = orig + eps
            plus = loss_fn(params)
            value[idx] = orig - eps
            minus = loss_fn(params)
            value[idx] = orig
            grads[key][idx] = (plus - minus) / (2 * eps)
    return grads


def assert_grads_close(analytic, numeric, tol=1e-6):
    assert analytic.keys() == numeric.keys()
    for key in analytic:
        a, n = analytic[key], numeric[key]
        scale = max(np.max(np.abs(a)), np.max(np.abs(n)), 1e-12)
        assert np.max(np.abs(a - n)) / scale < tol, key


def tutorial_params(seed, H=4, I=6):
    params, x, y, _ = make_case(seed, H=H, I=I, O=I, T=8, bias=False, with_h0=False)
    return params, x, y


# --------------------------------------------------------------------------- seeds 000 / 002


def test_tutorial_forward_and_loss_match_general():
    params, x, y = tutorial_params(0)
    o, s = reference.tutorial_forward(params["U"], params["V"], params["W"], x)
    assert s.shape == (len(x) + 1, 4) and not s[-1].any()
    y_gen, h_gen = reference.general_forward(params, x)
    np.testing.assert_allclose(o, y_gen, rtol=0, atol=1e-14)
    np.testing.assert_allclose(s[:-1], h_gen, rtol=0, atol=1e-14)
    loss_gen, _, _ = reference.general_bptt(params, x, y)
    loss_tut = reference.tutorial_loss(params["U"], params["V"], params["W"], x, y)
    assert loss_tut == pytest.approx(loss_gen, rel=1e-13)


@pytest.mark.parametrize("T", [1, 2, 5, 8])
@pytest.mark.parametrize("extra", [0, 3])
def test_tutorial_bptt_untruncated_equals_general(T, extra):
    params, x, y = tutorial_params(T)
    x, y = x[:T], y[:T]
    dU, dV, dW = reference.tutorial_bptt(params["U"], params["V"], params["W"], x, y, T + extra)
    _, grads, _ = reference.general_bptt(params, x, y, truncate=None)
    for key, tut in zip("UVW", (dU, dV, dW)):
        np.testing.assert_allclose(tut, grads[key], rtol=0, atol=1e-12)


@pytest.mark.parametrize("truncate", [0, 1, 3])
def test_truncated_general_matches_tutorial(truncate):
    params, x, y = tutorial_params(10 + truncate)
    dU, dV, dW = reference.tutorial_bptt(params["U"], params["V"], params["W"], x, y, truncate)
    _, grads, _ = reference.general_bptt(params, x, y, truncate=truncate)
    for key, tut in zip("UVW", (dU, dV, dW)):
        np.testing.assert_allclose(tut, grads[key], rtol=0, atol=1e-12)
    # Truncation must actually change W's gradient here, or the comparison proves little.
    _, full, _ = reference.general_bptt(params, x, y)
    assert not np.allclose(full["W"], grads["W"])


def test_tutorial_bptt_leaves_inputs_untouched():
    params, x, y = tutorial_params(20)
    arrays = [params["U"], params["V"], params["W"], x, y]
    before = [a.copy() for a in arrays]
    reference.tutorial_bptt(*arrays, 2)
    for a, b in zip(arrays, before):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- seed 004


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("tokens", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("with_h0", [True, False])
def test_general_bptt_matches_finite_differences(activation, output, tokens, bias, with_h0):
    params, x, targets, h0 = make_case(1, tokens=tokens, output=output, bias=bias, with_h0=with_h0)
    kw = dict(activation=activation, output=output, h0=h0)

    def loss_fn(p):
        y, _ = reference.general_forward(p, x, **kw)
        return np.sum(step_losses(y, targets, output))

    loss, grads, last = reference.general_bptt(params, x, targets, **kw)
    assert loss == pytest.approx(loss_fn(params), rel=1e-13)
    assert_grads_close(grads, numerical_grads(loss_fn, params))
    np.testing.assert_array_equal(last, reference.general_forward(params, x, **kw)[1][-1])


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("truncate", [0, 2])
@pytest.mark.parametrize("tokens", [True, False])
def test_truncated_general_bptt_matches_windowed_finite_differences(activation, output, truncate, tokens):
    # Seed 004's window: output t's error reaches steps max(0, t - truncate)..t, i.e. the exact
    # gradient of loss_t with the state entering that window held fixed.
    params, x, targets, h0 = make_case(2, tokens=tokens, output=output)
    kw = dict(activation=activation, output=output)
    _, h_fixed = reference.general_forward(params, x, h0=h0, **kw)

    def windowed_loss(p):
        total = 0.0
        for t in range(len(x)):
            start = max(0, t - truncate)
            h_start = h0 if start == 0 else h_fixed[start - 1]
            y, _ = reference.general_forward(p, x[start:t + 1], h0=h_start, **kw)
            total += step_losses(y[-1:], targets[t:t + 1], output)[0]
        return total

    _, grads, _ = reference.general_bptt(params, x, targets, truncate=truncate, h0=h0, **kw)
    assert_grads_close(grads, numerical_grads(windowed_loss, params))


def test_token_ids_equal_one_hot_inputs():
    params, x, targets, h0 = make_case(3, I=7, T=5, output="sigmoid")
    one_hot = np.eye(7)[x]
    kw = dict(activation="sigmoid", output="sigmoid", truncate=2, h0=h0)
    loss_t, grads_t, last_t = reference.general_bptt(params, x, targets, **kw)
    loss_d, grads_d, last_d = reference.general_bptt(params, one_hot, targets, **kw)
    assert loss_t == pytest.approx(loss_d, rel=1e-14)
    np.testing.assert_allclose(last_t, last_d, rtol=0, atol=1e-14)
    for key in grads_t:
        np.testing.assert_allclose(grads_t[key], grads_d[key], rtol=0, atol=1e-13)


def test_general_bptt_rejects_empty_sequence():
    params, _, _, _ = make_case(4)
    with pytest.raises(ValueError):
        reference.general_bptt(params, np.zeros(0, dtype=int), np.zeros(0, dtype=int))


@pytest.mark.parametrize("tokens", [True, False])
@pytest.mark.parametrize("with_h0", [True, False])
def test_batch_bptt_with_mask_sums_prefixes(tokens, with_h0):
    rng = np.random.default_rng(5)
    B, T, H, I, O = 4, 5, 3, 5, 4
    output = "softmax" if tokens else "tanh"
    params, _, _, _ = make_case(5, H=H, I=I, O=O, output=output)
    inputs = rng.integers(0, I, (B, T)) if tokens else rng.normal(0, 1, (B, T, I))
    targets = rng.integers(0, O, (B, T)) if tokens else rng.normal(0, 0.5, (B, T, O))
    h0 = rng.normal(0, 0.5, (B, H)) if with_h0 else None
    lengths = [5, 0, 3, 1]
    mask = (np.arange(T)[None, :] < np.array(lengths)[:, None]).astype(np.int8)
    kw = dict(activation="relu", output=output, truncate=1)

    loss, grads, last = reference.batch_bptt(params, inputs, targets, h0=h0, mask=mask, **kw)

    want_loss, want_grads = 0.0, {k: np.zeros_like(v) for k, v in params.items()}
    for b, L in enumerate(lengths):
        h0_b = None if h0 is None else h0[b]
        if L == 0:
            np.testing.assert_array_equal(last[b], np.zeros(H) if h0 is None else h0[b])
            continue
        loss_b, grads_b, last_b = reference.general_bptt(
            params, inputs[b, :L], targets[b, :L], h0=h0_b, **kw)
        want_loss += loss_b
        for k in want_grads:
            want_grads[k] += grads_b[k]
        np.testing.assert_array_equal(last[b], last_b)
    assert loss == pytest.approx(want_loss, rel=1e-14)
    for k in want_grads:
        np.testing.assert_allclose(grads[k], want_grads[k], rtol=0, atol=1e-14)

    # No mask means every sequence has all T steps.
    full = reference.batch_bptt(params, inputs, targets, h0=h0, **kw)
    all_ones = reference.batch_bptt(params, inputs, targets, h0=h0, mask=np.ones((B, T)), **kw)
    assert full[0] == all_ones[0]


def test_batch_bptt_rejects_mask_that_is_not_right_padded():
    params, _, _, _ = make_case(6)
    inputs = np.zeros((2, 3), dtype=int)
    mask = np.array([[1, 1, 1], [0, 1, 1]])
    with pytest.raises(ValueError):
        reference.batch_bptt(params, inputs, inputs, mask=mask)


# --------------------------------------------------------------------------- seed 001


def test_backward_gradient_matches_finite_differences():
    rng = np.random.default_rng(7)
    X = rng.integers(0, 2, (6, 8)).astype(float)
    t = X.sum(axis=1)  # the seed's task: count the ones
    wx, wRec = 1.3, 0.8
    eps = 1e-6

    def loss(wx, wRec):
        return reference.linear_loss(reference.linear_forward_states(X, wx, wRec)[:, -1], t)

    S = reference.linear_forward_states(X, wx, wRec)
    grad_out = reference.linear_output_gradient(S[:, -1], t)
    (wx_grad, wRec_grad), grad_over_time = reference.backward_gradient(X, S, grad_out, wRec)
    fd_wx = (loss(wx + eps, wRec) - loss(wx - eps, wRec)) / (2 * eps)
    fd_wRec = (loss(wx, wRec + eps) - loss(wx, wRec - eps)) / (2 * eps)
    assert wx_grad == pytest.approx(fd_wx, rel=1e-6)
    assert wRec_grad == pytest.approx(fd_wRec, rel=1e-6)
    # dS_T/dS_k = wRec^(T-k) in a linear recurrence.
    np.testing.assert_allclose(grad_over_time, grad_out[:, None] * wRec ** np.arange(8, -1, -1))


def test_linear_forward_counts_ones_with_unit_weights():
    X = np.array([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
    S = reference.linear_forward_states(X, 1.0, 1.0)
    np.testing.assert_array_equal(S[:, 0], 0.0)
    np.testing.assert_array_equal(S[:, -1], [3.0, 1.0])


# --------------------------------------------------------------------------- seed 003


def test_nested_recursion_matches_tensorflow_value():
    S, dS = reference.nested_recursion(2.0, 1.0, 4)
    assert dS == 12926834988414
    assert S == float(1045459 ** 2)  # 1 -> 9 -> 361 -> 522729 -> 1045459^2


@pytest.mark.parametrize("w, s0, steps", [(0.3, 0.5, 5), (-0.4, 1.2, 3), (0.1, 0.0, 2)])
def test_nested_recursion_matches_seed_sum_and_finite_differences(w, s0, steps):
    S, dS = reference.nested_recursion(w, s0, steps)
    # Seed 003: dS_t/dw = sum_i (prod_{k=i+1..t} dS_k/dS_{k-1}) * (partial dS_i/dw).
    states = [s0]
    for _ in range(steps):
        states.append((1 + w * states[-1]) ** 2)
    total = 0.0
    for i in range(1, steps + 1):
        chain = np.prod([2 * (1 + w * states[k - 1]) * w for k in range(i + 1, steps + 1)])
        total += chain * 2 * (1 + w * states[i - 1]) * states[i - 1]
    assert S == pytest.approx(states[-1], rel=1e-15)
    assert dS == pytest.approx(total, rel=1e-12)
    eps = 1e-6
    fd = (reference.nested_recursion(w + eps, s0, steps)[0]
          - reference.nested_recursion(w - eps, s0, steps)[0]) / (2 * eps)
    assert dS == pytest.approx(fd, rel=1e-6)
