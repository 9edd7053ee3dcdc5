"""Layer-normalised GRU and LSTM cells against plain loops written from their equations,
central differences and torch autograd, in float64; their models, checkpoints and training."""
import numpy as np
import pytest
from conftest import host, per_layer, random_data, split_params

import gpurnn
from gpurnn import GRU, LSTM, gradcheck, make_model, model_spec
from gpurnn.engine.layers.stack import layer_name
from gpurnn.reference import layer_norm as R

TIGHT = 1e-12
MODELS = {"gru": GRU, "lstm": LSTM}


def rel_error(actual, expected):
    actual, expected = host(actual), np.asarray(expected)
    return np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-300)


def make_case(rng, device, cell, *, tokens=True, output="softmax", bias=True, layers=1,
              embedding=None, batch=3, steps=5, sizes=(5, 3, 4), masked=False, with_h0=False):
    """A float64 layer-norm model with random O(1) parameters (gains and shifts included)
    and matching random data."""
    I, H, O = sizes
    model = MODELS[cell](I, H, O, num_layers=layers, embedding_size=embedding, output=output,
                         bias=bias, layer_norm=True, dtype="float64", device=device)
    for name in model.params:
        setattr(model, name, rng.normal(scale=0.6, size=model.params[name].shape))
    x, y, mask = random_data(rng, I, O, batch, steps, tokens=tokens, output=output,
                             masked=masked)
    h0 = None
    if with_h0:
        shape = (batch, H) if layers == 1 else (layers, batch, H)
        h0 = rng.normal(size=shape)
        if cell == "lstm":
            h0 = (h0, rng.normal(size=shape))
    return model, x, y, mask, h0


def reference(model, x, y, mask=None, h0=None, truncate=None):
    layers, out = split_params(model)
    return R.batch_bptt(model.cell_type, layers, out, x, y, output=model.output,
                        truncate=truncate, mask=mask,
                        h0=per_layer(h0, model.cell_type, model.num_layers))


def assert_matches_reference(model, x, y, mask=None, h0=None, truncate=None):
    result = model.loss_and_grads(x, y, truncate=truncate, mask=mask, h0=h0, reduction="sum")
    loss, layer_grads, out_grads, last = reference(model, x, y, mask, h0, truncate)
    assert abs(result.loss - loss) <= TIGHT * abs(loss)
    expected = dict(out_grads)
    for l, grads in enumerate(layer_grads):
        expected.update({layer_name(n, l): g for n, g in grads.items()})
    assert set(result.grads) == set(expected) == set(model.params)
    for name, value in expected.items():
        assert rel_error(result.grads[name], value) <= TIGHT, name
    cell = model.cell_type
    for got, want in zip(per_layer(result.last_hidden, cell, model.num_layers), last):
        for a, b in zip(*((got, want) if cell == "lstm" else ((got,), (want,)))):
            assert rel_error(a, b) <= TIGHT


CONFIGS = {  # name: make_case keywords and truncate
    "one-layer": dict(),
    "truncated": dict(truncate=2, steps=6),
    "window-of-one-dense-no-bias": dict(tokens=False, bias=False, truncate=1, output="identity"),
    "masked-h0": dict(masked=True, with_h0=True, truncate=3),
    "two-layers": dict(layers=2, output="sigmoid", tokens=False),
    "two-layers-embedding-masked": dict(layers=2, embedding=3, masked=True, with_h0=True,
                                        truncate=2, steps=6),
}


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_engine_equals_the_reference(cell, name, device, rng):
    config = dict(CONFIGS[name])
    truncate = config.pop("truncate", None)
    model, x, y, mask, h0 = make_case(rng, device, cell, **config)
    assert_matches_reference(model, x, y, mask, h0, truncate)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("layers, embedding", [(1, None), (2, 3)])
def test_gradients_match_central_differences(cell, layers, embedding, rng):
    model, x, y, mask, h0 = make_case(rng, "cpu", cell, layers=layers, embedding=embedding,
                                      masked=True, with_h0=True, batch=2, steps=4)
    result = gradcheck(model, x, y, mask=mask, h0=h0, max_checks=None)
    assert result.ok, result.table()
    assert set(result.errors) == set(model.params)


def _torch_loss(torch, model, x, y):
    """The model's summed cross-entropy written with torch operations from the module
    docstring's equations (torch has no layer-normalised GRU or LSTM module)."""
    F = torch.nn.functional
    p = {name: torch.tensor(host(value), requires_grad=True) for name, value in model.params.items()}
    H, L = model.hidden_size, model.num_layers
    B, T = x.shape[:2]

    def norm(u, gain, shift):
        return F.layer_norm(u, u.shape[-1:], gain, shift, eps=1e-5)

    inputs = torch.tensor(x, dtype=torch.float64)
    for l in range(L):
        q = {n: p[layer_name(n, l)] for n in model._layer_names}
        a = norm(inputs @ q["weight_ih"].T, q["ln_ih_weight"], q["bias_ih"])   # (B, T, G·H)
        h, c, hs = torch.zeros(B, H, dtype=torch.float64), torch.zeros(B, H, dtype=torch.float64), []
        for t in range(T):
            b = norm(h @ q["weight_hh"].T, q["ln_hh_weight"], q["bias_hh"])
            if model.cell_type == "gru":
                r = torch.sigmoid(a[:, t, :H] + b[:, :H])
                z = torch.sigmoid(a[:, t, H:2 * H] + b[:, H:2 * H])
                n = torch.tanh(a[:, t, 2 * H:] + r * b[:, 2 * H:])
                h = (1 - z) * n + z * h
            else:
                i, f, g, o = (a[:, t] + b).chunk(4, dim=-1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(norm(c, q["ln_c_weight"], q["ln_c_bias"]))
            hs.append(h)
        inputs = torch.stack(hs, dim=1)
    logits = inputs @ p["V"].T + p["c"]
    loss = F.cross_entropy(logits.reshape(B * T, -1), torch.as_tensor(y).reshape(-1),
                           reduction="sum")
    loss.backward()
    return loss.item(), {name: tensor.grad.numpy() for name, tensor in p.items()}


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_equals_torch_autograd_of_the_same_equations(cell, rng):
    torch = pytest.importorskip("torch")
    model, x, y, _, _ = make_case(rng, "cpu", cell, tokens=False, layers=2, steps=6)
    loss, grads = _torch_loss(torch, model, x, y)
    result = model.loss_and_grads(x, y, reduction="sum")
    assert result.loss == pytest.approx(loss, rel=1e-12)
    assert set(grads) == set(result.grads)
    for name, grad in grads.items():
        assert rel_error(result.grads[name], grad) <= 1e-12, name


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_chunked_streams_carry_the_state(cell, device, rng):
    """Chunks fed with the last chunk's state continue the whole sequence's states exactly,
    and each chunk's gradients are the reference's from the carried state."""
    model, x, y, _, _ = make_case(rng, device, cell, layers=2, batch=2, steps=9)
    whole = host(model.forward(x)[1])
    state = None
    for start in range(0, 9, 3):
        xs, ys = x[:, start:start + 3], y[:, start:start + 3]
        assert rel_error(model.forward(xs, h0=state)[1], whole[:, start:start + 3]) <= TIGHT
        assert_matches_reference(model, xs, ys, h0=state, truncate=1)
        state = model.loss_and_grads(xs, ys, h0=state, reduction="sum").last_hidden


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_cell_step_equals_the_batched_forward(cell, device, rng):
    model, x, _, _, _ = make_case(rng, device, cell, tokens=False, steps=4)
    xp = gpurnn.get_device(device).xp
    params = model.params
    s = xp.asarray(rng.normal(size=(3, model.cell.state_size(3))))
    xin = model.cell.project_inputs(params, xp.asarray(np.ascontiguousarray(x.swapaxes(0, 1))))
    rows = [xin[t].copy() for t in range(4)]
    states = host(model.cell.forward(params, xin, s, 4))
    for t in range(4):
        s = model.cell.step(params, rows[t], s)
        assert rel_error(s, states[t]) <= TIGHT


def test_float32_agrees_with_float64(rng):
    for cell in ("gru", "lstm"):
        model, x, y, _, _ = make_case(rng, "cpu", cell, layers=2, steps=12, batch=4)
        r64 = model.loss_and_grads(x, y, truncate=4, reduction="sum")
        r32 = model.copy(dtype="float32").loss_and_grads(x, y, truncate=4, reduction="sum")
        assert r32.grads["ln_hh_weight_l1"].dtype == np.float32
        assert r32.loss == pytest.approx(r64.loss, rel=1e-5)
        for name in r64.grads:
            assert rel_error(r32.grads[name], r64.grads[name]) <= 1e-4, name


def test_a_fused_plan_runs_the_plain_path(rng):
    model, x, y, _, _ = make_case(rng, "cpu", "lstm", layers=2)
    plain = model.loss_and_grads(x, y, truncate=2, reduction="sum")
    model.plan = model.plan.replace(kernels="fused")
    fused = model.loss_and_grads(x, y, truncate=2, reduction="sum")
    for name, grad in plain.grads.items():
        assert np.array_equal(host(fused.grads[name]), host(grad)), name


# --------------------------------------------------------------------- models


def test_parameters_names_shapes_and_initial_values():
    model = LSTM(10, 4, 6, num_layers=2, embedding_size=3, layer_norm=True, dtype="float64")
    shapes = {k: v.shape for k, v in model.params.items()}
    assert shapes == {
        "E": (10, 3), "weight_ih": (16, 3), "weight_hh": (16, 4), "ln_ih_weight": (16,),
        "ln_hh_weight": (16,), "ln_c_weight": (4,), "bias_ih": (16,), "bias_hh": (16,),
        "ln_c_bias": (4,), **{layer_name(n, 1): shapes[n] for n in (
            "weight_hh", "ln_ih_weight", "ln_hh_weight", "ln_c_weight", "bias_ih", "bias_hh",
            "ln_c_bias")}, "weight_ih_l1": (16, 4), "V": (6, 4), "c": (6,)}
    for name, value in model.params.items():
        if name.startswith("ln_") and "_weight" in name:
            assert np.all(host(value) == 1), name
        if name.startswith(("bias_", "ln_c_bias")):
            assert np.all(host(value) == 0), name
    assert set(GRU(5, 2, 3, bias=False, layer_norm=True).params) == {
        "weight_ih", "weight_hh", "ln_ih_weight", "ln_hh_weight", "V"}
    with pytest.raises(AttributeError, match="bias=False"):
        LSTM(5, 2, 3, bias=False, layer_norm=True).ln_c_bias = np.zeros(2)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_layer_norm_false_is_the_plain_model(cell, rng):
    plain = MODELS[cell](6, 3, 4, num_layers=2, dtype="float64", seed=4)
    same = make_model(cell, 6, 3, 4, num_layers=2, layer_norm=False, dtype="float64", seed=4)
    assert type(same.cell) is type(plain.cell) and "layer_norm" not in same.config
    assert set(same.params) == set(plain.params)
    x, y = rng.integers(0, 6, (2, 5)), rng.integers(0, 4, (2, 5))
    a, b = plain.loss_and_grads(x, y), same.loss_and_grads(x, y)
    assert a.loss == b.loss
    for name in plain.params:
        assert np.array_equal(host(plain.params[name]), host(same.params[name]))
        assert np.array_equal(host(a.grads[name]), host(b.grads[name]))


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_spec_copy_and_checkpoint_rebuild_the_model(cell, tmp_path, rng):
    model, x, y, _, _ = make_case(rng, "cpu", cell, layers=2, embedding=3)
    spec = model_spec(model)
    assert spec["layer_norm"] is True and "layer_norm=True" in repr(model)
    clone = make_model(**spec)
    assert type(clone.cell.cells[0]) is type(model.cell.cells[0])
    assert model.copy().loss_and_grads(x, y).loss == model.loss_and_grads(x, y).loss
    gpurnn.save(tmp_path / "ln.npz", model)
    loaded = gpurnn.load(tmp_path / "ln.npz").model
    assert loaded.config == model.config
    for name in model.params:
        assert np.array_equal(host(loaded.params[name]), host(model.params[name]))
    assert loaded.loss_and_grads(x, y).loss == model.loss_and_grads(x, y).loss


def test_what_has_no_layer_norm_is_refused():
    with pytest.raises(ValueError, match="gru and lstm cells only, not elman"):
        make_model("elman", 5, 3, 5, layer_norm=True)
    assert type(make_model("elman", 5, 3, 5, layer_norm=False)) is gpurnn.ElmanRNN
    with pytest.raises(TypeError, match="layer_norm must be True or False"):
        GRU(5, 3, 5, layer_norm=1)
    pytest.importorskip("torch")
    with pytest.raises(ValueError, match="no torch counterpart"):
        LSTM(5, 3, 5, layer_norm=True).to_torch()


def test_diagnostics_see_the_gates(rng):
    from gpurnn.tools.diagnostics import saturation
    model, x, _, _, _ = make_case(rng, "cpu", "lstm", layers=2)
    assert {"layer 1 tanh(LN(c))", "layer 0 f"} <= set(saturation(model, x))


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_training_lowers_the_loss(cell):
    """Thirty Adam steps on a short repeating token sequence."""
    model = make_model(cell, 6, 8, 6, layer_norm=True, seed=0)
    x = np.tile(np.arange(6), (4, 2))[:, :10]
    y = np.roll(x, -1, axis=1)
    optimizer = gpurnn.Adam(lr=0.05)
    losses = []
    for _ in range(30):
        result = model.loss_and_grads(x, y)
        optimizer.step(model.params, result.grads)
        losses.append(result.loss)
    assert losses[-1] < 0.5 * losses[0]
