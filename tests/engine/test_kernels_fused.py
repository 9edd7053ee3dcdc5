"""The fused path end to end on the CPU: models, trainer and optimizers run with
``Plan(kernels="fused")`` through the host emulation of the kernels, against the plain path.

What differs on a GPU is only the launcher (CuPy's RawModule instead of the emulation), so
these tests check everything the fused path does around the kernels: buffers, layouts,
launch shapes and argument lists, truncation windows, stacks, masks.
"""
import os

import numpy as np
import pytest

from gpurnn.engine.sweeps import bptt
from gpurnn.engine.gpu import fused, persistent
from gpurnn.engine.arrays.backend import get_device, to_host
from gpurnn.engine.recurrences.cells import ElmanCell
from gpurnn.engine.recurrences.gated import GRUCell, LSTMCell
from gpurnn.engine.models.factory import make_model
from gpurnn.engine.gpu.kernels import host
from gpurnn.engine.plan import Plan
from gpurnn.training import train as T
from gpurnn.training.checkpoint import load_checkpoint
from gpurnn.training.config import TrainConfig

_PROBLEM = None
if host.compiler() is None and os.environ.get("GPURNN_REQUIRE_KERNEL_TOOLS") != "1":
    _PROBLEM = "no host C++ compiler (g++) to build the kernels for the host"
pytestmark = pytest.mark.skipif(_PROBLEM is not None, reason=str(_PROBLEM))

TOLERANCE = {"float32": 1e-6, "float64": 1e-12}


@pytest.fixture(scope="module")
def launch():
    return host.HostLauncher(host.build())


def relative_error(got, expected):
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    return np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-300)


def _state_rows(state):
    return np.concatenate(state, axis=-1) if isinstance(state, tuple) else state


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cell,layers,embedding,truncate", [
    ("elman", 1, None, None), ("elman", 1, None, 2), ("elman", 2, 4, None),
    ("gru", 1, None, None), ("gru", 2, 4, 2), ("lstm", 1, None, 2), ("lstm", 2, 4, None)])
def test_fused_models_match_plain(cell, layers, embedding, truncate, dtype, device, launch):
    """On "cpu" and "cpu-strict" the kernels run emulated on the host (on cpu-strict, with
    CuPy's rules on every caller); on "cuda" they run on the GPU."""
    rng = np.random.default_rng(3)
    model = make_model(cell, 11, 6, 11, num_layers=layers, embedding_size=embedding,
                       dtype=dtype, seed=2, device=device)
    x, y = rng.integers(0, 11, (3, 7)), rng.integers(0, 11, (3, 7))
    mask = np.ones((3, 7))
    mask[0, 5:] = 0
    plain = model.loss_and_grads(x, y, truncate=truncate, mask=mask, reduction="mean")
    model.plan = Plan(kernels="fused")
    with fused.emulate_on_host(launch if device != "cuda" else None):
        got = model.loss_and_grads(x, y, truncate=truncate, mask=mask, reduction="mean")
    tol = TOLERANCE[dtype]
    assert abs(got.loss - plain.loss) <= tol * abs(plain.loss)
    for name, expected in plain.grads.items():
        assert relative_error(to_host(got.grads[name]), to_host(expected)) <= tol, name
    assert relative_error(to_host(_state_rows(got.last_hidden)),
                          to_host(_state_rows(plain.last_hidden))) <= tol


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cell_name", ["gru", "lstm"])
def test_the_persistent_gated_cells_match_plain(cell_name, dtype, device, launch):
    """A gated cell's forward and full backward sweep as two persistent kernels, then the
    plain parameter gradients, against the plain per-step path."""
    cell_class, G, S = (GRUCell, 3, 1) if cell_name == "gru" else (LSTMCell, 4, 2)
    forward = getattr(persistent, f"{cell_name}_forward")
    backward = getattr(persistent, f"{cell_name}_backward")
    rng = np.random.default_rng(6)
    xp = get_device(device).xp
    steps, batch, hidden = 6, 3, 20

    def arr(*shape, scale=1.0):
        return xp.asarray(rng.standard_normal(shape) * scale, dtype=dtype)

    params = {"weight_ih": arr(G * hidden, 5), "weight_hh": arr(G * hidden, hidden, scale=0.3),
              "bias_ih": arr(G * hidden), "bias_hh": arr(G * hidden)}
    inputs, h0 = arr(steps, batch, 5), arr(batch, S * hidden)
    dstates = arr(steps, batch, S * hidden)
    runner = launch if device != "cuda" else fused.launcher_for(Plan(kernels="fused"), h0)
    lanes = 8 if device != "cuda" else None
    results = []
    for one_launch in (False, True):
        cell = cell_class()
        xin = cell.project_inputs(params, inputs)
        if one_launch:
            states = forward(cell, params, xin, h0, runner, lanes=lanes)
            deltas = backward(cell, params, xin, h0, states, dstates, runner, lanes=lanes)
        else:
            states = cell.forward(params, xin, h0, steps)
            deltas = bptt.sweep(cell.backward_stepper(params, xin, h0, states), dstates)
        grads = cell.param_grads(params, inputs, xin, h0, states, deltas)
        results.append({"states": to_host(states), **{k: to_host(v) for k, v in grads.items()}})
    for name, expected in results[0].items():
        assert relative_error(results[1][name], expected) <= TOLERANCE[dtype], name


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_the_persistent_recurrence_matches_plain(activation, dtype, device, launch):
    """One cooperative launch for the whole forward, one for the whole backward sweep,
    against the per-step plain forward and the engine's sweep."""
    rng = np.random.default_rng(5)
    xp = get_device(device).xp
    steps, batch, hidden = 7, 3, 26
    W = xp.asarray(rng.standard_normal((hidden, hidden)) / np.sqrt(hidden), dtype=dtype)
    xin = xp.asarray(rng.standard_normal((steps, batch, hidden)), dtype=dtype)
    h0 = xp.asarray(rng.standard_normal((batch, hidden)), dtype=dtype)
    expected = ElmanCell(activation).forward({"weight_hh": W}, xin, h0, steps)
    runner = launch if device != "cuda" else fused.launcher_for(Plan(kernels="fused"), xin)
    lanes = 8 if device != "cuda" else None  # emulated: fewer barriers, same code paths
    got = persistent.elman_forward({"weight_hh": W}, xin, h0, activation, runner, lanes=lanes)
    assert relative_error(to_host(got), to_host(expected)) <= TOLERANCE[dtype]
    dstates = xp.asarray(rng.standard_normal(xin.shape), dtype=dtype)
    cell = ElmanCell(activation)
    deltas = bptt.sweep(cell.backward_stepper({"weight_hh": W}, xin, h0, expected), dstates)
    got = persistent.elman_backward({"weight_hh": W}, expected, dstates, activation, runner,
                                          lanes=lanes)
    assert relative_error(to_host(got), to_host(deltas)) <= TOLERANCE[dtype]

def test_fused_elman_with_a_squared_error_output_matches_plain(launch):
    rng = np.random.default_rng(4)
    model = make_model("elman", 3, 5, 2, output="sigmoid", activation="relu", dtype="float64")
    x, y = rng.standard_normal((2, 6, 3)), rng.random((2, 6, 2))
    plain = model.loss_and_grads(x, y, reduction="sum")
    model.plan = Plan(kernels="fused")
    with fused.emulate_on_host(launch):
        got = model.loss_and_grads(x, y, reduction="sum")
    for name, expected in plain.grads.items():
        assert relative_error(got.grads[name], expected) <= 1e-12, name


def test_numpy_arrays_run_plain_under_a_fused_plan():
    array = np.zeros(3)
    assert fused.launcher_for(Plan(kernels="fused"), array) is None
    assert fused.launcher_for(Plan(), array) is None


def test_the_trainer_flag_runs_the_fused_path(tmp_path, launch, monkeypatch):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The cat sees the fish. A dog likes a red ball. My friend eats the cake. "
                      * 20, encoding="utf-8")
    calls = []
    original = fused.softmax_cross_entropy

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(fused, "softmax_cross_entropy", counted)
    finals = {}
    for kernels in ("plain", "fused"):
        config = TrainConfig(corpus=str(corpus), vocab_size=30, hidden=8, batch_size=4,
                             seq_len=6, steps=4, lr=0.02, eval_every=2, checkpoint_every=0,
                             samples=0, quiet=True, device="cpu", cell="gru", dtype="float64",
                             kernels=kernels, checkpoint=str(tmp_path / f"{kernels}.npz"))
        with fused.emulate_on_host(launch):
            T.Trainer(config).run()
        finals[kernels] = load_checkpoint(config.checkpoint).params
    assert len(calls) == 4                                       # one per fused step
    for name, expected in finals["plain"].items():
        assert relative_error(finals["fused"][name], expected) <= 1e-10, name


def test_the_kernels_flag_is_checked():
    with pytest.raises(ValueError, match="--kernels must be one of plain, fused"):
        TrainConfig(kernels="fast")
