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
    recurrent = "weight_hh" if "weight_hh" in model.params else "W"   # the hidden-to-hidden

    def planted(*args, **kwargs):                 # 1% off in one parameter
        out = honest(*args, **kwargs)
        out.grads[recurrent] *= 1.01
        return out
    model.loss_and_grads = planted
    result = gradcheck(model, x, x)
    assert not result.ok and result.errors[recurrent] > 1e-3 and result.errors["V"] < 1e-6


def test_the_table_stays_aligned_at_long_parameter_names():
    from gpurnn.tools.gradcheck import GradcheckResult
    names = ["W", "weight_hh_l1", "bias_ih_l10_reverse", "c"]
    result = GradcheckResult(errors={n: 10.0 ** -k for k, n in enumerate(names, 5)},
                             checked={n: 5 * (k + 1) for k, n in enumerate(names)},
                             shapes={n: (3,) * (k + 1) for k, n in enumerate(names)})
    header, rule, *rows = result.table().splitlines()
    assert len(rows) == len(names) and set(rule) == {"-"} and len(rule) == len(header)
    starts = [header.index(h) for h in ("shape", "checked", "ok")]
    for name, row in zip(names, rows):
        assert row.startswith(name + " ")
        shape = str(result.shapes[name])
        assert row.index(shape, len(name)) == starts[0]           # shapes start in one column
        assert row.rstrip().endswith(("yes", "NO"))
        assert len(row) - len(row.split()[-1]) == starts[2]        # verdicts too
    widths = {len(row.rsplit(" ", 1)[0]) for row in rows}          # everything before "ok"
    assert widths == {starts[2] - 1}
