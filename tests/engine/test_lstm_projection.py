"""LSTM with proj_size (LSTMP): against PyTorch autograd and the reference loops, in float64."""
import numpy as np
import pytest
from conftest import host
from test_gated import assert_matches_reference, rel_error

import gpurnn
from gpurnn import LSTM, gradcheck, make_model, model_spec
from gpurnn.engine.gpu import fused
from gpurnn.engine.plan import Plan
from gpurnn.engine.layers.stack import layer_name

EXACT = 1e-12
I, H, P, O = 5, 4, 2, 3          # vocabulary (or features), hidden, projection, outputs


def make_lstm(rng, device="cpu", layers=1, embedding=None, scale=0.6, **kw):
    """A float64 projected LSTM with random O(1) parameters."""
    model = LSTM(I, H, O, num_layers=layers, embedding_size=embedding, proj_size=P,
                 dtype="float64", device=device, **kw)
    for name in model.params:
        setattr(model, name, rng.normal(scale=scale, size=model.params[name].shape))
    return model


def random_h0(rng, layers, batch):
    """(h, c) in PyTorch's layout, (layers, batch, P) and (layers, batch, H)."""
    return rng.normal(size=(layers, batch, P)), rng.normal(size=(layers, batch, H))


def torch_grads(torch_modules, layers):
    rnn, linear, embedding = torch_modules
    grads = {"V": linear.weight.grad, "c": linear.bias.grad}
    for l in range(layers):
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"):
            grads[layer_name(name, l)] = getattr(rnn, f"{name}_l{l}").grad
    if embedding is not None:
        grads["E"] = embedding.weight.grad
    return {name: grad.numpy() for name, grad in grads.items()}


def torch_inputs(torch, modules, x):
    """What the torch LSTM reads: embedding rows, one-hot rows for token ids, or x itself."""
    x = torch.as_tensor(x)
    if modules.embedding is not None:
        return modules.embedding(x)
    if not x.dtype.is_floating_point:
        return torch.nn.functional.one_hot(x, I).double()
    return x


def assert_grads_equal(result, expected, tol=EXACT):
    assert set(result.grads) == set(expected)
    for name, grad in expected.items():
        assert rel_error(result.grads[name], grad) <= tol, name


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("inputs, embedding", [("dense", None), ("tokens", None),
                                               ("tokens", 3)])
def test_equals_torch_autograd(layers, inputs, embedding, rng):
    torch = pytest.importorskip("torch")
    model = make_lstm(rng, layers=layers, embedding=embedding)
    modules = model.to_torch()
    assert modules.rnn.proj_size == P and modules.linear.in_features == P
    x = rng.normal(size=(3, 5, I)) if inputs == "dense" else rng.integers(0, I, (3, 5))
    y = rng.integers(0, O, (3, 5))
    h0 = random_h0(rng, layers, 3)
    seq, (h_n, c_n) = modules.rnn(torch_inputs(torch, modules, x),
                                  tuple(torch.as_tensor(s) for s in h0))
    logits = modules.linear(seq)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, O),
                                             torch.as_tensor(y).reshape(-1), reduction="sum")
    loss.backward()
    result = model.loss_and_grads(x, y, h0=h0 if layers > 1 else (h0[0][0], h0[1][0]),
                                  reduction="sum")
    assert abs(result.loss - loss.item()) <= EXACT * abs(loss.item())
    assert_grads_equal(result, torch_grads(modules, layers))
    out, (h, c) = model(x, h0)                       # PyTorch's layout in, PyTorch's out
    assert h.shape == (layers, 3, P) and c.shape == (layers, 3, H)
    assert rel_error(out, logits.detach().numpy()) <= EXACT
    assert rel_error(h, h_n.detach().numpy()) <= EXACT
    assert rel_error(c, c_n.detach().numpy()) <= EXACT
    assert rel_error(model.forward(x, h0)[0], torch.softmax(logits, -1).detach().numpy()) <= EXACT


def test_ragged_batches_equal_torch_packed_sequences(rng):
    torch = pytest.importorskip("torch")
    pack = torch.nn.utils.rnn
    model = make_lstm(rng, layers=2, embedding=3)
    modules = model.to_torch()
    lengths = [5, 2, 4]
    x, y = rng.integers(0, I, (3, 5)), rng.integers(0, O, (3, 5))
    mask = (np.arange(5)[None] < np.array(lengths)[:, None]).astype(float)
    h0 = random_h0(rng, 2, 3)
    packed = pack.pack_padded_sequence(torch_inputs(torch, modules, x), lengths,
                                       batch_first=True, enforce_sorted=False)
    seq, (h_n, c_n) = modules.rnn(packed, tuple(torch.as_tensor(s) for s in h0))
    seq, _ = pack.pad_packed_sequence(seq, batch_first=True, total_length=5)
    valid = torch.as_tensor(mask.reshape(-1) > 0)
    logits = modules.linear(seq).reshape(-1, O)[valid]
    loss = torch.nn.functional.cross_entropy(logits, torch.as_tensor(y).reshape(-1)[valid],
                                             reduction="sum")
    loss.backward()
    result = model.loss_and_grads(x, y, mask=mask, h0=h0, reduction="sum")
    assert abs(result.loss - loss.item()) <= EXACT * abs(loss.item())
    assert_grads_equal(result, torch_grads(modules, 2))
    assert rel_error(result.last_hidden[0], h_n.detach().numpy()) <= EXACT
    assert rel_error(result.last_hidden[1], c_n.detach().numpy()) <= EXACT


@pytest.mark.parametrize("embedded", [False, True])
def test_round_trip_through_torch(embedded, rng):
    torch = pytest.importorskip("torch")
    model = make_lstm(rng, layers=2, embedding=3 if embedded else None)
    modules = model.to_torch()
    for convert in (LSTM.from_torch, gpurnn.from_torch):
        back = convert(*modules)
        assert type(back) is LSTM and back.proj_size == P and back.config == model.config
        for name, value in model.params.items():
            assert np.array_equal(host(back.params[name]), host(value)), name
    torch.manual_seed(0)
    rnn = torch.nn.LSTM(3, H, proj_size=P, batch_first=True)
    again = LSTM.from_torch(rnn, torch.nn.Linear(P, O)).to_torch().rnn
    for a, b in zip(again.parameters(), rnn.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("truncate", [None, 0, 2])
@pytest.mark.parametrize("layers, embedding, tokens", [(1, None, False), (1, None, True),
                                                       (2, 3, True), (2, None, False)])
def test_engine_equals_the_reference_loops(layers, embedding, tokens, truncate, device, rng):
    model = make_lstm(rng, device, layers=layers, embedding=embedding)
    x = rng.integers(0, I, (3, 6)) if tokens else rng.normal(size=(3, 6, I))
    y = rng.integers(0, O, (3, 6))
    mask = (np.arange(6)[None] < np.array([6, 4, 0])[:, None]).astype(float)
    h0 = random_h0(rng, layers, 3)
    if layers == 1:
        h0 = (h0[0][0], h0[1][0])
    assert_matches_reference(model, x, y, mask, h0, truncate)
    assert_matches_reference(model, x, y, truncate=truncate)


@pytest.mark.parametrize("truncate", [None, 2])
def test_memory_budget_gives_the_same_gradients(truncate, device, rng):
    model = make_lstm(rng, device, layers=2, embedding=3)
    model.plan = Plan(block_steps=2)
    x, y = rng.integers(0, I, (2, 9)), rng.integers(0, O, (2, 9))
    expected = model.loss_and_grads(x, y, truncate=truncate, reduction="sum")
    budget = model.schedule(x, y, truncate=truncate).footprint.need(1, 1)
    assert model.schedule(x, y, truncate=truncate, memory_budget=budget).forwards > 5
    got = model.loss_and_grads(x, y, truncate=truncate, memory_budget=budget, reduction="sum")
    same = np.array_equal if device == "cpu" else (lambda a, b: rel_error(a, b) <= 1e-13)
    assert got.loss == pytest.approx(expected.loss, rel=1e-15)
    for name, grad in expected.grads.items():
        assert same(host(got.grads[name]), host(grad)), name


def test_chunks_carry_the_projected_state(rng):
    """Chunked truncation: last_hidden (h of width P, c of width H) continues the stream."""
    model = make_lstm(rng, layers=2)
    x, y = rng.normal(size=(2, 8, I)), rng.integers(0, O, (2, 8))
    whole = host(model.forward(x)[1])
    state = None
    for start in (0, 4):
        xs, ys = x[:, start:start + 4], y[:, start:start + 4]
        assert rel_error(model.forward(xs, h0=state)[1], whole[:, start:start + 4]) <= EXACT
        assert_matches_reference(model, xs, ys, h0=state, truncate=1)
        state = model.loss_and_grads(xs, ys, h0=state, truncate=1).last_hidden
        assert state[0].shape == (2, 2, P) and state[1].shape == (2, 2, H)


def test_gradients_match_central_differences(rng):
    model = make_lstm(rng, layers=2, embedding=3)
    x, y = rng.integers(0, I, (2, 4)), rng.integers(0, O, (2, 4))
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]])
    result = gradcheck(model, x, y, mask=mask, h0=random_h0(rng, 2, 2), max_checks=None)
    assert result.ok, result.table()
    assert {"weight_hr", "weight_hr_l1"} <= set(result.errors)


def test_fused_plans_run_the_plain_path(rng):
    """The fused kernels have no projection: the cell declines them, whatever the plan."""
    def launcher(*args):
        raise AssertionError("a fused kernel ran for a projected LSTM")

    model = make_lstm(rng, layers=2, output="tanh")
    x, y = rng.normal(size=(2, 5, I)), rng.normal(size=(2, 5, O))
    plain = model.loss_and_grads(x, y, truncate=2, reduction="sum")
    model.plan = Plan(kernels="fused")
    with fused.emulate_on_host(launcher):
        got = model.loss_and_grads(x, y, truncate=2, reduction="sum")
    for name, grad in plain.grads.items():
        assert np.array_equal(got.grads[name], grad), name


def test_shapes_spec_and_no_projection(rng):
    model = make_model("lstm", 7, 4, 5, num_layers=2, embedding_size=3, proj_size=3, seed=1)
    assert {k: v.shape for k, v in model.params.items()} == {
        "E": (7, 3), "weight_ih": (16, 3), "weight_hh": (16, 3), "bias_ih": (16,),
        "bias_hh": (16,), "weight_hr": (3, 4), "weight_ih_l1": (16, 3), "weight_hh_l1": (16, 3),
        "bias_ih_l1": (16,), "bias_hh_l1": (16,), "weight_hr_l1": (3, 4), "V": (5, 3), "c": (5,)}
    assert np.abs(host(model.weight_hr)).max() <= 0.5           # PyTorch's ±1/sqrt(hidden)
    spec = model_spec(model)
    assert spec["proj_size"] == 3
    clone = make_model(**spec, seed=1)
    for name, value in model.params.items():
        assert np.array_equal(host(clone.params[name]), host(value))
    assert model.copy(dtype="float64").proj_size == 3 and "proj_size=3" in repr(model)
    # proj_size=0 is the plain LSTM: same parameters, same config
    plain, zero = LSTM(5, 4, 3, seed=2), LSTM(5, 4, 3, proj_size=0, seed=2)
    assert plain.config == zero.config and "proj_size" not in plain.config
    for name, value in plain.params.items():
        assert np.array_equal(zero.params[name], value)


@pytest.mark.parametrize("call, error, message", [
    (lambda: LSTM(5, 4, 3, proj_size=4), ValueError,
     r"proj_size must satisfy 0 <= proj_size < hidden_size \(4\), got 4; choose 0 < "),
    (lambda: LSTM(5, 4, 3, proj_size=-1), ValueError, "got -1; choose 0 < proj_size < 4 for a "
     "projection, or 0 for none"),
    (lambda: LSTM(5, 4, 3, proj_size=1.5), TypeError, "proj_size must be an int"),
    (lambda: LSTM(5, 4, 3, proj_size=True), TypeError, "proj_size must be an int"),
    (lambda: make_model("gru", 5, 4, 3, proj_size=2), ValueError,
     "proj_size applies to the lstm cell only"),
    (lambda: LSTM(5, 4, 3, proj_size=2).loss_and_grads(
        np.zeros((2, 3), int), np.zeros((2, 3), int), h0=(np.zeros((2, 4)), np.zeros((2, 4)))),
     ValueError, r"h0\[0\] \(h\) must have shape \(batch, hidden\) = \(2, 2\)"),
])
def test_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_torch_output_layer_must_read_the_projection():
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match=r"in_features = proj_size \(2\)"):
        LSTM.from_torch(torch.nn.LSTM(3, 4, proj_size=2), torch.nn.Linear(4, 3))
