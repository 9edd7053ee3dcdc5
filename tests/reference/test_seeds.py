"""The seed experiments through the engine: seed 001's linear RNN and seed 003's recursion."""
import importlib.util
import pathlib

import numpy as np
import pytest
from conftest import host

from gpurnn import LinearRNN, reference

SCRIPTS = pathlib.Path(__file__).resolve().parents[2] / "scripts"


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("wx, wRec", [(-1.5, 2.0), (0.5, 0.9), (1.2, -1.1)])
def test_linear_rnn_reproduces_backward_gradient(wx, wRec, device):
    rng = np.random.default_rng(3)
    X = np.round(rng.random((20, 10)))
    t = X.sum(axis=1)
    model = LinearRNN(wx, wRec, device=device)
    loss, grads, last = model.loss_and_grads(X, t, reduction="mean")   # seed 001 averages
    S = reference.linear_forward_states(X, wx, wRec)
    grad_out = reference.linear_output_gradient(S[:, -1], t)
    (wx_grad, wRec_grad), _ = reference.backward_gradient(X, S, grad_out, wRec)
    assert float(grads["wx"]) == pytest.approx(wx_grad, rel=1e-12)
    assert float(grads["wRec"]) == pytest.approx(wRec_grad, rel=1e-12)
    assert loss == pytest.approx(reference.linear_loss(S[:, -1], t), rel=1e-12)
    np.testing.assert_allclose(host(model.forward(X)), S[:, 1:], rtol=1e-12)
    np.testing.assert_allclose(host(last), S[:, -1], rtol=1e-12)


def test_count_ones_learns_wx_and_wrec(device):
    model, losses = load_script("count_ones").train(steps=500, device=device)
    assert abs(float(model.wx) - 1) < 1e-2 and abs(float(model.wRec) - 1) < 1e-2
    assert losses[-1] < 1e-3 * losses[0]


def test_nested_recursion_is_exact():
    value, grad = load_script("nested_recursion").nested_recursion_gradient(2.0, 1.0, 4)
    assert grad == 12926834988414.0
    assert (value, grad) == reference.nested_recursion(2.0, 1.0, 4)


def test_nested_recursion_other_points_match_forward_mode():
    script = load_script("nested_recursion")
    for w, s0, steps in [(0.3, 0.5, 6), (-0.7, 1.1, 3), (1.5, -0.2, 1)]:
        expected = reference.nested_recursion(w, s0, steps)
        np.testing.assert_allclose(script.nested_recursion_gradient(w, s0, steps), expected,
                                   rtol=1e-12)
