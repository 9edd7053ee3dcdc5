"""The scan kernels (kernels/scan.cu, launched by gpurnn.engine.gpu.scan) run by the host
emulation against the loops of gpurnn.engine.sweeps.scan, within the kernels' rounding
bound (BOUND_FACTOR × scan.rounding_bound); on CuPy where a GPU is present."""
import os

import numpy as np
import pytest

from gpurnn.engine.arrays import backend
from gpurnn.engine.gpu import fused, launches
from gpurnn.engine.gpu import scan as gpu_scan
from gpurnn.engine.gpu.kernels import host
from gpurnn.engine.plan import Plan
from gpurnn.engine.sweeps import scan

_PROBLEM = None
if host.compiler() is None and os.environ.get("GPURNN_REQUIRE_KERNEL_TOOLS") != "1":
    _PROBLEM = "no host C++ compiler (g++) to build the kernels for the host"
pytestmark = pytest.mark.skipif(_PROBLEM is not None, reason=str(_PROBLEM))

DTYPES = (np.float32, np.float64)
# (steps, chunk): one chunk (T ≤ 2), odd and even, non-powers of two, many chunks, a last
# chunk shorter than the others, chunks of one step, a chunk longer than T
CASES = ((1, None), (2, None), (3, None), (4, None), (7, None), (12, None), (37, None),
         (100, None), (7, 1), (8, 3), (5, 9))


@pytest.fixture(scope="module")
def launch():
    return host.HostLauncher(host.build())


def _problem(rng, steps, dtype, constant, batch=3, hidden=5):
    a = rng.uniform(-1, 1, (hidden,) if constant else (steps, batch, hidden))
    draw = [rng.standard_normal(s) for s in ((steps, batch, hidden), (batch, hidden))]
    return (a.astype(dtype),) + tuple(x.astype(dtype) for x in draw)


def _adjoint_bound(a, d, carry, unit):
    """scan.rounding_bound of the adjoint as the forward recurrence it is: reversed time,
    coefficients a_{t+1} (1 at the last step), from the carry."""
    full = np.broadcast_to(a, d.shape)
    coeff = np.concatenate([full[1:], np.ones_like(full[:1])])
    return scan.rounding_bound(coeff[::-1], d[::-1], carry, unit)[::-1]


def _unit(dtype):
    return np.finfo(dtype).eps / 2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("constant", [False, True], ids=["a(T,B,H)", "a(H,)"])
@pytest.mark.parametrize("steps, chunk", CASES)
def test_the_kernels_equal_the_loops_within_the_rounding_bound(steps, chunk, constant, dtype,
                                                               launch, rng):
    a, b, h0 = _problem(rng, steps, dtype, constant)
    bound = gpu_scan.BOUND_FACTOR * scan.rounding_bound(a, b, h0, _unit(dtype))
    got = gpu_scan.linear_scan(a, b, h0, launch=launch, chunk=chunk)
    assert got.dtype == dtype
    assert (np.abs(got - scan.linear_loop(a, b, h0)) <= bound).all()
    for carry in (None, h0):
        G, before = gpu_scan.reverse_scan(a, b, carry, launch=launch, chunk=chunk)
        G_loop, before_loop = scan.reverse_loop(a, b, carry)
        zero = np.zeros_like(h0)
        bound = gpu_scan.BOUND_FACTOR * _adjoint_bound(a, b, zero if carry is None else carry,
                                                       _unit(dtype))
        assert (np.abs(G - G_loop) <= bound).all()
        a0 = np.abs(np.broadcast_to(a, b.shape)[0])        # one more product: a_0 G_0
        assert (np.abs(before - before_loop)
                <= a0 * bound[0] + 2 * _unit(dtype) * np.abs(before_loop)).all()


@pytest.mark.parametrize("steps, chunk", [(1, None), (2, None), (9, 9), (9, 20)])
def test_one_chunk_is_the_loop_to_the_last_bit(steps, chunk, launch, rng):
    a, b, h0 = _problem(rng, steps, np.float64, constant=False)
    assert launches.scan_phases(steps, h0.size, chunk) == [("scan_chunk_states", h0.size)]
    assert (gpu_scan.linear_scan(a, b, h0, launch=launch, chunk=chunk)
            == scan.linear_loop(a, b, h0)).all()
    G, before = gpu_scan.reverse_scan(a, b, h0, launch=launch, chunk=chunk)
    G_loop, before_loop = scan.reverse_loop(a, b, h0)
    assert (G == G_loop).all() and (before == before_loop).all()


def test_out_and_scratch_are_used_in_place(launch, rng):
    """``out`` may be ``b`` itself (the cell's states buffer), and a scratch of
    scan.scratch_shape holds the chunk totals, so the cells' buffers serve both paths."""
    a, b, h0 = _problem(rng, 50, np.float64, constant=False)
    expected = scan.linear_loop(a, b, h0)
    scratch = np.full(scan.scratch_shape(b.shape), np.nan)
    got = gpu_scan.linear_scan(a, b, h0, out=b, scratch=scratch, launch=launch)
    assert got is b and np.allclose(b, expected, rtol=1e-13, atol=0)
    used = 2 * 6 * h0.size                               # L = 8, C = 7: 6 totals (A, B)
    assert not np.isnan(scratch.reshape(-1)[:used]).any()
    assert np.isnan(scratch.reshape(-1)[used:]).all()
    d = rng.standard_normal(b.shape)
    out = np.empty((50, 5, 3)).transpose(0, 2, 1)                          # not contiguous
    G, _ = gpu_scan.reverse_scan(a, d, h0, out=out, launch=launch)
    assert G is out and np.allclose(out, scan.reverse_loop(a, d, h0)[0], rtol=1e-13, atol=0)


def test_without_a_launcher_or_kernels_for_the_dtype_the_array_scan_runs(rng):
    a, b, h0 = _problem(rng, 20, np.float16, constant=True)
    for launcher in (None, object()):           # float16 has no scan kernels: never launched
        np.testing.assert_array_equal(gpu_scan.linear_scan(a, b, h0, launch=launcher),
                                      scan.linear_scan(a, b, h0))
        G, before = gpu_scan.reverse_scan(a, b, h0, launch=launcher)
        G2, before2 = scan.reverse_scan(a, b, h0)
        np.testing.assert_array_equal(G, G2)
        np.testing.assert_array_equal(before, before2)


def test_a_block_is_three_launches_whatever_its_length():
    for steps in (3, 16, 1000, 10**5):
        phases = launches.scan_phases(steps, 8)
        chunk = launches.kernel_chunk_length(steps)
        chunks = -(-steps // chunk)
        assert [k for k, _ in phases] == ["scan_chunk_totals", "scan_carries",
                                         "scan_chunk_states"]
        assert dict(phases) == {"scan_chunk_totals": (chunks - 1) * 8, "scan_carries": 8,
                                "scan_chunk_states": chunks * 8}
        assert chunk * chunk >= steps > (chunk - 1) ** 2                 # L = ⌈√T⌉
        assert 2 * chunk + chunks - 1 <= 3 * np.sqrt(steps) + 2          # a thread's depth


@pytest.mark.parametrize("gpu", ["a100", "h100"])
def test_every_scan_launch_fits_the_device(gpu):
    spec = launches.gpu_spec(gpu)
    for dtype in ("float32", "float64"):
        for steps in (1, 2, 64, 1024, 4096):
            for batch in (1, 8, 256):
                for hidden in (64, 2048):
                    audit = launches.scan_launches(steps, batch, hidden, dtype, spec)
                    assert [l.kernel for l in audit] == [
                        k for k, _ in launches.scan_phases(steps, batch * hidden)]
                    for launch in audit:
                        assert launch.fits and launch.occupancy.blocks_per_sm >= 1
                        assert launch.grid <= 32 * spec.sms


def test_a_planted_fault_in_the_carries_is_caught(rng):
    """-DGPURNN_FAULT_SIGN=-1 flips the sign of each chunk's B as it enters the carry: every
    multi-chunk case fails, the single-chunk one (no carries) does not."""
    faulty = host.HostLauncher(host.build(defines=("GPURNN_FAULT_SIGN=-1",)))
    a, b, h0 = _problem(rng, 12, np.float64, constant=False)
    bound = gpu_scan.BOUND_FACTOR * scan.rounding_bound(a, b, h0, _unit(np.float64))
    wrong = gpu_scan.linear_scan(a, b, h0, launch=faulty)
    assert not (np.abs(wrong - scan.linear_loop(a, b, h0)) <= bound).all()
    G, _ = gpu_scan.reverse_scan(a, b, h0, launch=faulty)
    assert not np.allclose(G, scan.reverse_loop(a, b, h0)[0])
    one = gpu_scan.linear_scan(a[:2], b[:2], h0, launch=faulty)
    assert (one == scan.linear_loop(a[:2], b[:2], h0)).all()


@pytest.mark.parametrize("cell", ["mingru", "minlstm", "lru", "paragru"])
def test_the_diagonal_cells_run_the_kernels_under_a_fused_plan(cell, launch, rng):
    """A diagonal model's scan blocks go through the kernels (3 launches a scan: one scan
    forward, the ParaGRU's one per Newton iteration, and one back per block) when the plan
    is fused and a launcher is on, with the plain plan's loss and gradients; the plain plan
    launches nothing."""
    from gpurnn import Plan as P, make_model
    calls = []

    def counted(*args, **kwargs):
        calls.append(args[0])
        return launch(*args, **kwargs)

    model = make_model(cell, 7, 6, 7, num_layers=2, dtype="float64", seed=3)
    x, y = rng.integers(0, 7, (4, 40)), rng.integers(0, 7, (4, 40))
    model.plan = P(time="scan", block_steps=20)
    with fused.emulate_on_host(counted):
        plain = model.loss_and_grads(x, y)
        assert calls == []
        model.plan = model.plan.replace(kernels="fused")
        log = getattr(model, "newton_log", None)
        if log is not None:
            log.clear()
        fast = model.loss_and_grads(x, y)
    newton = list(log.iterations) if log is not None else []
    scans = [name for name in calls if name.startswith("scan_")]
    # 2 layers × 2 blocks × (forward scans, adjoint) × 3 phases
    forward = sum(newton) if cell == "paragru" else 2 * 2
    assert cell != "paragru" or (len(newton) == 4 and min(newton) >= 2)
    assert len(scans) == (forward + 2 * 2) * 3, calls
    assert fast.loss == pytest.approx(plain.loss, rel=1e-13)
    for name, grad in plain.grads.items():
        np.testing.assert_allclose(fast.grads[name], grad, rtol=1e-11, atol=1e-14,
                                   err_msg=name)


@pytest.mark.skipif(backend.cuda_unavailable_reason() is not None,
                    reason=f"no GPU: {backend.cuda_unavailable_reason()}")
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_the_kernels_equal_the_loops_on_the_gpu(dtype, rng):
    cupy = backend.cupy
    for steps, constant in ((1, False), (37, False), (1000, True)):
        a, b, h0 = (cupy.asarray(x) for x in _problem(rng, steps, dtype, constant))
        launch = fused.launcher_for(Plan(kernels="fused"), b)
        bound = gpu_scan.BOUND_FACTOR * scan.rounding_bound(a, b, h0, _unit(dtype))
        got = gpu_scan.linear_scan(a, b, h0, launch=launch)
        assert bool((cupy.abs(got - scan.linear_loop(a, b, h0)) <= bound).all())
        G, before = gpu_scan.reverse_scan(a, b, h0, launch=launch)
        G_loop, before_loop = scan.reverse_loop(a, b, h0)
        tolerance = 1e-4 if dtype == np.float32 else 1e-12
        assert float(cupy.abs(G - G_loop).max() / cupy.abs(G_loop).max()) <= tolerance
        assert float(cupy.abs(before - before_loop).max()
                     / cupy.abs(before_loop).max()) <= tolerance
