"""Gradient-flow diagnostics: closed forms, the seeds' loops, and plain-loop Jacobian products."""
import argparse
import json

import numpy as np
import pytest
from conftest import host

from gpurnn import GRU, LSTM, ElmanRNN, LinearRNN, reference
from gpurnn.tools import diagnostics as D
from gpurnn.reference import gated as R


def orthogonal(rng, n):
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    return q


@pytest.mark.parametrize("w", [1.5, 0.5, -0.8])
def test_linear_elman_gradient_is_a_power_of_w(w, device, rng):
    """h_t = W h_{t−1} + U x_t with W = w Q (Q orthogonal): ‖∂L_t/∂h_k‖ = |w|^(t−k) ‖∂L_t/∂h_t‖."""
    model = ElmanRNN(3, 4, 2, activation="identity", output="identity", bias=False,
                     dtype="float64", device=device)
    model.W = w * orthogonal(rng, 4)
    flow = D.gradient_flow(model, rng.normal(size=(2, 9, 3)))        # unit vectors on each h_t
    lag = np.arange(9)
    assert np.allclose(flow.by_lag, np.abs(w) ** lag, rtol=1e-12)
    t, k = np.tril_indices(9)
    assert np.allclose(flow.norms[t, k], np.abs(w) ** (t - k), rtol=1e-12)
    assert np.isnan(flow.norms[np.triu_indices(9, 1)]).all()


def _reference_norms(model, x, y):
    """‖∂L_t/∂h_k‖ for one sequence by walking each output's error back with the
    reference's per-step backward (one layer)."""
    kind = model.cell_type
    p = {n: host(v) for n, v in model.params.items() if n not in ("V", "c")}
    out = {k: host(model.params[k]) for k in ("V", "c")}
    probs, _, caches = R.forward(kind, [p], out, x)
    T = len(x)
    norms = np.full((T, T), np.nan)
    for t in range(T):
        e_y = probs[t].copy()
        e_y[y[t]] -= 1
        dh = out["V"].T @ e_y
        g = (dh, np.zeros_like(dh)) if kind == "lstm" else dh
        for k in range(t, -1, -1):
            norms[t, k] = np.linalg.norm(g[0] if kind == "lstm" else g)
            g, _ = R.layer_step_backward(kind, p, caches[k][0], g, {})
    return norms


@pytest.mark.parametrize("cell", [GRU, LSTM])
def test_gated_gradient_flow_matches_plain_loops(cell, device, rng):
    model = cell(5, 3, 4, dtype="float64", device=device, seed=1)
    for name in model.params:
        setattr(model, name, rng.normal(scale=0.8, size=model.params[name].shape))
    x, y = rng.integers(0, 5, (1, 8)), rng.integers(0, 4, (1, 8))
    flow = D.gradient_flow(model, x, y)
    expected = _reference_norms(model, x[0], y[0])
    done = ~np.isnan(expected)
    assert np.array_equal(done, ~np.isnan(flow.norms))
    assert np.allclose(flow.norms[done], expected[done], rtol=1e-9, atol=0)
    assert np.allclose(flow.by_lag, [np.diagonal(expected, -l).mean() for l in range(8)])


def test_max_lag_and_mask(device, rng):
    model = LSTM(4, 3, 4, num_layers=2, dtype="float64", device=device)
    x, y = rng.integers(0, 4, (3, 10)), rng.integers(0, 4, (3, 10))
    full = D.gradient_flow(model, x, y)
    short = D.gradient_flow(model, x, y, max_lag=3)
    t, k = np.tril_indices(10)
    near = t - k <= 3
    assert np.allclose(short.norms[t[near], k[near]], full.norms[t[near], k[near]], rtol=1e-12)
    assert np.isnan(short.norms[t[~near], k[~near]]).all()
    assert len(short.by_lag) == 4
    mask = np.ones((3, 10))
    mask[1:, 5:] = 0
    masked = D.gradient_flow(model, x, y, mask=mask)
    alone = D.gradient_flow(model, x[:1], y[:1])
    assert np.allclose(masked.norms[5:], alone.norms[5:], rtol=1e-12, equal_nan=True)


def test_linear_rnn_gradient_over_time_is_the_seeds(device):
    rng = np.random.default_rng(2)
    X = np.round(rng.random((5, 10)))
    t = X.sum(axis=1)
    for wx, wRec in D.SEED001_POINTS:
        S = reference.linear_forward_states(X, wx, wRec)
        _, expected = reference.backward_gradient(X, S, reference.linear_output_gradient(S[:, -1], t), wRec)
        got = D.linear_gradient_over_time(X, t, wx, wRec, device=device)
        assert np.allclose(got, expected, rtol=1e-12, atol=0)


def test_seed001_picture_data_explodes_and_vanishes():
    grads = D.seed001_gradients(length=12)
    assert list(grads) == list(D.SEED001_POINTS)
    for (wx, wRec), g in grads.items():
        mag = g["magnitude"]
        if wRec == 0:
            assert mag[-1] > 0 and not mag[:-1].any()
        else:   # each step back multiplies by |wRec|
            assert np.allclose(mag[:-1] / mag[1:], abs(wRec), rtol=1e-12)
    with pytest.raises(TypeError, match="linear_gradient_over_time"):
        D.gradient_flow(LinearRNN(), np.ones((2, 3)), np.ones(2))


def test_recurrent_stats_and_rescaling(rng):
    model = ElmanRNN(3, 3, 3, dtype="float64")
    model.W = np.array([[0.0, 2.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.5]])
    (stats,) = D.recurrent_stats(model)
    assert stats == {"block": "W", "spectral_radius": pytest.approx(0.5),
                     "spectral_norm": pytest.approx(2.0)}
    gru = GRU(3, 4, 3, num_layers=2, dtype="float64")
    labels = [s["block"] for s in D.recurrent_stats(gru)]
    assert labels == [f"layer {l} weight_hh[{g}]" for l in (0, 1) for g in "rzn"]
    D.scale_recurrent(gru, 1.7)
    for layer in (0, 1):
        radii = [s["spectral_radius"] for s in D.recurrent_stats(gru)
                 if s["block"].startswith(f"layer {layer}")]
        assert max(radii) == pytest.approx(1.7)
    assert D.recurrent_stats(LinearRNN(1.0, -2.0))[0]["spectral_radius"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="radius"):
        D.scale_recurrent(gru, 0)


def test_saturation(device, rng):
    x = rng.integers(0, 4, (3, 6))
    lstm = LSTM(4, 3, 2, dtype="float64", device=device)
    calm = D.saturation(lstm, x)
    assert set(calm) == {"i", "f", "g", "o", "tanh(c)"} and max(calm.values()) == 0
    for name in lstm.params:
        setattr(lstm, name, 40 * rng.normal(size=lstm.params[name].shape))
    assert min(D.saturation(lstm, x)[k] for k in "ifgo") > 0.8
    relu = ElmanRNN(4, 5, 2, activation="relu", dtype="float64", device=device)
    relu.U = -np.ones((5, 4))
    relu.W = np.zeros((5, 5))
    assert D.saturation(relu, x) == {"h": 1.0}
    stacked = D.saturation(GRU(4, 3, 2, num_layers=2, device=device), x,
                           mask=np.array([[1] * 6, [1] * 3 + [0] * 3, [1] + [0] * 5]))
    assert list(stacked) == [f"layer {l} {g}" for l in (0, 1) for g in "rzn"]


def _parse(argv):
    parser = argparse.ArgumentParser()
    D.add_diagnose(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_diagnose_command_writes_json(tmp_path, capsys):
    out = tmp_path / "d.json"
    args = _parse(["diagnose", "--cell", "lstm", "--layers", "2", "--hidden", "4",
                   "--seq-len", "12", "--batch-size", "2", "--json", str(out)])
    assert args.handler(args) == 0
    data = json.loads(out.read_text())
    assert len(data["by_lag"]) == 12 and data["by_lag"][0] > 0
    assert len(data["norms"]) == 12 and data["norms"][0][1] is None
    assert len(data["recurrent"]) == 8 and "layer 1 tanh(c)" in data["saturated"]
    printed = capsys.readouterr().out
    assert "spectral radius" in printed and "LSTM(10, 4, 10" in printed
    assert f"wrote {out}" in printed
    assert (tmp_path / "d.png").exists() or "no picture" in printed  # beside the numbers


def test_diagnose_command_plots(tmp_path):
    pytest.importorskip("matplotlib")
    args = _parse(["diagnose", "--cell", "gru", "--hidden", "4", "--seq-len", "8",
                   "--batch-size", "2", "--jacobian", "--spectral-radius", "1.2",
                   "--plot", str(tmp_path / "g.png")])
    assert args.handler(args) == 0
    args = _parse(["diagnose", "--seed001", "--plot", str(tmp_path / "s.png"),
                   "--json", str(tmp_path / "s.json")])
    assert args.handler(args) == 0
    for name in ("g.png", "s.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    points = json.loads((tmp_path / "s.json").read_text())
    assert [(p["wx"], p["wRec"]) for p in points] == [tuple(p) for p in D.SEED001_POINTS]


def test_diagnose_command_errors():
    args = _parse(["diagnose", "--cell", "gru", "--activation", "relu"])
    with pytest.raises(ValueError, match="elman cell only"):
        args.handler(args)
    with pytest.raises(SystemExit):
        _parse(["diagnose", "--cell", "transformer"])


def test_chosen_origins_are_rows_of_the_full_flow(rng):
    model = GRU(4, 3, 4, dtype="float64")
    x = rng.integers(0, 4, (2, 9))
    full = D.gradient_flow(model, x)
    some = D.gradient_flow(model, x, origins=[8, 3])
    assert np.allclose(some.norms[[3, 8]], full.norms[[3, 8]], rtol=1e-12, equal_nan=True)
    assert np.isnan(np.delete(some.norms, [3, 8], axis=0)).all()
    with pytest.raises(ValueError, match="origins"):
        D.gradient_flow(model, x, origins=[9])


def _load_script(name):
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[2] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scripts_run(capsys):
    results = _load_script("long_dependency").main(
        ["--steps", "8", "--iterations", "4", "--eval-every", "2", "--hidden", "4",
         "--batch", "4", "--test-size", "8", "--flow-batch", "2", "--no-save"])
    assert [r["cell"] for r in results] == ["elman", "gru", "lstm"]
    assert all(len(r["flow_trained"]) == 8 and 0 <= r["accuracy"] <= 1 for r in results)
    _load_script("gradient_flow").main(["--steps", "6", "--no-save"])
    assert "wRec=  -2" in capsys.readouterr().out
