"""The persistent kernels through the engine's whole-sweep hook, on the host emulation.

A fused plan with ``persistent=True`` runs each block's forward and full-BPTT backward as one
persistent launch each (``bptt.run`` hands the block to ``Cell.backward_sweep`` with the
carry of the next block); everything must equal the plain path (float64 to 1e-12): one and
two layers with an embedding, ragged masks, memory budgets that recompute blocks, chunked
state. Where the persistent kernels cannot run (windowed truncation, a dropout state mask,
an LSTM projection, layer norm, a launch that does not fit) the plan runs the per-step
kernels or plain, says why, and the results are the same.
"""
import os

import numpy as np
import pytest

from gpurnn.engine.gpu import fused, persistent
from gpurnn.engine.arrays.backend import to_host
from gpurnn.engine.models.factory import make_model
from gpurnn.engine.gpu.kernels import host
from gpurnn.engine.plan import Plan

_PROBLEM = None
if host.compiler() is None and os.environ.get("GPURNN_REQUIRE_KERNEL_TOOLS") != "1":
    _PROBLEM = "no host C++ compiler (g++) to build the kernels for the host"
pytestmark = pytest.mark.skipif(_PROBLEM is not None, reason=str(_PROBLEM))

TOLERANCE = {"float32": 2e-6, "float64": 1e-12}
PERSISTENT = Plan(kernels="fused", persistent=True, block_steps=4)


class Recording(host.HostLauncher):
    """The host launcher, recording each kernel it launches."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def __call__(self, kernel, *args, **kwargs):
        self.calls.append(kernel)
        return super().__call__(kernel, *args, **kwargs)


@pytest.fixture(scope="module")
def launch():
    return Recording(host.build(), block_size=16)   # 16 threads: one lane group of 16


@pytest.fixture(scope="module")
def faulty():
    return Recording(host.build(defines=("GPURNN_FAULT_SIGN=-1",)), block_size=16)


def relative_error(got, expected):
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    return np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-300)


def _state_rows(state):
    return np.concatenate([to_host(s) for s in state], axis=-1) if isinstance(state, tuple) \
        else to_host(state)


def _data(steps=9, batch=3, seed=3):
    rng = np.random.default_rng(seed)
    x, y = rng.integers(0, 11, (batch, steps)), rng.integers(0, 11, (batch, steps))
    mask = np.ones((batch, steps))
    mask[0, 6:] = 0                                   # a ragged batch: row 0 ends early
    return x, y, mask


def _model(cell, layers, dtype="float64", device="cpu", **kw):
    return make_model(cell, 11, 6, 11, num_layers=layers, embedding_size=4 if layers > 1
                      else None, dtype=dtype, seed=2, device=device, **kw)


def _run(model, plan, runner, x, y, **kw):
    model.plan = plan
    runner.calls.clear()
    with fused.emulate_on_host(runner):
        return model.loss_and_grads(x, y, **kw)


def _compare(got, plain, dtype):
    tol = TOLERANCE[dtype]
    assert abs(got.loss - plain.loss) <= tol * abs(plain.loss)
    worst = max(relative_error(to_host(got.grads[n]), to_host(v)) for n, v in plain.grads.items())
    assert worst <= tol, worst
    assert relative_error(_state_rows(got.last_hidden), _state_rows(plain.last_hidden)) <= tol
    return worst


def _cell(model, layer=0):
    return getattr(model.cell, "cells", [model.cell])[layer]


def _budget(model, x, y, mask):
    """A budget that keeps one block's cache and recomputes the others."""
    budget = model.schedule(x, y, mask=mask).bytes
    while True:
        budget = int(budget * 0.95)
        schedule = model.schedule(x, y, mask=mask, memory_budget=budget)
        if schedule.forwards > schedule.blocks:
            return budget


@pytest.mark.parametrize("cell,layers,dtype", [
    ("elman", 1, "float64"), ("gru", 1, "float64"), ("lstm", 1, "float64"),
    ("elman", 2, "float32"), ("gru", 2, "float32"), ("lstm", 2, "float64")])
def test_the_persistent_path_through_the_sweep_matches_plain(cell, layers, dtype, device,
                                                            launch):
    """Three blocks of a 9-step sequence: each block's forward and backward is one
    persistent launch, the carry crosses the blocks; ragged mask, mean loss."""
    x, y, mask = _data()
    model = _model(cell, layers, dtype, device)
    model.plan = Plan(block_steps=4)
    plain = model.loss_and_grads(x, y, mask=mask)
    got = _run(model, PERSISTENT, launch, x, y, mask=mask)
    _compare(got, plain, dtype)
    assert launch.calls.count(f"{cell}_persistent_forward") == 3 * layers
    assert launch.calls.count(f"{cell}_persistent_backward") == 3 * layers
    assert f"{cell}_step" not in launch.calls                  # no per-step kernel ran


@pytest.mark.parametrize("cell", ["elman", "gru", "lstm"])
def test_a_memory_budget_recomputes_through_the_persistent_kernels_bit_for_bit(cell, launch):
    """Under a budget that recomputes blocks, the gradients equal the plain path's and, the
    block grid being the same, the persistent run without a budget to the last bit."""
    x, y, mask = _data(steps=11)
    model = _model(cell, 2)
    model.plan = Plan(block_steps=4)
    budget = _budget(model, x, y, mask)
    plain = model.loss_and_grads(x, y, mask=mask, memory_budget=budget)
    kept = _run(model, PERSISTENT, launch, x, y, mask=mask)
    forwards = launch.calls.count(f"{cell}_persistent_forward")
    budgeted = _run(model, PERSISTENT, launch, x, y, mask=mask, memory_budget=budget)
    assert launch.calls.count(f"{cell}_persistent_forward") > forwards   # recomputed blocks
    _compare(budgeted, plain, "float64")
    assert budgeted.loss == kept.loss
    for name, value in kept.grads.items():
        assert np.array_equal(budgeted.grads[name], value), name


@pytest.mark.parametrize("cell", ["elman", "gru", "lstm"])
def test_chunked_state_carries_into_the_persistent_forward(cell, launch):
    x, y, mask = _data()
    model = _model(cell, 2)
    first = model.loss_and_grads(x[:, :4], y[:, :4])
    model.plan = Plan(block_steps=4)
    plain = model.loss_and_grads(x[:, 4:], y[:, 4:], h0=first.last_hidden)
    got = _run(model, PERSISTENT, launch, x[:, 4:], y[:, 4:], h0=first.last_hidden)
    _compare(got, plain, "float64")


@pytest.mark.parametrize("cell", ["elman", "gru", "lstm"])
def test_windowed_truncation_runs_the_per_step_kernels_and_says_why(cell, launch):
    """truncate=k < T − 1 keeps k + 1 live window origins, which the persistent backward
    does not carry: the forward stays persistent, the backward sweeps the step kernels."""
    x, y, mask = _data()
    model = _model(cell, 1)
    model.plan = Plan(block_steps=4)
    plain = model.loss_and_grads(x, y, mask=mask, truncate=2)
    got = _run(model, PERSISTENT, launch, x, y, mask=mask, truncate=2)
    _compare(got, plain, "float64")
    assert f"{cell}_persistent_backward" not in launch.calls
    assert f"{cell}_persistent_forward" in launch.calls
    reason = PERSISTENT.choose(cell, "backward", np.dtype("float64"), 4, 3, 6, launch,
                               window=3).reason
    assert "window" in reason
    # truncate ≥ T − 1 is full BPTT: persistent again
    _run(model, PERSISTENT, launch, x, y, mask=mask, truncate=8)
    assert f"{cell}_persistent_backward" in launch.calls


@pytest.mark.parametrize("cell", ["elman", "gru", "lstm"])
def test_a_dropout_state_mask_runs_plain_and_the_other_masks_persistent(cell, launch):
    x, y, _ = _data()
    for rates, expect in ((dict(dropout=0.3, dropout_output=0.2, weight_drop=0.3), True),
                          (dict(dropout_state=0.2), False)):
        model = _model(cell, 2, **rates)
        with model.fixed_dropout():
            model.plan = Plan(block_steps=4)
            plain = model.loss_and_grads(x, y)
            got = _run(model, PERSISTENT, launch, x, y)
        _compare(got, plain, "float64")
        assert (f"{cell}_persistent_backward" in launch.calls) == expect, rates
        if not expect:
            assert "state mask" in _cell(model).last_choice["forward"].reason


def test_projected_and_layer_normalised_cells_run_plain(launch):
    x, y, _ = _data()
    for model in (_model("lstm", 2, proj_size=3), _model("gru", 1, layer_norm=True)):
        model.plan = Plan(block_steps=4)
        plain = model.loss_and_grads(x, y)
        got = _run(model, PERSISTENT, launch, x, y)
        _compare(got, plain, "float64")
        assert not [k for k in launch.calls if "persistent" in k], launch.calls
    assert "proj_size" in _cell(_model("lstm", 1, proj_size=3)).kernel_decline()


def test_a_bidirectional_stack_matches_plain(launch):
    x, y, _ = _data()
    model = _model("gru", 2, bidirectional=True)
    model.plan = Plan(block_steps=4)
    plain = model.loss_and_grads(x, y)
    got = _run(model, PERSISTENT, launch, x, y)
    _compare(got, plain, "float64")


def test_a_launch_that_does_not_fit_runs_the_step_kernels(launch):
    """A planted oversize: three emulated SMs of an H100's shared memory, an LSTM with 160
    units in float64 needs 54 units × (4·160 + 4·B) values of W per block, ~280 KB, over the
    227 KiB a block may have: the plan runs the per-step kernels, and says so."""
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 11, (2, 3)), rng.integers(0, 11, (2, 3))
    model = make_model("lstm", 11, 160, 11, dtype="float64", seed=1)
    plain = model.loss_and_grads(x, y)
    got = _run(model, PERSISTENT, launch, x, y)
    _compare(got, plain, "float64")
    assert "lstm_step" in launch.calls and "lstm_persistent_forward" not in launch.calls
    reason = _cell(model).last_choice["forward"].reason
    assert "shared memory per block" in reason


def test_a_planted_sign_in_the_persistent_kernels_is_caught(faulty):
    x, y, mask = _data()
    for cell in ("elman", "gru", "lstm"):
        model = _model(cell, 1)
        model.plan = Plan(block_steps=4)
        plain = model.loss_and_grads(x, y, mask=mask)
        got = _run(model, PERSISTENT, faulty, x, y, mask=mask)
        assert f"{cell}_persistent_backward" in faulty.calls
        worst = max(relative_error(got.grads[n], v) for n, v in plain.grads.items())
        assert worst > 1e-3, cell


def test_a_sweep_that_drops_the_carry_is_caught(launch, monkeypatch):
    """The check is sensitive to the carry across blocks: a hook that starts every block
    from zero (as the kernels' direct callers do) gives other gradients."""
    x, y, mask = _data()
    model = _model("gru", 1)
    model.plan = Plan(block_steps=4)
    plain = model.loss_and_grads(x, y, mask=mask)
    original = persistent.gru_backward

    def dropped(*args, carry=None, **kwargs):
        return original(*args, **kwargs)

    monkeypatch.setattr(persistent, "gru_backward", dropped)
    got = _run(model, PERSISTENT, launch, x, y, mask=mask)
    assert max(relative_error(got.grads[n], v) for n, v in plain.grads.items()) > 1e-3


def test_fused_and_auto_plans_choose_by_the_cost_model_and_match_plain(launch):
    x, y, mask = _data()
    model = _model("lstm", 2)
    model.plan = Plan(block_steps=4)
    plain = model.loss_and_grads(x, y, mask=mask)
    for plan in (Plan(kernels="fused", block_steps=4), Plan(kernels="auto", block_steps=4),
                 Plan(kernels="fused", persistent=False, block_steps=4),
                 Plan(kernels="auto", persistent=True, block_steps=4)):
        got = _run(model, plan, launch, x, y, mask=mask)
        _compare(got, plain, "float64")
        choice = _cell(model).last_choice["forward"]
        assert choice.path in ("plain", "step", "persistent") and choice.reason
        if plan.persistent is False:
            assert not [k for k in launch.calls if "persistent" in k]
        if plan.persistent is True:
            assert "lstm_persistent_forward" in launch.calls


def test_plan_fields_and_the_choice_reasons():
    with pytest.raises(ValueError, match="persistent must be None, True or False"):
        Plan(persistent="yes")
    with pytest.raises(ValueError, match="unknown kernels"):
        Plan(kernels="fast")
    assert Plan(kernels="auto").kernels == "auto"
    f64 = np.dtype("float64")
    assert "'plain'" in Plan().choose("gru", "forward", f64, 4, 2, 8, None).reason
    assert Plan(kernels="fused").choose("gru", "forward", f64, 4, 2, 8, None).path == "plain"
    declined = Plan(kernels="fused").choose("gru", "forward", f64, 4, 2, 8, object(),
                                            declined="a reason")
    assert (declined.path, declined.reason) == ("plain", "a reason")
