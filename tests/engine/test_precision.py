"""Mixed precision (gpurnn.engine.arrays.precision): the 16-bit arithmetic of the NumPy emulation,
one step's gradients against float64 within a bound from the unit round-off (one-recurrence
and bidirectional stacks), the float32 path unchanged, and the budget planner counting
16-bit bytes."""
import numpy as np
import pytest

from gpurnn.engine.arrays import precision as P
from gpurnn.engine.models.factory import make_model
from gpurnn.engine.plan import Plan

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16, F16 = np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16)
MIXED = ["bf16-mixed", "fp16-mixed"]


# ------------------------------------------------------------ the emulated arithmetic
@pytest.mark.parametrize("dtype", [BF16, F16])
def test_elementwise_ops_are_ieee_16_bit_and_sums_accumulate_in_float32(dtype):
    rng = np.random.default_rng(0)
    a, b = (rng.normal(size=(64, 48)).astype(dtype) for _ in range(2))
    ma, mb = a.view(P.MixedArray), b.view(P.MixedArray)
    # one rounding of the exact result: what IEEE 16-bit arithmetic gives
    for got, wide in ((ma * mb, a.astype(np.float64) * b.astype(np.float64)),
                      (ma + mb, a.astype(np.float64) + b.astype(np.float64)),
                      (np.tanh(ma), np.tanh(a.astype(np.float32)))):
        assert type(got) is P.MixedArray and got.dtype == dtype
        assert np.array_equal(np.asarray(got), wide.astype(np.float32).astype(dtype))
    # in place into a 16-bit buffer: the same rounding
    out = np.empty_like(ma)
    np.multiply(ma, mb, out=out)
    assert np.array_equal(np.asarray(out), np.asarray(ma * mb))
    # sums, means and GEMMs accumulate in float32 (the storage type's own sum stalls)
    ones = np.ones((4096, 3), dtype)
    assert float(ones.sum(axis=0)[0]) < 4096                       # NumPy's own: stalls
    assert float(ones.view(P.MixedArray).sum(axis=0)[0]) == 4096.0
    assert float(ones.view(P.MixedArray).sum()) == 3 * 4096.0
    assert float(np.ones((4096, 3), dtype).view(P.MixedArray).mean(axis=0)[0]) == 1.0
    gemm = ma @ mb.T
    exact = a.astype(np.float32) @ b.astype(np.float32).T
    assert gemm.dtype == dtype and np.array_equal(np.asarray(gemm), exact.astype(dtype))
    # scatter-add with repeated rows accumulates in float32 too
    target = np.zeros((2, 3), dtype).view(P.MixedArray)
    np.add.at(target, np.zeros(4096, int), np.ones((4096, 3), dtype).view(P.MixedArray))
    assert float(target[0, 0]) == 4096.0


def test_the_array_module_keeps_16_bit_buffers_mixed():
    xp = P.xp
    assert type(xp.empty((3, 2), dtype=BF16)) is P.MixedArray
    assert type(xp.zeros((3,), dtype=np.float32)) is np.ndarray
    assert xp.float32 is np.float32 and xp.add is np.add
    from gpurnn.engine.arrays.backend import get_array_module
    assert get_array_module(np.zeros(2), xp.ones(2, dtype=F16)) is xp


def test_precision_names_and_errors():
    assert Plan().precision == "float32"
    with pytest.raises(ValueError, match="unknown precision 'fp8'.*'bf16-mixed'"):
        Plan(precision="fp8")
    for bidirectional in (False, True):
        model = make_model("gru", 10, 8, 10, dtype="float64", bidirectional=bidirectional)
        with pytest.raises(ValueError, match="float32 master weights"):
            model.loss_and_grads(np.zeros((2, 3), int), np.zeros((2, 3), int),
                                 precision="bf16-mixed")
    assert P.storage_dtype("bf16-mixed") == BF16 and P.storage_dtype("tf32") == np.float32


def test_missing_ml_dtypes_names_the_fix(monkeypatch):
    import builtins
    real = builtins.__import__

    def no_ml_dtypes(name, *args, **kwargs):
        if name == "ml_dtypes":
            raise ImportError("No module named 'ml_dtypes'")
        return real(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_ml_dtypes)
    with pytest.raises(ImportError, match="pip install ml_dtypes"):
        P.storage_dtype("bf16-mixed")
    assert P.storage_dtype("fp16-mixed") == F16                     # float16 needs nothing


# ------------------------------------------------------------ one step against float64
CASES = [("elman", {}), ("gru", {}), ("lstm", {}),
         ("lstm", dict(num_layers=2, embedding_size=16)),
         ("gru", dict(num_layers=2, dropout=0.3, weight_drop=0.2))]
# ‖g̃ − g‖ / ‖g‖ ≤ C·u per parameter. Every stored value (weight copy, input projection,
# gate, state, delta, GEMM result) carries a relative error ≤ u; a gradient is a sum over
# T steps and B rows of products of a handful of them, whose errors are independent and
# partly cancel, so the first-order error is a few u. Measured (B 8, T 24, H 32): at most
# 2.6 u (bf16) and 3.9 u (fp16) in normwise terms; C = 8 leaves room for other seeds and
# sizes, while a step whose weights and states pass through bfloat16 under fp16-mixed
# (8× float16's u) misses it.
C = 8


def relative_errors(cell, options, precision, ragged=False, loss_scale=1.0, **plan):
    rng = np.random.default_rng(3)
    B, T, V = 8, 24, 30
    x, y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    mask = None
    if ragged:                                           # right-padded, lengths 1 … T
        mask = (np.arange(T)[None, :] < rng.integers(1, T + 1, B)[:, None]).astype(float)
    model = make_model(cell, V, 32, V, seed=1, **options)
    model.plan = Plan(precision=precision, **plan)
    reference = make_model(cell, V, 32, V, dtype="float64", seed=1, **options)
    reference.plan = Plan(**plan)
    for name, value in model.params.items():
        setattr(reference, name, value)                  # the same weights, exactly
    if options.get("dropout") or options.get("weight_drop"):
        with reference.fixed_dropout():                  # the same masks in both
            exact = reference.loss_and_grads(x, y, mask=mask)
        with model.fixed_dropout():
            got = model.loss_and_grads(x, y, mask=mask, loss_scale=loss_scale)
    else:
        exact = reference.loss_and_grads(x, y, mask=mask)
        got = model.loss_and_grads(x, y, mask=mask, loss_scale=loss_scale)
    errors = {name: float(np.linalg.norm(got.grads[name] - g) / np.linalg.norm(g))
              for name, g in exact.grads.items() if np.linalg.norm(g) > 0}
    return errors, abs(got.loss - exact.loss) / exact.loss, got


@pytest.mark.parametrize("cell,options", CASES)
@pytest.mark.parametrize("precision", MIXED)
def test_one_step_gradients_within_the_unit_roundoff_bound(cell, options, precision):
    u = P.unit_roundoff(precision)
    errors, loss_error, got = relative_errors(cell, options, precision)
    assert all(value.dtype == np.float32 and type(value) is np.ndarray
               for value in got.grads.values())
    assert loss_error <= C * u
    worst = max(errors, key=errors.get)
    assert errors[worst] <= C * u, (worst, errors[worst] / u)
    assert errors[worst] > u / 64                        # it really ran in 16 bits


# Bidirectional stacks run both directions of every layer on the 16-bit weight copy, layer
# by layer; the same bound holds. Measured: at most 2.8 u (LSTM), 3.6 u (2-layer LSTM with
# embedding, fp16) and 4.6 u (LRU's nu_log_reverse, bf16).
BIDIRECTIONAL = CASES + [("mingru", {}), ("minlstm", dict(num_layers=2)), ("lru", {})]


@pytest.mark.parametrize("cell,options", BIDIRECTIONAL)
@pytest.mark.parametrize("precision", MIXED)
def test_bidirectional_gradients_within_the_unit_roundoff_bound(cell, options, precision):
    u = P.unit_roundoff(precision)
    errors, loss_error, got = relative_errors(cell, dict(options, bidirectional=True),
                                              precision)
    assert all(value.dtype == np.float32 and type(value) is np.ndarray
               for value in got.grads.values())
    parts = got.last_hidden if isinstance(got.last_hidden, tuple) else (got.last_hidden,)
    assert all(part.dtype == np.float32 and type(part) is np.ndarray for part in parts)
    assert loss_error <= C * u
    worst = max(errors, key=errors.get)
    assert errors[worst] <= C * u, (worst, errors[worst] / u)
    assert errors[worst] > u / 64


@pytest.mark.parametrize("time", ["loop", "scan"])
@pytest.mark.parametrize("precision", MIXED)
def test_the_paragru_by_the_loop_or_by_newton_within_the_bound(time, precision):
    """The ParaGRU's forward step by step or by Newton's iterations in 16 bits (stopping at
    the storage type's rounding), 2 layers, against float64 run the same way."""
    u = P.unit_roundoff(precision)
    errors, loss_error, _ = relative_errors("paragru", dict(num_layers=2), precision,
                                            time=time)
    assert loss_error <= C * u
    worst = max(errors, key=errors.get)
    assert u / 64 < errors[worst] <= C * u, (worst, errors[worst] / u)


@pytest.mark.parametrize("precision", MIXED)
def test_bidirectional_ragged_and_loss_scaled_within_the_bound(precision):
    """A ragged batch (each reverse direction starting at its own last step) with the loss
    scaled by 2^10 before the sweeps and the gradients divided back."""
    u = P.unit_roundoff(precision)
    errors, loss_error, _ = relative_errors("lstm", dict(num_layers=2, bidirectional=True),
                                            precision, ragged=True, loss_scale=1024.0)
    assert loss_error <= C * u
    assert max(errors.values()) <= C * u, max(errors.values()) / u


@pytest.mark.parametrize("precision", MIXED)
def test_a_budget_gives_the_gradients_of_keeping_everything_to_rounding(precision):
    """Recomputed blocks repeat the same 16-bit operations; blocks sum in float32."""
    kept, _, a = relative_errors("lstm", {}, precision, block_steps=6)
    budget, _, b = relative_errors("lstm", {}, precision, block_steps=6,
                                   memory_budget="1100KB")
    for name in a.grads:
        assert np.array_equal(a.grads[name], b.grads[name]), name


def test_layer_norm_and_dense_inputs_run_in_16_bits():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 10, 5))
    y = rng.normal(size=(4, 10, 3))
    reference = make_model("lstm", 5, 16, 3, output="identity", layer_norm=True,
                           dtype="float64")
    exact = reference.loss_and_grads(x, y)
    model = reference.copy(dtype="float32")
    for precision in MIXED:
        got = model.loss_and_grads(x, y, precision=precision)
        u = P.unit_roundoff(precision)
        # layer norm divides by the spread of its row: the normalised values' relative
        # error grows by |x|/σ, so its bound is looser
        for name, g in exact.grads.items():
            error = np.linalg.norm(got.grads[name] - g) / np.linalg.norm(g)
            assert error <= 64 * u, (precision, name, error / u)


# ------------------------------------------------------------ float32 unchanged
@pytest.mark.parametrize("bidirectional", [False, True])
def test_float32_and_tf32_and_unit_loss_scale_are_todays_path_bit_for_bit(bidirectional):
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 20, (4, 12)), rng.integers(0, 20, (4, 12))
    model = make_model("lstm", 20, 16, 20, num_layers=2, embedding_size=8,
                       bidirectional=bidirectional)
    today = model.loss_and_grads(x, y)
    for options in (dict(precision="float32"), dict(precision="tf32"), dict(loss_scale=1.0)):
        again = model.loss_and_grads(x, y, **options)
        assert again.loss == today.loss
        for name in today.grads:
            assert np.array_equal(again.grads[name], today.grads[name]), (options, name)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_a_power_of_two_loss_scale_is_exact_in_float32(bidirectional):
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 20, (4, 12)), rng.integers(0, 20, (4, 12))
    model = make_model("gru", 20, 16, 20, bidirectional=bidirectional)
    plain, scaled = model.loss_and_grads(x, y), model.loss_and_grads(x, y, loss_scale=1024.0)
    assert scaled.loss == pytest.approx(plain.loss, rel=1e-6)
    for name in plain.grads:
        assert np.array_equal(plain.grads[name], scaled.grads[name]), name


@pytest.mark.parametrize("bidirectional", [False, True])
def test_float16_loss_scale_overflows_to_inf(bidirectional):
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 20, (4, 12)), rng.integers(0, 20, (4, 12))
    model = make_model("lstm", 20, 16, 20, bidirectional=bidirectional)
    got = model.loss_and_grads(x, y, precision="fp16-mixed", loss_scale=2.0 ** 24)
    assert np.isfinite(got.loss)
    assert not all(np.isfinite(g).all() for g in got.grads.values())


# ------------------------------------------------------------ the budget planner
@pytest.mark.parametrize("precision", MIXED)
def test_a_16_bit_step_keeps_twice_the_states_in_a_budget(precision):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 50, (8, 400)), rng.integers(0, 50, (8, 400))
    model = make_model("lstm", 50, 64, 50)
    model.plan = Plan(memory_budget="2MB", block_steps=10)
    wide = model.schedule(x, y)
    model.plan = Plan(memory_budget="2MB", block_steps=10, precision=precision)
    narrow = model.schedule(x, y)
    assert narrow.footprint.checkpoint * 2 == wide.footprint.checkpoint
    assert narrow.footprint.forward * 2 <= wide.footprint.forward * 1.05
    held = lambda s: s.kept * s.footprint.forward + s.slots * s.footprint.checkpoint  # noqa
    assert narrow.kept >= 2 * wide.kept and narrow.forwards < wide.forwards
    assert held(narrow) <= 2 * 1024 * 1024


def test_a_16_bit_step_holds_half_the_bytes_of_a_float32_one():
    """The cache is really 16-bit: keeping every state of a long sequence, the step's peak
    is well under float32's. (On NumPy each emulated operation also makes short-lived
    float32 copies of its operands, which a memory budget counts; CuPy makes none.)"""
    import tracemalloc
    rng = np.random.default_rng(5)
    x = rng.normal(size=(8, 2000, 8)).astype(np.float32)
    y = rng.normal(size=(8, 2000, 8)).astype(np.float32)
    peaks = {}
    for precision in ("float32", "bf16-mixed"):
        model = make_model("lstm", 8, 16, 8, output="identity", seed=0)
        model.plan = Plan(block_steps=24, precision=precision)
        tracemalloc.start()
        try:
            model.loss_and_grads(x, y)
            peaks[precision] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peaks["bf16-mixed"] <= 0.65 * peaks["float32"], peaks
