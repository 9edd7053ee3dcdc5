"""GRU, LSTM and stacked layers against plain loops written from their equations, in float64."""
import numpy as np
import pytest
from conftest import host, per_layer, random_data, split_params

import gpurnn
from gpurnn import GRU, LSTM, ElmanRNN, StackedElmanRNN, make_model, model_spec
from gpurnn import gradcheck
from gpurnn.reference import gated as R
from gpurnn.engine.recurrences.activations import OUTPUTS
from gpurnn.engine.layers.stack import layer_name

TIGHT = 1e-9
MODELS = {"gru": GRU, "lstm": LSTM, "elman": StackedElmanRNN}


def rel_error(actual, expected):
    actual, expected = host(actual), np.asarray(expected)
    return np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-300)


def make_case(rng, device, cell="gru", *, tokens=True, output="softmax", bias=True, layers=1,
              embedding=None, batch=3, steps=6, sizes=(7, 4, 5), masked=False, with_h0=False,
              scale=0.6):
    """A float64 model with random O(1) parameters and matching random data (made on the host)."""
    I, H, O = sizes
    model = MODELS[cell](I, H, O, num_layers=layers, embedding_size=embedding, output=output,
                         bias=bias, dtype="float64", device=device, seed=int(rng.integers(1000)))
    for name in model.params:
        setattr(model, name, rng.normal(scale=scale, size=model.params[name].shape))
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
                        truncate=truncate, h0=per_layer(h0, model.cell_type, model.num_layers),
                        mask=mask, activation=getattr(model, "activation", "tanh"))


def assert_state_close(actual, expected_layers, cell, layers, tol=TIGHT):
    got = per_layer(actual, cell, layers)
    for g, e in zip(got, expected_layers):
        for a, b in zip(g if cell == "lstm" else (g,), e if cell == "lstm" else (e,)):
            assert rel_error(a, b) <= tol


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
    assert_state_close(result.last_hidden, last, model.cell_type, model.num_layers)


def random_configs(count, seed=11):
    rng = np.random.default_rng(seed)
    for k in range(count):
        steps = int(rng.integers(1, 16))
        tokens = bool(rng.integers(2))
        yield dict(cell=["gru", "lstm", "elman"][k % 3], tokens=tokens,
                   output=str(rng.choice(OUTPUTS)), bias=bool(rng.integers(2)),
                   layers=int(rng.choice([1, 1, 2, 3])),
                   embedding=int(rng.integers(2, 5)) if tokens and rng.integers(2) else None,
                   batch=int(rng.integers(1, 5)), steps=steps, masked=bool(rng.integers(2)),
                   with_h0=bool(rng.integers(2)),
                   truncate=[None, int(rng.integers(0, steps + 3))][int(rng.integers(2))],
                   sizes=(int(rng.integers(2, 7)), int(rng.integers(2, 5)), int(rng.integers(2, 5))))


@pytest.mark.parametrize("config", list(random_configs(36)), ids=lambda c: (
    f"{c['cell']}-L{c['layers']}-{'tok' if c['tokens'] else 'dense'}"
    f"{'-emb' if c['embedding'] else ''}-{c['output']}-T{c['steps']}-k{c['truncate']}"
    f"-B{c['batch']}{'-bias' if c['bias'] else ''}{'-mask' if c['masked'] else ''}"
    f"{'-h0' if c['with_h0'] else ''}"))
def test_engine_equals_reference_on_random_configs(config, device):
    config = dict(config)
    truncate = config.pop("truncate")
    rng = np.random.default_rng(config["steps"] * 37 + config["batch"])
    model, x, y, mask, h0 = make_case(rng, device, **config)
    assert_matches_reference(model, x, y, mask, h0, truncate)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("output", ["softmax", "sigmoid"])
@pytest.mark.parametrize("layers, embedding", [(1, None), (2, 3)])
def test_gradients_match_central_differences(cell, output, layers, embedding, device, rng):
    model, x, y, mask, h0 = make_case(rng, device, cell, tokens=True, output=output,
                                      layers=layers, embedding=embedding, masked=True,
                                      with_h0=True, batch=2, steps=4, sizes=(5, 3, 3))
    result = gradcheck(model, x, y, mask=mask, h0=h0, max_checks=None)
    assert result.ok, result.table()
    assert set(result.errors) == set(model.params)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_dense_inputs_without_bias_match_central_differences(cell, device, rng):
    model, x, y, _, _ = make_case(rng, device, cell, tokens=False, output="identity",
                                  bias=False, batch=2, steps=4, sizes=(3, 3, 2))
    result = gradcheck(model, x, y, max_checks=None, reduction="mean")
    assert result.ok, result.table()


@pytest.mark.parametrize("cell, layers", [("gru", 1), ("lstm", 1), ("lstm", 2), ("elman", 2)])
def test_truncate_at_or_beyond_length_is_full_bptt(cell, layers, device, rng):
    model, x, y, _, _ = make_case(rng, device, cell, layers=layers, steps=7)
    full = model.loss_and_grads(x, y, reduction="sum").grads
    for truncate in (6, 7, 50):
        windowed = model.loss_and_grads(x, y, truncate=truncate, reduction="sum").grads
        for name in full:
            assert rel_error(windowed[name], host(full[name])) <= TIGHT


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_truncation_changes_the_gradient(cell, device, rng):
    model, x, y, _, _ = make_case(rng, device, cell, steps=7)
    full = host(model.loss_and_grads(x, y, reduction="sum").grads["weight_hh"])
    cut = host(model.loss_and_grads(x, y, truncate=1, reduction="sum").grads["weight_hh"])
    assert rel_error(cut, full) > 1e-3


@pytest.mark.parametrize("cell, layers", [("gru", 1), ("lstm", 1), ("gru", 2), ("lstm", 2)])
def test_chunked_truncation_carries_the_state_and_stops_the_gradient(cell, layers, device, rng):
    """A stream fed in chunks: the states continue exactly (an LSTM's (h, c), every layer's);
    each chunk's gradient is the reference gradient of that chunk alone from the carried state."""
    model, x, y, _, _ = make_case(rng, device, cell, layers=layers, batch=2, steps=12)
    whole = host(model.forward(x)[1])
    state = None
    for start in range(0, 12, 4):
        xs, ys = x[:, start:start + 4], y[:, start:start + 4]
        assert rel_error(model.forward(xs, h0=state)[1], whole[:, start:start + 4]) <= TIGHT
        result = model.loss_and_grads(xs, ys, h0=state, truncate=2, reduction="sum")
        _, layer_grads, _, last = reference(model, xs, ys, h0=state, truncate=2)
        for l, grads in enumerate(layer_grads):
            for name, value in grads.items():
                assert rel_error(result.grads[layer_name(name, l)], value) <= TIGHT
        assert_state_close(result.last_hidden, last, cell, layers)
        state = result.last_hidden
    top = state[0] if cell == "lstm" else state
    top = host(top) if layers == 1 else host(top)[-1]
    assert rel_error(top, whole[:, -1]) <= TIGHT


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_padded_steps_add_nothing(cell, device, rng):
    model, x, y, _, _ = make_case(rng, device, cell, batch=3, steps=6)
    mask = np.ones((3, 6))
    mask[1, 3:] = 0
    mask[2, 1:] = 0
    base = model.loss_and_grads(x, y, mask=mask, truncate=3, reduction="sum")
    x2, y2 = x.copy(), y.copy()
    x2[mask == 0] = (x2[mask == 0] + 1) % model.input_size
    y2[mask == 0] = (y2[mask == 0] + 2) % model.output_size
    other = model.loss_and_grads(x2, y2, mask=mask, truncate=3, reduction="sum")
    assert other.loss == pytest.approx(base.loss, rel=1e-12)
    for name in base.grads:
        assert rel_error(other.grads[name], host(base.grads[name])) <= TIGHT
    hidden = host(model.forward(x)[1])
    top = base.last_hidden[0] if cell == "lstm" else base.last_hidden
    assert rel_error(top, np.stack([hidden[0, 5], hidden[1, 2], hidden[2, 0]])) <= TIGHT


def test_fully_padded_sequence_keeps_the_lstm_pair(device, rng):
    model, x, y, _, _ = make_case(rng, device, "lstm", batch=2, steps=3)
    h0 = (rng.normal(size=(2, 4)), rng.normal(size=(2, 4)))
    result = model.loss_and_grads(x, y, mask=np.array([[1, 1, 0], [0, 0, 0]]), h0=h0, reduction="sum")
    assert rel_error(result.last_hidden[0][1], h0[0][1]) <= TIGHT
    assert rel_error(result.last_hidden[1][1], h0[1][1]) <= TIGHT


@pytest.mark.parametrize("cell, layers", [("gru", 1), ("lstm", 1), ("lstm", 3)])
def test_forward_matches_reference_and_returns_the_state(cell, layers, device, rng):
    model, x, _, _, h0 = make_case(rng, device, cell, layers=layers, output="tanh",
                                   tokens=False, with_h0=True)
    outputs, hidden, last = model.forward(x, h0=h0, return_state=True)
    assert outputs.shape == (3, 6, 5) and hidden.shape == (3, 6, 4)
    layer_params, out = split_params(model)
    starts = per_layer(h0, cell, layers)
    for b in range(3):
        start = [(s[0][b], s[1][b]) if cell == "lstm" else s[b] for s in starts]
        y, states, _ = R.forward(cell, layer_params, out, x[b], output="tanh", h0=start)
        assert rel_error(outputs[b], y) <= TIGHT
        top = [s[-1][0] if cell == "lstm" else s[-1] for s in states]
        assert rel_error(hidden[b], np.array(top)) <= TIGHT
    assert_state_close(last, per_layer(model.loss_and_grads(x, np.zeros((3, 6, 5)), h0=h0, reduction="sum")
                                       .last_hidden, cell, layers), cell, layers)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_cell_step_equals_the_batched_forward(cell, device, rng):
    """The per-step protocol hook ``step`` gives the states of the fused time loop."""
    model, x, _, _, _ = make_case(rng, device, cell, tokens=False, steps=5)
    xp = gpurnn.get_device(device).xp
    x_tm = xp.asarray(np.ascontiguousarray(x.swapaxes(0, 1)))
    params = model.params
    width = model.cell.state_size(4)
    s = xp.asarray(rng.normal(size=(3, width)))
    xin = model.cell.project_inputs(params, x_tm)
    rows = [xin[t].copy() for t in range(5)]
    states = host(model.cell.forward(params, xin, s, 5))
    for t in range(5):
        s = model.cell.step(params, rows[t], s)
        assert rel_error(s, states[t]) <= TIGHT


def test_float32_agrees_with_float64(device, rng):
    for cell in ("gru", "lstm"):
        model, x, y, _, _ = make_case(rng, device, cell, steps=20, batch=4, layers=2, scale=0.4)
        r64 = model.loss_and_grads(x, y, truncate=4, reduction="sum")
        r32 = model.copy(dtype="float32").loss_and_grads(x, y, truncate=4, reduction="sum")
        assert r32.grads["weight_hh_l1"].dtype == np.float32
        assert r32.loss == pytest.approx(r64.loss, rel=1e-5)
        for name in r64.grads:
            assert rel_error(r32.grads[name], host(r64.grads[name])) <= 1e-4


def _flat_state(state):
    return [host(s).copy() for s in (state if isinstance(state, tuple) else (state,))]


@pytest.mark.parametrize("cell, layers, batch", [("lstm", 2, 3), ("lstm", 1, 1), ("gru", 2, 1),
                                                 ("gru", 1, 3)])
def test_results_survive_later_calls(cell, layers, batch, device, rng):
    """Scratch buffers are reused between calls; what a call returned must not change."""
    model, x, y, _, _ = make_case(rng, device, cell, layers=layers, batch=batch, steps=6)
    first = model.loss_and_grads(x, y, truncate=2, reduction="sum")
    kept = {k: host(v).copy() for k, v in first.grads.items()}
    kept_last = _flat_state(first.last_hidden)
    outputs = model.forward(x, return_state=True)
    kept_outputs = [host(a).copy() for a in outputs[:2]] + _flat_state(outputs[2])
    model.loss_and_grads((x[:, :3] + 1) % 7, y[:, :3], reduction="sum")
    model.forward(x[:1, :2], return_state=True)
    again = model.loss_and_grads(x, y, truncate=2, reduction="sum")
    for name, value in kept.items():
        assert np.array_equal(host(first.grads[name]), value)
        assert np.array_equal(host(again.grads[name]), value)
    for a, b in zip(_flat_state(first.last_hidden), kept_last):
        assert np.array_equal(a, b)
    for a, b in zip([host(a) for a in outputs[:2]] + _flat_state(outputs[2]), kept_outputs):
        assert np.array_equal(a, b)


# --------------------------------------------------------------------- models, factory


def test_one_layer_elman_stack_is_the_seeds_model(device, rng):
    stacked = StackedElmanRNN(6, 4, 5, dtype="float64", device=device, seed=3)
    plain = ElmanRNN(6, 4, 5, dtype="float64", device=device, seed=3)
    assert set(stacked.params) == set(plain.params)
    for name in plain.params:
        assert np.array_equal(host(stacked.params[name]), host(plain.params[name]))
    x, y = rng.integers(0, 6, (2, 5)), rng.integers(0, 5, (2, 5))
    a, b = stacked.loss_and_grads(x, y, truncate=2, reduction="sum"), plain.loss_and_grads(x, y, truncate=2, reduction="sum")
    assert a.loss == pytest.approx(b.loss, rel=1e-12)
    for name in plain.params:
        assert rel_error(a.grads[name], host(b.grads[name])) <= TIGHT


def test_parameter_names_and_shapes():
    model = LSTM(10, 4, 6, num_layers=2, embedding_size=3)
    assert {k: v.shape for k, v in model.params.items()} == {
        "E": (10, 3), "weight_ih": (16, 3), "weight_hh": (16, 4), "bias_ih": (16,),
        "bias_hh": (16,), "weight_ih_l1": (16, 4), "weight_hh_l1": (16, 4),
        "bias_ih_l1": (16,), "bias_hh_l1": (16,), "V": (6, 4), "c": (6,)}
    assert set(GRU(5, 2, 3, bias=False).params) == {"weight_ih", "weight_hh", "V"}
    assert model.weight_hh_l1 is model.params["weight_hh_l1"]
    with pytest.raises(AttributeError, match="bias=False"):
        GRU(5, 2, 3, bias=False).bias_ih = np.zeros(6)


@pytest.mark.parametrize("cell", ["elman", "gru", "lstm"])
def test_make_model_and_spec_round_trip(cell):
    model = make_model(cell, 7, 4, 5, num_layers=2, embedding_size=3, output="sigmoid",
                       dtype="float64", seed=5)
    spec = model_spec(model)
    assert spec["cell"] == cell and spec["num_layers"] == 2 and spec["embedding_size"] == 3
    clone = make_model(**spec, seed=5)
    assert type(clone) is type(model)
    for name in model.params:
        assert np.array_equal(host(clone.params[name]), host(model.params[name]))
    copy = model.copy(dtype="float32")
    assert copy.config == {**model.config, "dtype": "float32"}
    assert repr(model).startswith(type(model).__name__ + "(7, 4, 5,")


def test_make_model_gives_the_seeds_elman_for_one_plain_layer():
    assert type(make_model("elman", 5, 3, 5, activation="relu")) is ElmanRNN
    assert type(make_model("elman", 5, 3, 5, num_layers=2)) is StackedElmanRNN
    assert model_spec(ElmanRNN(5, 3, 5))["cell"] == "elman"


@pytest.mark.parametrize("call, error, message", [
    (lambda: make_model("rnn", 5, 3, 5), ValueError, "unknown cell 'rnn'; expected one of elman, gru, lstm"),
    (lambda: make_model("gru", 5, 3, 5, activation="relu"), ValueError, "elman cell only"),
    (lambda: GRU(5, 3, 5, num_layers=0), ValueError, "num_layers must be a positive int"),
    (lambda: LSTM(5, 3, 5, num_layers=1.5), TypeError, "num_layers must be a positive int"),
    (lambda: GRU(5, 3, 5, embedding_size=-2), ValueError, "embedding_size must be a positive int"),
    (lambda: GRU(5, 0, 5), ValueError, "hidden_size must be a positive int"),
    (lambda: LSTM(5, 3, 5, output="relu"), ValueError, "unknown output 'relu'"),
    (lambda: model_spec(object()), TypeError, "model_spec takes"),
])
def test_bad_constructor_arguments(call, error, message):
    with pytest.raises(error, match=message):
        call()


BAD_INPUTS = [  # (name, inputs, targets, extra keywords); batch 2, time 3, sizes (5, 3, 4)
    ("ids out of range", np.array([[0, 1, 5], [0, 0, 0]]), None, {}),
    ("negative ids", np.array([[0, -1, 2], [0, 0, 0]]), None, {}),
    ("float ids", np.zeros((2, 3)), None, {}),
    ("booleans", np.zeros((2, 3), dtype=bool), None, {}),
    ("rank 1", np.zeros(3, dtype=int), None, {}),
    ("wrong features", np.zeros((2, 3, 4)), None, {}),
    ("nan inputs", np.full((2, 3, 5), np.nan), None, {}),
    ("no steps", np.zeros((2, 0), dtype=int), None, {}),
    ("targets shape", None, np.zeros((2, 2), dtype=int), {}),
    ("targets ids", None, np.full((2, 3), 4), {}),
    ("float targets", None, np.zeros((2, 3)), {}),
    ("mask shape", None, None, {"mask": np.ones((2, 2))}),
    ("mask values", None, None, {"mask": np.full((2, 3), 0.5)}),
    ("mask left padded", None, None, {"mask": np.array([[0, 1, 1], [1, 1, 1]])}),
    ("truncate negative", None, None, {"truncate": -1}),
    ("truncate float", None, None, {"truncate": 1.5}),
    ("reduction", None, None, {"reduction": "max"}),
]


def _raised(model, inputs, targets, kwargs):
    with pytest.raises((ValueError, TypeError)) as info:
        model.loss_and_grads(inputs, targets, **kwargs)
    return info.type, str(info.value)


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs_raise_the_elman_errors(case):
    _, inputs, targets, kwargs = case
    inputs = np.zeros((2, 3), dtype=int) if inputs is None else inputs
    targets = np.zeros((2, 3), dtype=int) if targets is None else targets
    expected = _raised(ElmanRNN(5, 3, 4), inputs, targets, kwargs)
    for model in (GRU(5, 3, 4), LSTM(5, 3, 4), GRU(5, 3, 4, num_layers=2)):
        assert _raised(model, inputs, targets, kwargs) == expected


def test_bad_initial_states():
    x, y = np.zeros((2, 3), dtype=int), np.zeros((2, 3), dtype=int)
    elman = _raised(ElmanRNN(5, 3, 4), x, y, {"h0": np.zeros((3, 3))})
    assert _raised(GRU(5, 3, 4), x, y, {"h0": np.zeros((3, 3))}) == elman
    assert _raised(GRU(5, 3, 4), x, y, {"h0": np.full((2, 3), np.inf)})[1] == "h0 contains NaN or Inf"
    with pytest.raises(ValueError, match=r"\(num_layers, batch, hidden\) = \(2, 2, 3\)"):
        GRU(5, 3, 4, num_layers=2).loss_and_grads(x, y, h0=np.zeros((2, 3)), reduction="sum")
    with pytest.raises(TypeError, match=r"pair \(h, c\)"):
        LSTM(5, 3, 4).loss_and_grads(x, y, h0=np.zeros((2, 3)), reduction="sum")
    with pytest.raises(ValueError, match=r"h0\[1\] \(c\) must have shape"):
        LSTM(5, 3, 4).loss_and_grads(x, y, h0=(np.zeros((2, 3)), np.zeros((2, 4))), reduction="sum")
    with pytest.raises(ValueError, match="token ids"):
        GRU(5, 3, 4, embedding_size=2).loss_and_grads(np.zeros((2, 3, 5)), y, reduction="sum")


# --------------------------------------------------------------------- PyTorch


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
@pytest.mark.parametrize("embedded", [False, True])
def test_weights_move_to_and_from_torch(kind, embedded, rng):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    rnn = getattr(torch.nn, kind)(3, 4, num_layers=2, batch_first=True, dtype=torch.float64)
    linear = torch.nn.Linear(4, 5, dtype=torch.float64)
    embedding = torch.nn.Embedding(6, 3, dtype=torch.float64) if embedded else None
    model = getattr(gpurnn, kind).from_torch(rnn, linear, embedding)
    assert model.dtype == np.float64 and model.num_layers == 2
    if embedded:
        x = rng.integers(0, 6, (2, 7))
        xt = embedding(torch.as_tensor(x))
    else:
        x = rng.normal(size=(2, 7, 3))
        xt = torch.as_tensor(x)
    y = rng.integers(0, 5, (2, 7))
    seq, last = rnn(xt)
    logits = linear(seq)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 5), torch.as_tensor(y).reshape(-1),
                                             reduction="sum")
    loss.backward()
    result = model.loss_and_grads(x, y, reduction="sum")
    assert result.loss == pytest.approx(loss.item(), rel=1e-12)
    torch_grads = {"V": linear.weight.grad, "c": linear.bias.grad}
    for l in range(2):
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            torch_grads[layer_name(name, l)] = getattr(rnn, f"{name}_l{l}").grad
    if embedded:
        torch_grads["E"] = embedding.weight.grad
    assert set(torch_grads) == set(result.grads)
    for name, grad in torch_grads.items():
        assert rel_error(result.grads[name], grad.numpy()) <= 1e-12, name
    outputs, hidden = model.forward(x)
    assert rel_error(outputs, torch.softmax(logits, -1).detach().numpy()) <= 1e-12
    state = result.last_hidden
    if kind == "LSTM":
        assert rel_error(state[0], last[0].detach().numpy()) <= 1e-12
        assert rel_error(state[1], last[1].detach().numpy()) <= 1e-12
    else:
        assert rel_error(state, last.detach().numpy()) <= 1e-12
    back = model.to_torch()
    for a, b in zip(back.rnn.parameters(), rnn.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(back.linear.weight, linear.weight)
    assert (back.embedding is None) == (not embedded)


def test_torch_conversion_errors():
    torch = pytest.importorskip("torch")
    linear = torch.nn.Linear(4, 2)
    with pytest.raises(ValueError, match=r"in_features = 2 · hidden_size \(8\)"):
        gpurnn.GRU.from_torch(torch.nn.GRU(3, 4, bidirectional=True), linear)
    with pytest.raises(TypeError, match="GRU.from_torch needs a torch.nn.GRU, got RNN"):
        gpurnn.GRU.from_torch(torch.nn.RNN(3, 4), linear)
    with pytest.raises(TypeError, match="needs a torch.nn.GRU"):
        gpurnn.GRU.from_torch(torch.nn.LSTM(3, 4), linear)
    with pytest.raises(ValueError, match="agree"):
        gpurnn.LSTM.from_torch(torch.nn.LSTM(3, 4, bias=False), linear)
    model = gpurnn.GRU(5, 4, 2, bias=False)
    modules = model.to_torch()
    assert modules.rnn.bias is False and modules.linear.bias is None
    assert modules.rnn.weight_ih_l0.dtype == torch.float32


@pytest.mark.parametrize("truncate", [None, 2])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_sweep_gate_gradients_equal_the_recomputed_ones(cell, layers, truncate, monkeypatch,
                                                        rng):
    """param_grads takes the gate gradients the backward sweep collected; recomputing them
    from the deltas (the plain path) gives the same gradients, float64, to rounding."""
    from gpurnn.engine.recurrences import gated

    model, x, y, mask, h0 = make_case(rng, "cpu", cell, layers=layers, masked=True,
                                      with_h0=True, steps=7)
    fast = model.loss_and_grads(x, y, mask=mask, h0=h0, truncate=truncate, reduction="sum")
    monkeypatch.setattr(gated.GateCache, "swept_complete", lambda self, steps: False)
    plain = model.loss_and_grads(x, y, mask=mask, h0=h0, truncate=truncate, reduction="sum")
    assert fast.loss == plain.loss
    for name, grad in plain.grads.items():
        assert rel_error(fast.grads[name], grad) <= 1e-13, name
