"""gradcheck: central differences of the loss alone against the BPTT gradients."""
import numpy as np

from gpurnn import ElmanRNN, LinearRNN, gradcheck


def test_mean_masked_loss_and_the_linear_rnn(device, rng):
    model = ElmanRNN(5, 4, 5, dtype="float64", device=device, seed=1)
    x = rng.integers(0, 5, (3, 6))
    mask = np.ones((3, 6))
    mask[2, 4:] = 0
    assert gradcheck(model, x, x, mask=mask, reduction="mean", truncate=None).ok
    X = rng.integers(0, 2, (4, 6)).astype(float)
    assert gradcheck(LinearRNN(0.5, 0.9, device=device), X, X.sum(axis=1)).ok


def test_a_wrong_gradient_is_caught(rng):
    model = ElmanRNN(5, 4, 5, dtype="float64", seed=1)
    x = rng.integers(0, 5, (2, 5))
    honest = model.loss_and_grads

    def planted(*args, **kwargs):                 # 1% off in one parameter
        out = honest(*args, **kwargs)
        out.grads["W"] *= 1.01
        return out
    model.loss_and_grads = planted
    result = gradcheck(model, x, x)
    assert not result.ok and result.errors["W"] > 1e-3 and result.errors["V"] < 1e-6
