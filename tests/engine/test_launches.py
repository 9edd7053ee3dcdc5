"""The launch audit on the CPU: the kernels' ptxas resources (committed table, and a fresh
compile where nvcc is installed), the occupancy arithmetic, and every launch a plan would
make for hidden 64…2048, batch 1…256 and both dtypes checked against A100 and H100 limits.

GPURNN_REQUIRE_KERNEL_TOOLS=1 (CI) turns a missing nvcc into a failure instead of a skip.
"""
import os

import numpy as np
import pytest

from gpurnn.engine.gpu import kernels, launches, persistent
from gpurnn.engine.plan import Plan, _Named

ARCHS = ("sm_80", "sm_90")
HIDDEN = (64, 128, 256, 512, 1024, 2048)
BATCH = (1, 8, 64, 256)
DTYPES = ("float32", "float64")


def _functions():
    """Every instantiation: float32 and float64, and float16/bfloat16 where built."""
    return set(kernels.functions())


def test_the_committed_table_covers_every_kernel_without_spills_within_its_bounds():
    table = launches.RESOURCES
    for arch in ARCHS:
        assert set(table["kernels"][arch]) == _functions(), arch
    assert set(table["bounds"]) == _functions()
    assert launches.check_resources(table["kernels"], table["bounds"]) == []


def test_the_check_catches_a_spill_and_a_growth_past_a_bound():
    table = {"sm_90": {"lstm_persistent_forward_f32": dict(
        launches.resources("lstm_persistent_forward_f32", "sm_90"))}}
    bounds = {"lstm_persistent_forward_f32": dict(
        launches.RESOURCES["bounds"]["lstm_persistent_forward_f32"])}
    assert launches.check_resources(table, bounds) == []
    table["sm_90"]["lstm_persistent_forward_f32"]["spill_stores"] = 8
    bounds["lstm_persistent_forward_f32"]["registers"] = 16
    problems = launches.check_resources(table, bounds)
    assert any("spills" in p for p in problems) and any("past the bound" in p for p in problems)


def test_ptxas_output_is_parsed():
    log = """ptxas info    : Compiling entry function 'k_f32' for 'sm_90'
ptxas info    : Function properties for k_f32
    16 bytes stack frame, 4 bytes spill stores, 8 bytes spill loads
ptxas info    : Used 72 registers, used 1 barriers, 2048 bytes smem"""
    assert launches.parse_ptxas(log) == {"k_f32": {"registers": 72, "spill_stores": 4,
                                                   "spill_loads": 8, "stack": 16,
                                                   "static_shared": 2048}}


_NO_NVCC = launches.nvcc() is None and os.environ.get("GPURNN_REQUIRE_KERNEL_TOOLS") != "1"


@pytest.mark.skipif(_NO_NVCC, reason="nvcc (CUDA toolkit or nvidia-cuda-nvcc) not installed")
def test_a_fresh_compile_spills_nothing_and_stays_within_the_recorded_bounds():
    fresh = launches.ptxas_resources(ARCHS)
    for arch in ARCHS:
        assert set(fresh[arch]) == _functions(), arch
    assert launches.check_resources(fresh, launches.RESOURCES["bounds"]) == []


def test_occupancy_is_the_calculators_arithmetic():
    a100, h100 = launches.GPUS["a100"], launches.GPUS["h100"]
    # 256 threads, 32 registers: 1024 registers a warp, 64 warps → 8 blocks (as the warps)
    assert launches.occupancy(h100, 256, 32, 0).blocks_per_sm == 8
    # 64 registers: 2048 a warp → 32 warps → 4 blocks, register-limited
    got = launches.occupancy(a100, 256, 64, 0)
    assert (got.blocks_per_sm, got.limited_by) == (4, "registers")
    # 40 registers round up to 1280 a warp: 51 warps → 6 blocks of 8 warps
    assert launches.occupancy(h100, 256, 40, 0).blocks_per_sm == 6
    # 48 KiB dynamic + 1 KiB reserved: 3 blocks in A100's 164 KiB, 4 in H100's 228 KiB
    assert launches.occupancy(a100, 256, 32, 48 * 1024).blocks_per_sm == 3
    assert launches.occupancy(h100, 256, 32, 48 * 1024).blocks_per_sm == 4
    over = launches.occupancy(a100, 256, 32, 164 * 1024)
    assert over.blocks_per_sm == 0 and over.limited_by == "shared memory per block"
    assert launches.occupancy(h100, 1024, 65, 0).blocks_per_sm == 0   # 66560 > 65536 a block


def test_the_audit_shape_is_the_one_the_kernels_are_launched_with():
    class Device:
        multiprocessors, block_size = 132, 256

        def max_cooperative_blocks(self, *args):
            return 10**6

    for kernel in ("elman_persistent_forward", "gru_persistent_forward",
                   "lstm_persistent_backward"):
        for hidden, batch in ((64, 1), (500, 8), (2048, 256)):
            got = persistent.launch_shape(kernel, np.dtype("float32"), hidden, Device(), None,
                                          None, batch)
            launch = launches.persistent_launch(kernel, "float32", hidden, batch, "h100")
            assert got == (launch.grid, launch.block, 32, launch.rows, launch.shared)


@pytest.mark.parametrize("gpu", ["a100", "h100"])
@pytest.mark.parametrize("cell", ["elman", "gru", "lstm"])
def test_every_launch_a_plan_makes_fits_the_device(cell, gpu):
    """hidden 64…2048 × batch 1…256 × float32/float64, forward and backward, under every
    kernels choice: a persistent launch is chosen only where its block fits (shared memory
    within the opt-in, registers within the block's) and its cooperative grid is within the
    blocks resident at once; elsewhere the plan says why and runs steps."""
    spec = launches.gpu_spec(gpu)
    named = _Named(spec)
    chosen = set()
    for persistent_choice in (None, True):
        plan = Plan(kernels="auto", persistent=persistent_choice)
        for hidden in HIDDEN:
            for batch in BATCH:
                for dtype in DTYPES:
                    for phase in ("forward", "backward"):
                        choice = plan.choose(cell, phase, np.dtype(dtype), 64, batch, hidden,
                                             named)
                        chosen.add(choice.path)
                        audit = choice.costs["launch"]
                        if choice.path == "persistent":
                            launch = choice.launch
                            used = launches.resources(f"{launch.kernel}_"
                                                      f"{'f32' if dtype == 'float32' else 'f64'}",
                                                      spec.arch)
                            assert launch.shared + used["static_shared"] \
                                <= spec.shared_per_block_optin
                            assert launch.block * used["registers"] <= spec.registers_per_block
                            assert launch.block <= spec.threads_per_block
                            occ = launches.occupancy(spec, launch.block, used["registers"],
                                                     launch.shared, used["static_shared"])
                            assert 1 <= occ.blocks_per_sm
                            assert launch.grid <= occ.blocks_per_sm * spec.sms
                            assert launch.grid * launch.rows >= hidden
                        else:
                            for step in launches.step_launches(cell, phase, dtype, hidden,
                                                               batch, spec):
                                assert step.fits, step.reason
                            if not audit.fits:
                                assert audit.reason in choice.reason
                        if persistent_choice and audit.fits:
                            assert choice.path == "persistent"
    assert "persistent" in chosen and "step" in chosen


def test_a_planted_oversize_makes_the_plan_run_steps_and_say_why():
    """LSTM hidden 2048 in float32: 16 units × 8192 values of W per block, 512 KiB, over the
    227 KiB an H100 block may have; hidden 512 fits."""
    named = _Named(launches.GPUS["h100"])
    plan = Plan(kernels="fused", persistent=True)
    fits = plan.choose("lstm", "forward", np.dtype("float32"), 64, 8, 512, named)
    assert fits.path == "persistent"
    over = plan.choose("lstm", "forward", np.dtype("float32"), 64, 8, 2048, named)
    assert over.path == "step"
    assert "shared memory per block" in over.reason and "232448" in over.reason
    report = str(plan.explain(cell="lstm", hidden=2048, batch=8, steps=64, gpu="h100"))
    assert "forward: step" in report and "shared memory" in report


def test_named_gpus_and_their_published_limits():
    a100, h100 = launches.gpu_spec("A100"), launches.gpu_spec("nvidia-h100")
    assert (a100.sms, a100.shared_per_block_optin, a100.shared_per_sm) == (108, 166912, 167936)
    assert (h100.sms, h100.shared_per_block_optin, h100.shared_per_sm) == (132, 232448, 233472)
    with pytest.raises(ValueError, match="unknown GPU"):
        launches.gpu_spec("v100")
    attrs = {"ComputeCapabilityMajor": 8, "ComputeCapabilityMinor": 0, "MultiProcessorCount": 108,
             "MaxSharedMemoryPerMultiprocessor": 167936, "MaxSharedMemoryPerBlockOptin": 166912}
    spec = launches.device_spec(attrs, "A100-PCIE-40GB")
    assert (spec.arch, spec.sms, spec.shared_per_block_optin) == ("sm_80", 108, 166912)


def test_a_models_plan_explains_its_step():
    from gpurnn.engine.models.factory import make_model

    model = make_model("gru", 11, 256, 11, num_layers=2, dtype="float32", seed=0)
    model.plan = Plan(kernels="auto")
    report = model.plan.explain(model, batch=8, steps=300, gpu="a100")
    assert report.num_layers == 2 and report.cell == "gru" and report.hidden == 256
    assert set(report.paths().values()) <= {"plain", "step", "persistent"}
    text = str(report)
    assert "NVIDIA A100" in text and "3 block(s) of 128 steps" in text
    assert "block of 44 steps" in text                       # the last, shorter block
    projected = Plan(kernels="fused").explain(cell="lstm", hidden=64, batch=2, steps=8,
                                              proj_size=16, gpu="h100")
    assert set(projected.paths().values()) == {"plain"} and "proj_size" in str(projected)
    truncated = Plan(kernels="fused", persistent=True).explain(
        cell="elman", hidden=64, batch=2, steps=8, truncate=2, gpu="h100")
    assert truncated.paths() == {(8, "forward"): "persistent", (8, "backward"): "step"}


@pytest.mark.parametrize("gpu", ["a100", "h100"])
def test_16bit_launches_run_the_step_kernels_and_fit_the_device(gpu):
    """float16 and bfloat16 (the mixed precisions' storage): the per-step kernels'
    launches fit for every size; the persistent kernels, built for float32/float64 only,
    are never chosen, and the plan says so."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    spec = launches.gpu_spec(gpu)
    named = _Named(spec)
    for dtype in (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)):
        for cell in ("elman", "gru", "lstm"):
            for hidden in HIDDEN:
                for batch in BATCH:
                    for phase in ("forward", "backward"):
                        choice = Plan(kernels="auto", persistent=True).choose(
                            cell, phase, dtype, 64, batch, hidden, named)
                        assert choice.path in ("step", "plain")
                        assert "float32 and float64 only" in choice.reason
                        for step in launches.step_launches(cell, phase, dtype, hidden,
                                                           batch, spec):
                            assert step.fits, step.reason
                            assert step.kernel + "_" + kernels.suffix(dtype) in \
                                launches.RESOURCES["kernels"][spec.arch]
