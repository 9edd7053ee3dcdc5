"""The kernel sources built for the host and run over an emulated grid, against NumPy.

Each check launches the kernels as the GPU would (their own thread-to-element mapping, small
blocks and grids so grid-stride loops and several blocks run) and compares with the NumPy
path: float32 to 1e-6, float64 to 1e-12, relative to the largest expected value. A build
with one sign flipped in each family's maths (-DGPURNN_FAULT_SIGN=-1) must fail them all.
"""
import os

import numpy as np
import pytest

from gpurnn.engine import bptt, fused, persistent
from gpurnn.engine.activations import ACTIVATIONS, apply, derivative_from_output
from gpurnn.engine.cells import ElmanCell
from gpurnn.engine.gated import GRUCell, LSTMCell
from gpurnn.engine.kernels import host
from gpurnn.engine.plan import Plan
from gpurnn.training import optim

_PROBLEM = None
if host.compiler() is None and os.environ.get("GPURNN_REQUIRE_KERNEL_TOOLS") != "1":
    _PROBLEM = "no host C++ compiler (g++) to build the kernels for the host"
pytestmark = pytest.mark.skipif(_PROBLEM is not None, reason=str(_PROBLEM))

TOLERANCE = {np.float32: 1e-6, np.float64: 1e-12}
DTYPES = (np.float32, np.float64)


@pytest.fixture(scope="module")
def launch():
    return host.HostLauncher(host.build())


@pytest.fixture(scope="module")
def faulty():
    return host.HostLauncher(host.build(defines=("GPURNN_FAULT_SIGN=-1",)))


def error(got, expected):
    """max |got − expected| relative to max |expected|."""
    expected = np.asarray(expected, dtype=np.float64)
    scale = max(np.abs(expected).max(), np.finfo(np.float64).tiny)
    return np.abs(np.asarray(got, dtype=np.float64) - expected).max() / scale


def assert_close(pairs, dtype):
    for name, (got, expected) in pairs.items():
        assert got.shape == expected.shape, name
        assert error(got, expected) <= TOLERANCE[dtype], f"{name}: {error(got, expected)}"


def random(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


# ---- the checks: each returns {name: (kernel result, NumPy result)} -----------------------
def check_elman_step(launch, dtype, rng):
    out = {}
    for act in ACTIVATIONS:
        a, x, b = random(rng, (3, 7), dtype), random(rng, (3, 7), dtype), random(rng, 7, dtype)
        expected = apply(act, a + x + b)
        launch("elman_step", dtype, (2,), (4,), (a, x, b, a.size, 7, ACTIVATIONS.index(act)))
        out[f"elman_step {act}"] = (a, expected)
    return out


def check_elman_delta(launch, dtype, rng):
    out = {}
    for act in ACTIVATIONS:
        g = random(rng, (3, 2, 5), dtype)                       # window origins × batch × hidden
        h = apply(act, random(rng, (2, 5), dtype))
        delta = np.empty_like(g)
        fused._elementwise(launch, "elman_backward_delta", dtype, g.size,
                           (delta, g, h, g.size, h.size, ACTIVATIONS.index(act)))
        out[f"delta {act}"] = (delta, g * derivative_from_output(act, h))
    return out


def _cell_run(cell, params, inputs, h0, launch):
    """forward, backward sweep and parameter gradients of ``cell`` (on the plan it has)."""
    with fused.emulate_on_host(launch):
        xin, states = bptt.forward(cell, params, inputs, h0, inputs.shape[0])
        states = states.copy()
        dstates = np.ones_like(states) * np.linspace(-1, 1, states.shape[-1], dtype=states.dtype)
        grads = bptt.backward(cell, params, inputs, xin, h0, states, dstates, truncate=2)
    return states, grads


def _compare_cells(make_cell, params, inputs, h0, launch):
    plain, fast = make_cell(), make_cell()
    fast.plan = Plan(kernels="fused")
    ref_states, ref_grads = _cell_run(plain, params, inputs, h0, None)
    got_states, got_grads = _cell_run(fast, params, inputs, h0, launch)
    out = {"states": (got_states, ref_states)}
    out.update({f"d{k}": (got_grads[k], ref_grads[k]) for k in ref_grads})
    return out


def check_gru(launch, dtype, rng):
    H, I = 5, 4
    params = {"weight_ih": random(rng, (3 * H, I), dtype),
              "weight_hh": random(rng, (3 * H, H), dtype),
              "bias_ih": random(rng, 3 * H, dtype), "bias_hh": random(rng, 3 * H, dtype)}
    return _compare_cells(GRUCell, params, random(rng, (6, 3, I), dtype),
                          random(rng, (3, H), dtype), launch)


def check_lstm(launch, dtype, rng):
    H, I = 5, 4
    params = {"weight_ih": random(rng, (4 * H, I), dtype),
              "weight_hh": random(rng, (4 * H, H), dtype),
              "bias_ih": random(rng, 4 * H, dtype), "bias_hh": random(rng, 4 * H, dtype)}
    return _compare_cells(LSTMCell, params, random(rng, (6, 3, I), dtype),
                          random(rng, (3, 2 * H), dtype), launch)


def check_softmax(launch, dtype, rng):
    out = {}
    rows, V = 7, 45                                             # V > block: threads stride
    for with_c, with_w in ((True, True), (False, False)):
        z = random(rng, (rows, V), dtype, 3.0)
        c = random(rng, V, dtype) if with_c else None
        t = rng.integers(0, V, rows)
        w = rng.integers(0, 2, rows).astype(dtype) if with_w else None
        scale = 0.25
        zc = z.astype(np.float64) + (0 if c is None else c)
        top = zc.max(axis=1, keepdims=True)
        p = np.exp(zc - top)
        sums = p.sum(axis=1, keepdims=True)
        weight = np.ones(rows) if w is None else w.astype(np.float64)
        loss = weight * (np.log(sums[:, 0]) + top[:, 0] - zc[np.arange(rows), t])
        p /= sums
        p[np.arange(rows), t] -= 1
        e = p * (weight * scale)[:, None]
        got_loss = np.empty(rows, dtype)
        launch("softmax_xent", dtype, (3,), (16,), (z, got_loss, c, t, w, scale, rows, V),
               shared_mem=16 * np.dtype(dtype).itemsize)
        out[f"loss c={with_c} w={with_w}"] = (got_loss, loss.astype(dtype))
        out[f"e_y c={with_c} w={with_w}"] = (z, e.astype(dtype))
    return out


OPTIMIZER_CASES = [("sgd", {}), ("momentum", {}), ("momentum", {"nesterov": True}),
                   ("adagrad", {}), ("rmsprop", {}), ("adam", {})]


def check_optimizers(launch, dtype, rng):
    out = {}
    for name, kwargs in OPTIMIZER_CASES:
        start = {"weight_hh": random(rng, (4, 3), dtype), "bias_ih": random(rng, 5, dtype)}
        grads = [{k: random(rng, v.shape, dtype) for k, v in start.items()} for _ in range(3)]
        results = []
        for plan in (Plan(), Plan(kernels="fused")):
            params = {k: v.copy() for k, v in start.items()}
            opt = optim.make_optimizer(name, 0.1, **kwargs)
            opt.plan = plan
            with fused.emulate_on_host(launch):
                for g in grads:
                    opt.step(params, g)
            results.append(params)
        for k in start:
            out[f"{name}{kwargs} {k}"] = (results[1][k], results[0][k])
    return out


def check_persistent(launch, dtype, rng):
    out = {}
    # (steps, batch, hidden, multiprocessors, threads, lanes): rows of W split unevenly,
    # one unit per block, a block group larger than the outputs.
    for T, B, H, sms, threads, lanes in ((5, 3, 10, 3, 32, 8), (4, 2, 7, 8, 16, 4),
                                        (3, 1, 33, 2, 32, 32)):
        for act in ("tanh", "relu"):
            cell = ElmanCell(act)
            params = {"weight_hh": random(rng, (H, H), dtype, 1 / np.sqrt(H))}
            xin, h0 = random(rng, (T, B, H), dtype), random(rng, (B, H), dtype)
            expected = cell.forward(params, xin.copy(), h0, T).copy()
            runner = host.HostLauncher(launch.path, multiprocessors=sms)
            got = persistent.elman_forward(params, xin, h0, act, runner, threads, lanes)
            out[f"persistent forward T={T} B={B} H={H} {act}"] = (got, expected)
            dstates = random(rng, (T, B, H), dtype)
            deltas = bptt.sweep(cell.backward_stepper(params, xin, h0, expected), dstates)
            got = persistent.elman_backward(params, expected, dstates, act, runner,
                                                  threads, lanes)
            out[f"persistent backward T={T} B={B} H={H} {act}"] = (got, deltas.copy())
    return out


def _check_persistent_gated(launch, dtype, rng, cell_class, forward, backward, G, S):
    """G gates, state width S·H: the persistent forward and backward kernels, then the
    plain weight gradients, against the per-step path."""
    out = {}
    for T, B, H, sms, threads, lanes in ((5, 3, 7, 3, 32, 8), (3, 2, 9, 9, 16, 4)):
        params = {"weight_ih": random(rng, (G * H, 4), dtype),
                  "weight_hh": random(rng, (G * H, H), dtype, 1 / np.sqrt(H)),
                  "bias_ih": random(rng, G * H, dtype), "bias_hh": random(rng, G * H, dtype)}
        inputs, h0 = random(rng, (T, B, 4), dtype), random(rng, (B, S * H), dtype)
        dstates = random(rng, (T, B, S * H), dtype)
        results = []
        for one_launch in (False, True):
            cell = cell_class()
            xin = cell.project_inputs(params, inputs)
            if one_launch:
                runner = host.HostLauncher(launch.path, multiprocessors=sms)
                states = forward(cell, params, xin, h0, runner, threads, lanes)
                deltas = backward(cell, params, xin, h0, states, dstates, runner, threads,
                                  lanes)
            else:
                states = cell.forward(params, xin, h0, T)
                deltas = bptt.sweep(cell.backward_stepper(params, xin, h0, states), dstates)
            grads = cell.param_grads(params, inputs, xin, h0, states, deltas)
            results.append({"states": states.copy(), "gates": xin.gates.copy(),
                            "deltas": deltas.copy(), **grads})
        for name in results[0]:
            out[f"persistent {cell_class.__name__} {name} T={T} B={B} H={H}"] = (
                results[1][name], results[0][name])
    return out


def check_persistent_gru(launch, dtype, rng):
    return _check_persistent_gated(launch, dtype, rng, GRUCell, persistent.gru_forward,
                                   persistent.gru_backward, 3, 1)


def check_persistent_lstm(launch, dtype, rng):
    return _check_persistent_gated(launch, dtype, rng, LSTMCell, persistent.lstm_forward,
                                   persistent.lstm_backward, 4, 2)


CHECKS = {"elman_step": check_elman_step, "elman_delta": check_elman_delta, "gru": check_gru,
          "lstm": check_lstm, "softmax": check_softmax, "optimizers": check_optimizers,
          "persistent": check_persistent, "persistent_gru": check_persistent_gru,
          "persistent_lstm": check_persistent_lstm}
# The checks whose family carries a planted sign under -DGPURNN_FAULT_SIGN=-1.
FAULTED = ("elman_step", "gru", "lstm", "softmax", "optimizers", "persistent",
           "persistent_gru", "persistent_lstm")


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("check", CHECKS)
def test_kernels_match_numpy(check, dtype, launch):
    assert_close(CHECKS[check](launch, dtype, np.random.default_rng(7)), dtype)


@pytest.mark.parametrize("check", FAULTED)
def test_a_planted_wrong_sign_is_caught(check, faulty):
    results = CHECKS[check](faulty, np.float64, np.random.default_rng(7))
    worst = max(error(got, expected) for got, expected in results.values())
    assert worst > 1e-3, f"{check}: a flipped sign went unnoticed (error {worst})"


def test_barriers_in_a_launch_without_them_are_an_error(launch, monkeypatch):
    from gpurnn.engine import kernels

    monkeypatch.setitem(kernels.KERNELS, "softmax_xent",
                        kernels.Kernel("softmax.cu", kernels.KERNELS["softmax_xent"].args))
    z = np.zeros((2, 4))
    with pytest.raises(RuntimeError, match="__syncthreads"):
        launch("softmax_xent", np.float64, (1,), (4,),
               (z, np.zeros(2), None, np.zeros(2, np.int64), None, 1.0, 2, 4), shared_mem=32)


def test_accesses_outside_an_array_or_the_shared_memory_are_caught(launch):
    a = np.zeros(6)
    with pytest.raises(RuntimeError, match="argument 0 was written outside its 6 elements"):
        launch("elman_step", np.float64, (1,), (4,), (a, a.copy(), None, 8, 3, 0))
    a, short = np.zeros(6), np.zeros(4)          # reading past ``short`` reads NaN guards
    launch("elman_step", np.float64, (1,), (4,), (a, short, None, 6, 3, 0))
    assert np.isfinite(a[:4]).all() and np.isnan(a[4:]).all()
    z = np.zeros((2, 8))
    with pytest.raises(RuntimeError, match="past its dynamic shared memory"):
        launch("softmax_xent", np.float64, (1,), (8,),
               (z, np.zeros(2), None, np.zeros(2, np.int64), None, 1.0, 2, 8), shared_mem=32)


def test_arguments_are_checked_before_a_launch(launch):
    a = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match="dtype float32"):
        launch("elman_step", np.float32, (1,), (4,), (a, a.astype(np.float64), None, 6, 3, 0))
    with pytest.raises(ValueError, match="C-contiguous"):
        launch("elman_step", np.float32, (1,), (4,), (a, a.T, None, 6, 3, 0))
    with pytest.raises(TypeError, match="takes 6 arguments"):
        launch("elman_step", np.float32, (1,), (4,), (a, a, None, 6, 3))


def test_the_host_build_registers_every_kernel_with_the_table_sizes(launch):
    from gpurnn.engine import kernels

    sizes = {"i32": 4, "i64": 8}
    for name, spec in kernels.KERNELS.items():
        for dtype in DTYPES:
            expected = [sizes.get(kind, np.dtype(dtype).itemsize if kind == "T" else 8)
                        for kind in spec.args]
            assert launch.arg_sizes(kernels.function_name(name, dtype)) == expected, name
