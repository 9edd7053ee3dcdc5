"""Elman models to and from ``torch.nn.RNN`` (+ ``nn.Linear``, ``nn.Embedding``): the same
loss, outputs, last state and gradients as torch autograd, in float64 (GRU and LSTM are
checked the same way in test_gated.py)."""
import numpy as np
import pytest

import gpurnn
from gpurnn.engine.models.parameters import layer_name

torch = pytest.importorskip("torch")


def rel_error(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def torch_loss(rnn, linear, embedding, x, y):
    """Summed cross-entropy of the torch modules, and their outputs."""
    if embedding is not None:
        xt = embedding(torch.as_tensor(x))
    elif x.dtype.kind == "i":                  # token ids without an embedding: one-hot
        xt = torch.nn.functional.one_hot(torch.as_tensor(x), rnn.input_size).double()
    else:
        xt = torch.as_tensor(x)
    seq, last = rnn(xt)
    logits = linear(seq)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             torch.as_tensor(y).reshape(-1), reduction="sum")
    return loss, logits, last


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("layers, embedded, tokens", [(1, False, False), (1, False, True),
                                                      (2, False, False), (2, True, True)])
@pytest.mark.parametrize("bias", [True, False])
def test_elman_matches_torch_autograd(nonlinearity, layers, embedded, tokens, bias, rng):
    torch.manual_seed(1)
    inputs = 6
    rnn = torch.nn.RNN(3 if embedded else inputs, 4, num_layers=layers, nonlinearity=nonlinearity,
                       bias=bias, batch_first=True, dtype=torch.float64)
    if bias:   # torch initialises bias_hh; make both biases matter
        with torch.no_grad():
            for layer in range(layers):
                getattr(rnn, f"bias_hh_l{layer}").uniform_(-0.5, 0.5)
    linear = torch.nn.Linear(4, 5, bias=bias, dtype=torch.float64)
    embedding = torch.nn.Embedding(inputs, 3, dtype=torch.float64) if embedded else None
    model = gpurnn.from_torch(rnn, linear, embedding)
    expected_class = gpurnn.ElmanRNN if layers == 1 and not embedded else gpurnn.StackedElmanRNN
    assert type(model) is expected_class and model.dtype == np.float64
    assert model.activation == nonlinearity
    x = rng.integers(0, inputs, (2, 7)) if tokens else rng.normal(size=(2, 7, inputs))
    y = rng.integers(0, 5, (2, 7))
    loss, logits, last = torch_loss(rnn, linear, embedding, x, y)
    loss.backward()

    result = model.loss_and_grads(x, y, reduction="sum")
    assert result.loss == pytest.approx(loss.item(), rel=1e-12)
    torch_grads = {"V": linear.weight.grad}
    for layer in range(layers):
        torch_grads[layer_name("weight_ih", layer)] = getattr(rnn, f"weight_ih_l{layer}").grad
        torch_grads[layer_name("weight_hh", layer)] = getattr(rnn, f"weight_hh_l{layer}").grad
        if bias:
            # b = bias_ih + bias_hh: each torch bias gets the gradient of b
            grad_ih = getattr(rnn, f"bias_ih_l{layer}").grad
            assert rel_error(grad_ih, getattr(rnn, f"bias_hh_l{layer}").grad) <= 1e-12
            torch_grads[layer_name("bias_ih", layer)] = grad_ih
    if bias:
        torch_grads["c"] = linear.bias.grad
    if embedded:
        torch_grads["E"] = embedding.weight.grad
    assert set(torch_grads) == set(result.grads)
    for name, grad in torch_grads.items():
        assert rel_error(result.grads[name], grad.numpy()) <= 1e-12, name
    outputs, _ = model.forward(x)
    assert rel_error(outputs, torch.softmax(logits, -1).detach().numpy()) <= 1e-12
    top = last[-1].detach().numpy()
    state = result.last_hidden if layers == 1 else result.last_hidden[-1]
    assert rel_error(state, top) <= 1e-12

    # Back to torch: the same function (bias_hh folded into bias_ih), and exact round trip.
    back = model.to_torch()
    assert back.rnn.nonlinearity == nonlinearity and back.rnn.num_layers == layers
    loss_back, _, _ = torch_loss(back.rnn, back.linear, back.embedding, x, y)
    assert loss_back.item() == pytest.approx(loss.item(), rel=1e-12)
    again = gpurnn.from_torch(*back)
    for name, value in model.params.items():
        assert np.array_equal(again.params[name], value), name


def test_elman_round_trip_in_float32_keeps_dtype():
    model = gpurnn.ElmanRNN(5, 4, 3, activation="relu", seed=3)
    modules = model.to_torch()
    assert modules.rnn.weight_ih_l0.dtype == torch.float32 and modules.embedding is None
    back = gpurnn.ElmanRNN.from_torch(*modules)
    assert back.dtype == np.float32
    for name, value in model.params.items():
        assert np.array_equal(back.params[name], value), name


def test_elman_conversion_errors():
    linear = torch.nn.Linear(4, 2)
    with pytest.raises(TypeError, match="ElmanRNN.from_torch needs a torch.nn.RNN, got GRU"):
        gpurnn.ElmanRNN.from_torch(torch.nn.GRU(3, 4), linear)
    with pytest.raises(ValueError, match="StackedElmanRNN.from_torch"):
        gpurnn.ElmanRNN.from_torch(torch.nn.RNN(3, 4, num_layers=2), linear)
    with pytest.raises(ValueError, match="bidirectional use gpurnn.StackedElmanRNN"):
        gpurnn.ElmanRNN.from_torch(torch.nn.RNN(3, 4, bidirectional=True),
                                   torch.nn.Linear(8, 2))
    with pytest.raises(TypeError, match="torch.nn.RNN, GRU or LSTM"):
        gpurnn.from_torch(torch.nn.Linear(3, 4), linear)
    with pytest.raises(ValueError, match="tanh and relu only"):
        gpurnn.ElmanRNN(3, 4, 2, activation="sigmoid").to_torch()
    assert type(gpurnn.from_torch(torch.nn.LSTM(3, 4), linear)) is gpurnn.LSTM
