"""The batched engine against the seeds' plain loops (gpurnn.reference), in float64."""
import numpy as np
import pytest
from conftest import host

import gpurnn
from gpurnn import Cell, ElmanRNN, reference
from gpurnn.engine.sweeps import bptt
from gpurnn import gradcheck
from gpurnn.engine.recurrences.activations import ACTIVATIONS, OUTPUTS

TIGHT = 1e-9  # max relative error allowed between engine and reference in float64


def rel_error(actual, expected):
    actual, expected = host(actual), np.asarray(expected)
    scale = max(np.abs(expected).max(), 1e-300)
    return np.abs(actual - expected).max() / scale


def make_case(rng, device, *, tokens=True, activation="tanh", output="softmax", bias=True,
              batch=3, steps=6, sizes=(7, 5, 4), masked=False, with_h0=False):
    """A float64 model with random O(1) parameters and matching random data (made on the host)."""
    I, H, O = sizes
    model = ElmanRNN(I, H, O, activation=activation, output=output, bias=bias,
                     dtype="float64", device=device, seed=int(rng.integers(1000)))
    for name in model.params:
        setattr(model, name, rng.normal(scale=0.6, size=model.params[name].shape))
    x = rng.integers(0, I, (batch, steps)) if tokens else rng.normal(size=(batch, steps, I))
    y = rng.integers(0, O, (batch, steps)) if output == "softmax" else rng.normal(size=(batch, steps, O))
    mask = None
    if masked:
        lengths = rng.integers(0, steps + 1, batch)
        lengths[0] = steps  # at least one full row
        mask = (np.arange(steps)[None, :] < lengths[:, None]).astype(float)
    h0 = rng.normal(size=(batch, H)) if with_h0 else None
    return model, x, y, mask, h0


def host_params(model):
    return {name: host(value) for name, value in model.params.items()}


def assert_matches_reference(model, x, y, mask, h0, truncate, reduction="sum"):
    result = model.loss_and_grads(x, y, truncate=truncate, mask=mask, h0=h0,
                                  reduction=reduction)
    loss, grads, last = reference.batch_bptt(host_params(model), x, y,
                                             activation=model.activation, output=model.output,
                                             truncate=truncate, h0=h0, mask=mask)
    if reduction == "mean":
        count = mask.sum() if mask is not None else y.shape[0] * y.shape[1]
        loss, grads = loss / count, {k: v / count for k, v in grads.items()}
    assert set(result.grads) == set(grads)
    assert abs(result.loss - loss) <= TIGHT * abs(loss)
    for name in grads:
        assert rel_error(result.grads[name], grads[name]) <= TIGHT, name
    assert rel_error(result.last_hidden, last) <= TIGHT


def random_configs(count, seed=7):
    """Random engine configurations covering the grid of the engine's options."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        steps = int(rng.integers(1, 51))
        truncate = [None, int(rng.integers(0, steps + 4))][int(rng.integers(2))]
        yield dict(tokens=bool(rng.integers(2)), activation=str(rng.choice(ACTIVATIONS)),
                   output=str(rng.choice(OUTPUTS)), bias=bool(rng.integers(2)),
                   batch=int(rng.integers(1, 9)), steps=steps, masked=bool(rng.integers(2)),
                   with_h0=bool(rng.integers(2)), truncate=truncate,
                   sizes=(int(rng.integers(2, 8)), int(rng.integers(2, 6)),
                          int(rng.integers(2, 6))))


@pytest.mark.parametrize("config", list(random_configs(60)), ids=lambda c: (
    f"{'tok' if c['tokens'] else 'dense'}-{c['activation']}-{c['output']}-T{c['steps']}"
    f"-k{c['truncate']}-B{c['batch']}{'-bias' if c['bias'] else ''}"
    f"{'-mask' if c['masked'] else ''}{'-h0' if c['with_h0'] else ''}"))
def test_engine_equals_reference_on_random_configs(config, device):
    config = dict(config)
    truncate = config.pop("truncate")
    rng = np.random.default_rng(config["steps"] * 31 + config["batch"])
    model, x, y, mask, h0 = make_case(rng, device, **config)
    assert_matches_reference(model, x, y, mask, h0, truncate)


@pytest.mark.parametrize("truncate", [0, 1, 2, 4, 7, 100])
def test_engine_equals_the_tutorial_bptt_code(truncate, device, rng):
    """Seeds 000/002 verbatim: tanh, softmax, no biases, one sentence at a time, summed."""
    model, x, y, _, _ = make_case(rng, device, bias=False, batch=4, steps=8, sizes=(9, 6, 9))
    U, V, W = (host(model.U), host(model.V), host(model.W))
    expected = {"weight_ih": 0, "V": 0, "weight_hh": 0}
    for b in range(x.shape[0]):
        dU, dV, dW = reference.tutorial_bptt(U, V, W, x[b], y[b], truncate)
        expected["weight_ih"] += dU
        expected["V"] += dV
        expected["weight_hh"] += dW
    result = model.loss_and_grads(x, y, truncate=truncate, reduction="sum")
    for name in expected:
        assert rel_error(result.grads[name], expected[name]) <= TIGHT
    loss = sum(reference.tutorial_loss(U, V, W, x[b], y[b]) for b in range(x.shape[0]))
    assert abs(result.loss - loss) <= TIGHT * loss


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("output", OUTPUTS)
def test_gradients_match_central_differences(activation, output, device, rng):
    model, x, y, mask, h0 = make_case(rng, device, tokens=output != "identity",
                                      activation=activation, output=output, masked=True,
                                      with_h0=True, batch=3, steps=5)
    result = gradcheck(model, x, y, mask=mask, h0=h0, max_checks=None)
    assert result.ok, result.table()
    assert set(result.errors) == set(model.params)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_reductions(reduction, device, rng):
    model, x, y, mask, h0 = make_case(rng, device, masked=True, tokens=False, output="sigmoid")
    assert_matches_reference(model, x, y, mask, h0, truncate=2, reduction=reduction)


def test_truncate_at_or_beyond_length_is_full_bptt(device, rng):
    model, x, y, _, _ = make_case(rng, device, steps=7)
    full = model.loss_and_grads(x, y, reduction="sum").grads
    for truncate in (6, 7, 50):
        windowed = model.loss_and_grads(x, y, truncate=truncate, reduction="sum").grads
        for name in full:
            assert rel_error(windowed[name], host(full[name])) <= TIGHT


def test_truncation_changes_the_gradient(device, rng):
    """A shorter window really cuts paths (so the equality tests above can fail)."""
    model, x, y, _, _ = make_case(rng, device, steps=7)
    full = host(model.loss_and_grads(x, y, reduction="sum").grads["weight_hh"])
    cut = host(model.loss_and_grads(x, y, truncate=1, reduction="sum").grads["weight_hh"])
    assert rel_error(cut, full) > 1e-3


def test_chunked_truncation_carries_the_state_and_stops_the_gradient(device, rng):
    """A stream fed in chunks: states continue exactly; each chunk's gradient is the
    reference gradient of that chunk alone from the carried state."""
    model, x, y, _, _ = make_case(rng, device, batch=2, steps=12)
    whole_states = host(model.forward(x)[1])
    h, total = None, {name: 0 for name in model.params}
    for start in range(0, 12, 4):
        xs, ys = x[:, start:start + 4], y[:, start:start + 4]
        h_in = None if h is None else host(h)
        states = host(model.forward(xs, h0=h)[1])
        assert rel_error(states, whole_states[:, start:start + 4]) <= TIGHT
        result = model.loss_and_grads(xs, ys, h0=h, truncate=2, reduction="sum")
        _, grads, _ = reference.batch_bptt(host_params(model), xs, ys, truncate=2, h0=h_in)
        for name in grads:
            assert rel_error(result.grads[name], grads[name]) <= TIGHT
            total[name] = total[name] + host(result.grads[name])
        h = result.last_hidden
    assert rel_error(h, whole_states[:, -1]) <= TIGHT


def test_padded_steps_add_nothing(device, rng):
    model, x, y, _, _ = make_case(rng, device, batch=3, steps=6, masked=False)
    mask = np.ones((3, 6))
    mask[1, 3:] = 0
    mask[2, 1:] = 0
    base = model.loss_and_grads(x, y, mask=mask, truncate=3, reduction="sum")
    x2, y2 = x.copy(), y.copy()
    x2[mask == 0] = (x2[mask == 0] + 1) % model.input_size   # junk in the padding
    y2[mask == 0] = (y2[mask == 0] + 2) % model.output_size
    other = model.loss_and_grads(x2, y2, mask=mask, truncate=3, reduction="sum")
    assert other.loss == pytest.approx(base.loss, rel=1e-12)
    for name in base.grads:
        assert rel_error(other.grads[name], host(base.grads[name])) <= TIGHT
    states = host(model.forward(x)[1])
    expected_last = np.stack([states[0, 5], states[1, 2], states[2, 0]])
    assert rel_error(base.last_hidden, expected_last) <= TIGHT


def test_fully_padded_sequence_keeps_h0(device, rng):
    model, x, y, _, _ = make_case(rng, device, batch=2, steps=3)
    h0 = rng.normal(size=(2, model.hidden_size))
    mask = np.array([[1, 1, 0], [0, 0, 0]])
    result = model.loss_and_grads(x, y, mask=mask, h0=h0, reduction="sum")
    assert rel_error(result.last_hidden[1], h0[1]) <= TIGHT


def test_forward_matches_reference(device, rng):
    for output in OUTPUTS:
        model, x, _, _, h0 = make_case(rng, device, output=output, tokens=False, with_h0=True)
        outputs, hidden = model.forward(x, h0=h0)
        assert outputs.shape == (3, 6, 4) and hidden.shape == (3, 6, 5)
        for b in range(3):
            y, h = reference.general_forward(host_params(model), x[b], activation="tanh",
                                             output=output, h0=h0[b])
            assert rel_error(outputs[b], y) <= TIGHT
            assert rel_error(hidden[b], h) <= TIGHT


def test_float32_agrees_with_float64(device, rng):
    model, x, y, _, _ = make_case(rng, device, steps=20, batch=4)
    single = model.copy(dtype="float32")
    r64 = model.loss_and_grads(x, y, truncate=4, reduction="sum")
    r32 = single.loss_and_grads(x, y, truncate=4, reduction="sum")
    assert r32.grads["weight_hh"].dtype == np.float32
    assert r32.loss == pytest.approx(r64.loss, rel=1e-5)
    for name in r64.grads:
        assert rel_error(r32.grads[name], host(r64.grads[name])) <= 1e-4


class GenericElman(Cell):
    """The Elman recurrence written only through the per-step protocol (no batched hooks)."""

    def step(self, params, x_t, s_prev):
        xp = gpurnn.engine.arrays.backend.get_array_module(s_prev)
        return xp.tanh(params["weight_ih"].T[x_t] + s_prev @ params["weight_hh"].T)

    def vjp_state(self, params, x_t, s_prev, s_t, g):
        return (g * (1 - s_t ** 2)) @ params["weight_hh"]

    def vjp_params(self, params, x_t, s_prev, s_t, g):
        xp = gpurnn.engine.arrays.backend.get_array_module(s_prev)
        e = g * (1 - s_t ** 2)
        dUT = xp.zeros(params["weight_ih"].shape[::-1])
        gpurnn.engine.arrays.backend.scatter_add(dUT, x_t, e)
        return {"weight_ih": dUT.T, "weight_hh": e.T @ s_prev}


@pytest.mark.parametrize("truncate", [None, 0, 2, 5])
def test_custom_cell_protocol_equals_the_batched_cell(truncate, device, rng):
    """A user cell on the default per-step hooks gives the Elman cell's gradients."""
    model, x, _, _, h0 = make_case(rng, device, bias=False, with_h0=True, steps=7)
    params = {"weight_ih": model.U, "weight_hh": model.W}
    xp = gpurnn.engine.arrays.backend.get_device(device).xp
    x_tm, h0_dev = xp.asarray(x.T.copy()), xp.asarray(h0)
    dstates = xp.asarray(rng.normal(size=(7, 3, 5)))
    results = []
    for cell in (GenericElman(), gpurnn.ElmanCell("tanh", bias=False)):
        xin, states = bptt.forward(cell, params, x_tm, h0_dev, 7)
        grads = bptt.backward(cell, params, x_tm, xin, h0_dev, states, dstates, truncate)
        results.append((host(states), {k: host(v) for k, v in grads.items()}))
    assert rel_error(results[0][0], results[1][0]) <= TIGHT
    for name in ("weight_ih", "weight_hh"):
        assert rel_error(results[0][1][name], results[1][1][name]) <= TIGHT


@pytest.mark.parametrize("batch", [1, 3])
def test_returned_arrays_survive_the_next_call(batch, device, rng):
    """The engine reuses its scratch buffers; nothing it returns may alias them."""
    model, x, y, _, _ = make_case(rng, device, batch=batch, steps=5)
    outputs, hidden = model.forward(x)
    first = model.loss_and_grads(x, y, reduction="sum")
    kept = (host(outputs).copy(), host(hidden).copy(), host(first.last_hidden).copy(),
            {k: host(v).copy() for k, v in first.grads.items()})
    x2, y2 = (x + 1) % model.input_size, (y + 1) % model.output_size
    model.forward(x2)
    model.loss_and_grads(x2, y2, truncate=1, reduction="sum")
    assert np.array_equal(host(outputs), kept[0]) and np.array_equal(host(hidden), kept[1])
    assert np.array_equal(host(first.last_hidden), kept[2])
    for name, value in kept[3].items():
        assert np.array_equal(host(first.grads[name]), value)


def test_shorter_and_longer_calls_reuse_buffers_correctly(device, rng):
    """Sequence lengths that shrink and grow between calls give the same results as fresh."""
    model, x, y, _, _ = make_case(rng, device, batch=2, steps=9)
    fresh = [model.copy().loss_and_grads(x[:, :n], y[:, :n], truncate=2, reduction="sum") for n in (9, 3, 9)]
    for n, expected in zip((9, 3, 9), fresh):
        result = model.loss_and_grads(x[:, :n], y[:, :n], truncate=2, reduction="sum")
        assert result.loss == pytest.approx(expected.loss, rel=1e-12)
        for name in expected.grads:
            assert rel_error(result.grads[name], host(expected.grads[name])) <= TIGHT


@pytest.mark.parametrize("shape", [(40,), (40, 3), (300, 7)])
def test_scatter_add_accumulates_repeated_indices(shape, device, rng):
    xp = gpurnn.engine.arrays.backend.get_device(device).xp
    target = rng.normal(size=(9,) + shape[1:])
    indices = rng.integers(0, 9, shape[0])
    values = rng.normal(size=shape)
    expected = target.copy()
    np.add.at(expected, indices, values)
    result = xp.asarray(target)
    gpurnn.engine.arrays.backend.scatter_add(result, xp.asarray(indices), xp.asarray(values))
    np.testing.assert_allclose(host(result), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("output", OUTPUTS)
def test_loss_alone_equals_the_loss_of_loss_and_grads(output, device, rng):
    """The evaluation path: same loss as training's for a mask, any non-negative weights
    (not right-padded) as −Σ w log p from the forward probabilities, and the carried state."""
    model, x, y, mask, h0 = make_case(rng, device, output=output, masked=True, with_h0=True)
    assert model.loss(x, y, weights=mask, h0=h0, reduction="sum") == pytest.approx(
        model.loss_and_grads(x, y, mask=mask, h0=h0, reduction="sum").loss, rel=1e-12)
    weights = rng.random(mask.shape)
    outputs, _, last = model.forward(x, h0=h0, return_state=True)
    outputs = host(outputs)
    if output == "softmax":
        per_step = -np.log(np.take_along_axis(outputs, y[..., None], axis=2)[..., 0])
    else:
        per_step = 0.5 * ((outputs - y) ** 2).sum(axis=2)
    loss, state = model.loss(x, y, weights=weights, h0=h0, return_state=True, reduction="sum")
    assert loss == pytest.approx((per_step * weights).sum(), rel=1e-10)
    assert rel_error(state, host(last)) <= TIGHT
    with pytest.raises(ValueError, match="weights must be >= 0"):
        model.loss(x, y, weights=-weights, reduction="sum")


@pytest.mark.parametrize("bias,masked", [(True, True), (False, False)])
def test_blocked_and_threaded_softmax_equal_the_plain_path(bias, masked, monkeypatch, rng):
    """Many row blocks, and the blocks shared over host threads, give the one-block,
    one-thread result (float64, to rounding), which itself matches the seeds' loop."""
    from gpurnn.engine.arrays import host_threads
    from gpurnn.engine.models import losses

    model, x, y, mask, h0 = make_case(rng, "cpu", bias=bias, masked=masked, with_h0=True,
                                      batch=5, steps=9, sizes=(7, 5, 11))
    monkeypatch.setattr(host_threads, "HOST_THREADS", 1)
    plain = model.loss_and_grads(x, y, mask=mask, h0=h0, truncate=3, reduction="sum")
    assert_matches_reference(model, x, y, mask, h0, 3)
    monkeypatch.setattr(losses, "LOGIT_BLOCK_ELEMENTS", 4 * 11)   # 4 rows a block: 12 blocks
    for threads in (1, 2, 3):
        monkeypatch.setattr(host_threads, "HOST_THREADS", threads)
        if threads > 1 and host_threads.host_workers(np, 12) == 1:
            pytest.fail("the threaded path must run here")
        result = model.loss_and_grads(x, y, mask=mask, h0=h0, truncate=3, reduction="sum")
        assert result.loss == pytest.approx(plain.loss, rel=1e-13)
        for name, grad in plain.grads.items():
            assert rel_error(result.grads[name], grad) <= 1e-13, (threads, name)


def test_small_products_hold_blas_at_one_thread(monkeypatch):
    """Per-step products below SMALL_PRODUCT_FLOPS run on one BLAS thread; larger ones, and
    other array modules, keep BLAS as it is; GPURNN_HOST_THREADS=1 leaves the plain path."""
    from threadpoolctl import threadpool_info
    from gpurnn.engine.arrays import host_threads

    def blas_threads():
        return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

    before = blas_threads()
    with host_threads.small_products(np, host_threads.SMALL_PRODUCT_FLOPS - 1):
        assert blas_threads() and set(blas_threads()) == {1}
    assert blas_threads() == before
    with host_threads.small_products(np, host_threads.SMALL_PRODUCT_FLOPS):
        assert blas_threads() == before
    with host_threads.small_products(object(), 1):
        assert blas_threads() == before
    monkeypatch.setattr(host_threads, "HOST_THREADS", 1)
    assert host_threads.host_workers(np, 8) == 1
    monkeypatch.setenv("GPURNN_HOST_THREADS", "zero")
    with pytest.raises(ValueError, match="GPURNN_HOST_THREADS must be a positive integer"):
        host_threads._configured_threads()


def test_the_elman_sweep_holds_its_small_products_at_one_blas_thread_once(rng):
    """The sweep enters the stepper's loop context once: every step's product runs on one
    BLAS thread, and BLAS is as it was after the sweep."""
    from threadpoolctl import threadpool_info

    def blas_threads():
        return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}

    before = blas_threads()
    if not before or max(before) < 2:
        pytest.skip("BLAS already runs on one thread here")
    cell = gpurnn.ElmanCell("tanh", True)
    params = {"weight_hh": rng.normal(size=(6, 6)) * 0.3}
    states, dstates = np.tanh(rng.normal(size=(5, 3, 6))), rng.normal(size=(5, 3, 6))
    back = cell.backward_stepper(params, None, np.zeros((3, 6)), states)
    seen = []

    def spy(t, g):
        seen.append(blas_threads())
        return back(t, g)

    spy.loop_context = back.loop_context
    expected = gpurnn.bptt.sweep(back, dstates).copy()   # deltas live in the workspace
    got = gpurnn.bptt.sweep(spy, dstates)
    assert seen == [{1}] * 5
    assert blas_threads() == before
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("make", [lambda: gpurnn.ElmanRNN(6, 4, 6, dtype="float64"),
                                  lambda: gpurnn.GRU(6, 4, 6, dtype="float64"),
                                  lambda: gpurnn.LSTM(6, 4, 6, num_layers=2, dtype="float64")])
def test_calling_a_model_gives_logits_and_the_state_in_the_layout_asked(make, device, rng):
    model = make().copy(device=device)
    x = rng.integers(0, 6, (3, 5))
    logits, state = model(x)
    probabilities, hidden, last = model.forward(x, return_state=True)
    z = host(logits)
    softmax = np.exp(z - z.max(-1, keepdims=True))
    np.testing.assert_allclose(softmax / softmax.sum(-1, keepdims=True), host(probabilities),
                               rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(host(model.forward(x, logits=True)[0]), z)
    parts = state if isinstance(state, tuple) else (state,)
    layers = getattr(model, "num_layers", 1)
    torch_h0 = tuple(np.zeros((layers, 3, 4)) for _ in parts)
    _, torch_state = model(x, torch_h0 if len(parts) == 2 else torch_h0[0])
    torch_parts = torch_state if isinstance(torch_state, tuple) else (torch_state,)
    for mine, theirs in zip(parts, torch_parts):
        assert theirs.shape == (layers, 3, 4)
        np.testing.assert_array_equal(host(theirs).reshape(host(mine).shape), host(mine))


@pytest.mark.parametrize("blocked", [False, True])
def test_loss_reductions_equal_those_of_loss_and_grads(blocked, device, rng):
    """model.loss (evaluation, plain or one block at a time) against loss_and_grads."""
    model = ElmanRNN(7, 5, 7, dtype="float64", device=device, seed=2)
    if blocked:
        model.plan = model.plan.replace(checkpoint_every=2)
    x = rng.integers(0, 7, (3, 6))
    mask = np.ones((3, 6))
    mask[1, 4:] = 0
    mask[2, 1:] = 0
    for reduction in ("mean", "sum"):
        expected = model.loss_and_grads(x, x, mask=mask, reduction=reduction).loss
        got = model.loss(x, x, weights=mask, reduction=reduction)
        assert got == pytest.approx(expected, rel=1e-12)
    assert model.loss(x, x) == pytest.approx(model.loss_and_grads(x, x).loss, rel=1e-12)
