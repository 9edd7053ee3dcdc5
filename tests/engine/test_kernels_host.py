"""The kernel sources built for the host and run over an emulated grid, against NumPy.

Each check launches the kernels as the GPU would (their own thread-to-element mapping, small
blocks and grids so grid-stride loops and several blocks run) and compares with the NumPy
path: float32 to 1e-6, float64 to 1e-12, relative to the largest expected value. A build
with one sign flipped in each family's maths (-DGPURNN_FAULT_SIGN=-1) must fail them all.

The 16-bit instantiations (float16, bfloat16: 16-bit loads and stores, float32 maths) are
compared with the plain mixed-precision path on the same 16-bit arrays (MixedArray, which
rounds every elementwise operation to the storage type), to BOUND16 u of the storage
type's unit round-off u (2^-11, 2^-8), normwise as above; see BOUND16 for the reasoning.
"""
import os

import numpy as np
import pytest

import ctypes

from gpurnn.engine.sweeps import bptt
from gpurnn.engine.gpu import fused, persistent
from gpurnn.engine.arrays import precision
from gpurnn.engine.recurrences.activations import ACTIVATIONS, apply, derivative_from_output
from gpurnn.engine.recurrences.cells import ElmanCell
from gpurnn.engine.recurrences.gated import GRUCell, LSTMCell
from gpurnn.engine.gpu.kernels import host
from gpurnn.engine.plan import Plan
from gpurnn.training import optim

_PROBLEM = None
if host.compiler() is None and os.environ.get("GPURNN_REQUIRE_KERNEL_TOOLS") != "1":
    _PROBLEM = "no host C++ compiler (g++) to build the kernels for the host"
pytestmark = pytest.mark.skipif(_PROBLEM is not None, reason=str(_PROBLEM))

ml_dtypes = pytest.importorskip("ml_dtypes")  # in the test extra: bfloat16 for NumPy

TOLERANCE = {np.float32: 1e-6, np.float64: 1e-12}
DTYPES = (np.float32, np.float64)
UNIT_ROUNDOFF = {np.float16: 2.0 ** -11, ml_dtypes.bfloat16: 2.0 ** -8}
DTYPES16 = tuple(UNIT_ROUNDOFF)
# The bound on the 16-bit kernels against the plain mixed path, in units of u. Both start
# from the same 16-bit inputs; a kernel rounds each stored value once from float32 maths
# (relative error ≤ u, plus float32's 2^-24 per operation), the plain path rounds each of
# the k ≤ 6 operations of an element's gate maths (≤ k·u, to first order). So one element
# of one step differs by at most (k + 1)·u ≈ 7u of its magnitude; through the recurrence
# (states feeding the next step over T = 6 steps, contractive gates) and the backward sweep
# and weight-gradient GEMMs (sums of products of such values, normwise) the differences
# add, not multiply: 7u per stored value over the 3 rounded stages (forward, sweep, GEMM)
# gives about 20u; the bound is 32u, a fifth of a planted sign's error for bfloat16.
BOUND16 = 32
TOLERANCE.update({dtype: BOUND16 * u for dtype, u in UNIT_ROUNDOFF.items()})


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
    """Standard normal values of ``dtype``; a 16-bit one as a MixedArray (what a mixed
    step's arrays are on NumPy)."""
    values = (rng.standard_normal(shape) * scale).astype(dtype)
    return values.view(precision.MixedArray) if dtype in UNIT_ROUNDOFF else values


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


def check_elman(launch, dtype, rng):
    H, I = 5, 4
    params = {"weight_ih": random(rng, (H, I), dtype), "weight_hh": random(rng, (H, H), dtype),
              "bias_ih": random(rng, H, dtype)}
    return _compare_cells(ElmanCell, params, random(rng, (6, 3, I), dtype),
                          random(rng, (3, H), dtype), launch)


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
               shared_mem=16 * max(4, np.dtype(dtype).itemsize))  # 16-bit: float buffer
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


def check_model(launch, dtype, rng):
    """A whole mixed-precision step (bf16-mixed or fp16-mixed) of a 2-layer LSTM and a GRU
    language model with the fused plan (cell kernels on the 16-bit arrays, the softmax
    kernel on the float32 output layer) against the plain plan: the loss and every
    gradient."""
    import gpurnn

    name = "fp16-mixed" if dtype is np.float16 else "bf16-mixed"
    out = {}
    x = rng.integers(0, 20, (3, 7))
    for label, model in (("lstm", gpurnn.LSTM(20, 6, 20, num_layers=2, seed=3)),
                         ("gru", gpurnn.GRU(20, 6, 20, seed=4))):
        results = []
        for kernels in ("plain", "fused"):
            with fused.emulate_on_host(launch):
                got = model.loss_and_grads(x, x, precision=name, truncate=None) \
                    if kernels == "plain" else _fused_step(model, x, name)
            results.append(got)
        (loss0, grads0, _), (loss1, grads1, _) = results
        out[f"{label} loss"] = (np.array([loss1]), np.array([loss0]))
        out.update({f"{label} d{k}": (grads1[k], grads0[k]) for k in grads0})
    return out


def _fused_step(model, x, name):
    saved = model.plan
    model.plan = Plan(kernels="fused", persistent=False)
    try:
        return model.loss_and_grads(x, x, precision=name)
    finally:
        model.plan = saved


CHECKS = {"elman_step": check_elman_step, "elman_delta": check_elman_delta, "gru": check_gru,
          "lstm": check_lstm, "softmax": check_softmax, "optimizers": check_optimizers,
          "persistent": check_persistent, "persistent_gru": check_persistent_gru,
          "persistent_lstm": check_persistent_lstm}
# The 16-bit instantiations, against the plain mixed path.
CHECKS16 = {"elman_step": check_elman_step, "elman_delta": check_elman_delta,
            "elman": check_elman, "gru": check_gru, "lstm": check_lstm,
            "softmax": check_softmax, "model": check_model}
FAULTED16 = ("elman_step", "elman", "gru", "lstm", "softmax", "model")
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


@pytest.mark.parametrize("dtype", DTYPES16, ids=["float16", "bfloat16"])
@pytest.mark.parametrize("check", CHECKS16)
def test_16bit_kernels_match_the_plain_mixed_path(check, dtype, launch):
    results = CHECKS16[check](launch, dtype, np.random.default_rng(7))
    for name, (got, expected) in results.items():
        assert got.shape == expected.shape, name
        if name.split()[-1] != "loss" and check not in ("model",):
            assert got.dtype == expected.dtype == np.dtype(dtype), name
        assert error(got, expected) <= TOLERANCE[dtype], \
            f"{name}: {error(got, expected) / UNIT_ROUNDOFF[dtype]:.1f} u"


@pytest.mark.parametrize("dtype", DTYPES16, ids=["float16", "bfloat16"])
@pytest.mark.parametrize("check", FAULTED16)
def test_a_planted_wrong_sign_is_caught_in_16bit(check, dtype, faulty):
    results = CHECKS16[check](faulty, dtype, np.random.default_rng(7))
    worst = max(error(got, expected) for got, expected in results.values())
    assert worst > 2 * TOLERANCE[dtype], f"{check}: a flipped sign went unnoticed ({worst})"


def _shim(launch, name):
    function = getattr(launch._lib, name)
    function.restype = None
    return function


@pytest.mark.parametrize("kind, dtype", [(0, np.float16), (1, "bfloat16")])
def test_the_host_16bit_types_round_as_numpy_and_ml_dtypes(kind, dtype, launch):
    """The host shim's widening is exact for all 65536 bit patterns, and its rounding of
    float32 to 16 bits is round-to-nearest-even bit for bit: every 16-bit value, every
    midpoint between neighbours (the ties) and the floats either side, 2^20 random float32
    bit patterns, overflow, zeros, infinities and NaN."""
    dtype = np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    bits = np.arange(65536, dtype=np.uint16)
    exact = bits.view(dtype).astype(np.float32)
    widened = np.empty(65536, np.float32)
    _shim(launch, "gpurnn_widen16")(ctypes.c_int(kind), ctypes.c_void_p(bits.ctypes.data),
                                    ctypes.c_void_p(widened.ctypes.data), ctypes.c_longlong(65536))
    nan = np.isnan(exact)
    assert (np.isnan(widened) == nan).all()
    assert (widened[~nan].view(np.uint32) == exact[~nan].view(np.uint32)).all()
    values = np.sort(exact[np.isfinite(exact)])
    ties = ((values[1:].astype(np.float64) + values[:-1]) / 2).astype(np.float32)
    rng = np.random.default_rng(0)
    floats = np.concatenate([
        exact, ties, np.nextafter(ties, np.float32(np.inf)),
        np.nextafter(ties, np.float32(-np.inf)),
        rng.integers(0, 2 ** 32, 2 ** 20, dtype=np.uint64).astype(np.uint32).view(np.float32),
        np.float32([65504, 65519.99, 65520, 3.4e38, -65520, 0, -0.0, np.inf, -np.inf])])
    got = np.empty(floats.size, np.uint16)
    _shim(launch, "gpurnn_narrow16")(ctypes.c_int(kind), ctypes.c_void_p(floats.ctypes.data),
                                     ctypes.c_void_p(got.ctypes.data),
                                     ctypes.c_longlong(floats.size))
    with np.errstate(over="ignore", invalid="ignore"):
        expected = floats.astype(dtype).view(np.uint16)
    nan = np.isnan(floats)
    assert (got[~nan] == expected[~nan]).all()
    assert np.isnan(got[nan].view(dtype).astype(np.float32)).all()


def test_16bit_arrays_decline_where_no_16bit_kernel_is_built(launch):
    p = np.zeros(4, np.float16)
    with pytest.raises(TypeError, match="float32 or float64 arrays, got float16"):
        launch("sgd", np.float16, (1,), (4,), (p, p.copy(), 4, 0.1))
    choice = Plan(kernels="fused", persistent=True).choose(
        "lstm", "forward", ml_dtypes.bfloat16, 8, 4, 64, launch)
    assert choice.path == "step" and "float32 and float64 only" in choice.reason


def test_barriers_in_a_launch_without_them_are_an_error(launch, monkeypatch):
    from gpurnn.engine.gpu import kernels

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
    from gpurnn.engine.gpu import kernels

    sizes = {"i32": 4, "i64": 8}
    for name, spec in kernels.KERNELS.items():
        for dtype in spec.dtypes:
            itemsize = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}[dtype]
            expected = [sizes.get(kind, itemsize if kind == "T" else 8)
                        for kind in spec.args]
            assert launch.arg_sizes(kernels.function_name(name, dtype)) == expected, name
