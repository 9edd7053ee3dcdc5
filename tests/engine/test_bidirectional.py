"""Bidirectional Elman, GRU and LSTM stacks against PyTorch autograd (``bidirectional=True``,
packed sequences for ragged batches) in float64: loss, outputs, final states and every
gradient; conversions both ways, central differences, refusals."""
import re

import numpy as np
import pytest
from conftest import host

import gpurnn
import gpurnn.tools.diagnostics
from gpurnn import gradcheck, make_model, model_spec
from gpurnn.engine.models.parameters import layer_name

torch = pytest.importorskip("torch")

TIGHT = 1e-12
TORCH_RNN = {"elman": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}
I, H, O, B, T = 5, 3, 4, 4, 6
LENGTHS = [T, 2, T - 1, 1]  # ragged, unsorted (a packed sequence needs lengths ≥ 1)


def rel_error(a, b):
    a, b = np.asarray(host(a), dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def gpurnn_name(torch_name):
    """torch's ``weight_ih_l1_reverse`` -> gpurnn's ``weight_ih_l1_reverse``, ``..._l0...``
    -> the layer-0 name (``weight_ih_reverse``)."""
    base, layer, suffix = re.fullmatch(r"(\w+?)_l(\d+)(_reverse)?", torch_name).groups()
    return layer_name(base, int(layer)) + (suffix or "")


def torch_modules(cell, layers, embedded):
    torch.manual_seed(3)
    rnn = TORCH_RNN[cell](3 if embedded else I, H, num_layers=layers, bidirectional=True,
                          batch_first=True, dtype=torch.float64)
    with torch.no_grad():  # O(1) weights, and Elman's bias_hh nonzero so that folding matters
        for p in rnn.parameters():
            p.uniform_(-0.8, 0.8)
    linear = torch.nn.Linear(2 * H, O, dtype=torch.float64)
    embedding = torch.nn.Embedding(I, 3, dtype=torch.float64) if embedded else None
    return rnn, linear, embedding


def torch_run(rnn, linear, embedding, x, y, mask):
    """Summed cross-entropy over the real steps, logits (batch, time, O), final state."""
    xt = embedding(torch.as_tensor(x)) if embedding is not None else torch.as_tensor(x)
    if mask is None:
        seq, last = rnn(xt)
    else:
        lengths = torch.as_tensor(mask.sum(axis=1).astype(np.int64))
        packed = torch.nn.utils.rnn.pack_padded_sequence(xt, lengths, batch_first=True,
                                                         enforce_sorted=False)
        out, last = rnn(packed)
        seq, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)
    logits = linear(seq)
    keep = torch.ones(B, T, dtype=torch.bool) if mask is None else torch.as_tensor(mask > 0)
    loss = torch.nn.functional.cross_entropy(logits[keep], torch.as_tensor(y)[keep],
                                             reduction="sum")
    return loss, logits, last


def data(rng, embedded, masked):
    dense = not embedded
    x = rng.normal(size=(B, T, I)) if dense else rng.integers(0, I, (B, T))
    y = rng.integers(0, O, (B, T))
    mask = None
    if masked:
        mask = (np.arange(T)[None, :] < np.array(LENGTHS)[:, None]).astype(float)
    return x, y, mask


def assert_state(actual, expected, cell):
    pairs = zip(actual, expected) if cell == "lstm" else [(actual, expected)]
    for a, e in pairs:
        assert host(a).shape == tuple(e.shape)
        assert rel_error(a, e.detach().numpy()) <= TIGHT


@pytest.mark.parametrize("masked", [True, False], ids=["ragged", "full"])
@pytest.mark.parametrize("embedded", [True, False], ids=["embedding", "dense"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", ["elman", "gru", "lstm"])
def test_matches_torch_autograd(cell, layers, embedded, masked, rng):
    rnn, linear, embedding = torch_modules(cell, layers, embedded)
    model = gpurnn.from_torch(rnn, linear, embedding)
    assert model.bidirectional and model.dtype == np.float64
    x, y, mask = data(rng, embedded, masked)
    loss, logits, last = torch_run(rnn, linear, embedding, x, y, mask)
    loss.backward()

    result = model.loss_and_grads(x, y, mask=mask, reduction="sum")
    assert abs(result.loss - loss.item()) <= TIGHT * abs(loss.item())
    expected = {"V": linear.weight.grad, "c": linear.bias.grad}
    if embedded:
        expected["E"] = embedding.weight.grad
    for name, p in rnn.named_parameters():
        if cell == "elman" and name.startswith("bias_hh"):
            # b = bias_ih + bias_hh: both torch biases get the gradient of b
            assert rel_error(p.grad, getattr(rnn, name.replace("hh", "ih")).grad) <= TIGHT
            continue
        expected[gpurnn_name(name)] = p.grad
    assert set(expected) == set(result.grads) == set(model.params)
    for name, grad in expected.items():
        assert rel_error(result.grads[name], grad.numpy()) <= TIGHT, name
    assert_state(result.last_hidden, last, cell)

    outputs, _, state = model.forward(x, mask=mask, return_state=True)
    real = np.ones((B, T), bool) if mask is None else mask > 0
    assert rel_error(host(outputs)[real],
                     torch.softmax(logits, -1).detach().numpy()[real]) <= TIGHT
    assert_state(state, last, cell)
    assert model.loss(x, y, weights=mask, reduction="sum") == pytest.approx(result.loss,
                                                                            rel=TIGHT)

    # Back to torch: the same function (Elman's bias_hh folded into bias_ih), exact round trip.
    back = model.to_torch()
    assert back.rnn.bidirectional and back.linear.in_features == 2 * H
    assert torch_run(*back, x, y, mask)[0].item() == pytest.approx(loss.item(), rel=TIGHT)
    again = gpurnn.from_torch(*back)
    for name, value in model.params.items():
        assert np.array_equal(again.params[name], value), name


def random_model(cell, device, rng, **kw):
    model = make_model(cell, I, H, O, bidirectional=True, dtype="float64", device=device, **kw)
    for name in model.params:
        setattr(model, name, rng.normal(scale=0.6, size=model.params[name].shape))
    return model


@pytest.mark.parametrize("cell", ["elman", "gru", "lstm"])
def test_gradients_match_central_differences_with_a_mask(cell, device, rng):
    model = random_model(cell, device, rng, num_layers=2, embedding_size=2, output="sigmoid")
    x = rng.integers(0, I, (3, 4))
    y = rng.normal(size=(3, 4, O))
    mask = (np.arange(4)[None, :] < np.array([[4], [1], [0]])).astype(float)
    # eps 1e-4: some gradients here are ~1e-4, where 1e-6 leaves mostly rounding noise
    result = gradcheck(model, x, y, mask=mask, max_checks=8, eps=1e-4)
    assert result.ok, result.table()
    assert set(result.errors) == set(model.params)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_padding_changes_nothing_and_empty_sequences_end_at_zero(cell, device, rng):
    model = random_model(cell, device, rng, num_layers=2)
    x, y = rng.integers(0, I, (3, T)), rng.integers(0, O, (3, T))
    mask = (np.arange(T)[None, :] < np.array([[T], [2], [0]])).astype(float)
    first = model.loss_and_grads(x, y, mask=mask)
    x[1, 2:], x[2] = 0, 1                                   # other padding
    second = model.loss_and_grads(x, y, mask=mask)
    assert first.loss == second.loss
    for name in first.grads:  # (the token scatter may sum in another order: rounding only)
        assert rel_error(first.grads[name], host(second.grads[name])) <= TIGHT, name
    parts = first.last_hidden if cell == "lstm" else (first.last_hidden,)
    for part in parts:                                      # layers·2 rows each
        assert host(part).shape == (4, 3, H)
        assert not host(part)[:, 2].any()                   # no step: the zero start


def test_refusals(rng):
    model = make_model("lstm", I, H, O, bidirectional=True, dtype="float64")
    x, y = rng.integers(0, I, (2, 3)), rng.integers(0, O, (2, 3))
    h0 = (np.zeros((2, 2, H)), np.zeros((2, 2, H)))
    for call in (lambda: model.loss_and_grads(x, y, h0=h0), lambda: model.loss(x, y, h0=h0),
                 lambda: model.forward(x, h0)):
        with pytest.raises(ValueError, match="cannot carry a state across chunks.*sentence"):
            call()
    with pytest.raises(ValueError, match="truncate=k is refused.*flows forward"):
        model.loss_and_grads(x, y, truncate=1)
    for option in ({"memory_budget": "1MB"}, {"checkpoint_every": 2}):
        with pytest.raises(ValueError, match="memory_budget and checkpoint_every are refused"):
            model.loss_and_grads(x, y, **option)
        with pytest.raises(ValueError, match="refused for a bidirectional"):
            model.schedule(x, y, **option)
    model.plan = model.plan.replace(memory_budget="1MB")
    with pytest.raises(ValueError, match="refused for a bidirectional"):
        model.loss(x, y)
    with pytest.raises(ValueError, match="one forward recurrence"):
        gpurnn.tools.diagnostics.saturation(model, x)
    with pytest.raises(TypeError, match="bidirectional must be True or False"):
        gpurnn.GRU(I, H, O, bidirectional=1)
    with pytest.raises(TypeError, match="mask"):                # only bidirectional models
        gpurnn.GRU(I, H, O).forward(x, mask=np.ones((2, 3)))


def test_spec_copy_and_checkpoint_round_trip(rng, tmp_path):
    for cell in ("elman", "gru", "lstm"):
        model = make_model(cell, I, H, O, bidirectional=True, seed=2)
        spec = model_spec(model)
        assert spec["bidirectional"] is True and spec["num_layers"] == 1
        assert type(model) is {"elman": gpurnn.StackedElmanRNN, "gru": gpurnn.GRU,
                               "lstm": gpurnn.LSTM}[cell]
        assert model.params["V"].shape == (O, 2 * H)
        rebuilt = make_model(**spec, seed=2)
        for clone in (rebuilt, model.copy(dtype="float64"),
                      gpurnn.load(gpurnn.save(tmp_path / f"{cell}.npz", model)).model):
            assert clone.bidirectional and set(clone.params) == set(model.params)
            for name, value in model.params.items():
                assert np.array_equal(host(clone.params[name]), host(value)), name


@pytest.mark.parametrize("cell", ["elman", "gru", "lstm"])
def test_unidirectional_is_unchanged(cell, rng):
    default = make_model(cell, I, H, O, num_layers=2, seed=4)
    explicit = make_model(cell, I, H, O, num_layers=2, seed=4, bidirectional=False)
    assert "bidirectional" not in model_spec(explicit) and repr(default) == repr(explicit)
    assert not explicit.bidirectional and list(default.params) == list(explicit.params)
    for name, value in default.params.items():
        assert np.array_equal(value, explicit.params[name]), name
    assert type(make_model(cell, I, H, O, bidirectional=False)) is type(make_model(cell, I, H, O))
    x, y = rng.integers(0, I, (2, 4)), rng.integers(0, O, (2, 4))
    assert default.loss_and_grads(x, y).loss == explicit.loss_and_grads(x, y).loss


@pytest.mark.parametrize("layers", [1, 2])
def test_projected_lstm_in_both_directions_matches_torch(layers, rng):
    torch.manual_seed(4)
    rnn = torch.nn.LSTM(I, H, num_layers=layers, proj_size=2, bidirectional=True,
                        batch_first=True, dtype=torch.float64)
    linear = torch.nn.Linear(2 * 2, O, dtype=torch.float64)
    model = gpurnn.from_torch(rnn, linear)
    assert model.proj_size == 2 and model.V.shape == (O, 4)
    x, y, mask = data(rng, False, True)
    loss, _, last = torch_run(rnn, linear, None, x, y, mask)
    loss.backward()
    result = model.loss_and_grads(x, y, mask=mask, reduction="sum")
    assert abs(result.loss - loss.item()) <= TIGHT * abs(loss.item())
    for name, p in rnn.named_parameters():
        assert rel_error(result.grads[gpurnn_name(name)], p.grad.numpy()) <= TIGHT, name
    assert_state(result.last_hidden, last, "lstm")
