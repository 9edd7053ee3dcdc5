"""The captured training step (gpurnn.engine.gpu.graphs) on the CPU: the refusals decided before
capture, the replay bookkeeping with a host capture backend, and the no-synchronisation rule
of the captured region on cpu-strict (a planted float() fails)."""
import numpy as np
import pytest

from gpurnn.engine.gpu import fused, graphs
from gpurnn.engine.arrays import strict
from gpurnn.engine.arrays.backend import get_device, to_device, to_host
from gpurnn.engine.models.factory import make_model
from gpurnn.engine.gpu.kernels import host
from gpurnn.engine.plan import Plan
from gpurnn.training.optim import make_optimizer

pytestmark = pytest.mark.skipif(host.compiler() is None, reason="no host C++ compiler")
PLAN = Plan(kernels="fused", persistent=True, block_steps=4, graph=True)


@pytest.fixture(scope="module")
def launch():
    return host.HostLauncher(host.build(), block_size=16)


def _pair(cell="gru", optimizer="momentum", plan=PLAN, device="cpu-strict", layers=1):
    made = []
    for _ in range(2):
        model = make_model(cell, 11, 6, 11, num_layers=layers, dtype="float64", seed=2,
                           device=device, embedding_size=4 if layers > 1 else None)
        model.plan = plan
        opt = make_optimizer(optimizer, 0.1)
        opt.plan = plan
        made.append((model, opt))
    return made


def _batches(n=5, device="cpu-strict", steps=9):
    rng, dev = np.random.default_rng(0), get_device(device)
    return [(to_device(rng.integers(0, 11, (3, steps)), dev),
             to_device(rng.integers(0, 11, (3, steps)), dev)) for _ in range(n)]


@pytest.mark.parametrize("cell,optimizer,layers", [("elman", "sgd", 1), ("gru", "momentum", 1),
                                                   ("lstm", "rmsprop", 2)])
def test_captured_and_replayed_steps_equal_the_plain_steps(launch, cell, optimizer, layers):
    (m1, o1), (m2, o2) = _pair(cell, optimizer, layers=layers)
    capture = graphs.HostCapture()
    step = graphs.StepGraph(m2, o2, capture=capture)
    h1 = h2 = None
    modes = []
    with fused.emulate_on_host(launch):
        for x, y in _batches():
            r1 = m1.loss_and_grads(x, y, h0=h1)
            o1.step(m1.params, r1.grads)
            r2 = step(x, y, h0=h2)
            assert isinstance(r2.loss, float) and abs(r2.loss - r1.loss) <= 1e-12
            h1, h2 = r1.last_hidden, r2.last_hidden
            modes.append(r2.mode)
    # h0 None then given: two signatures; the second repeats, is captured, then replayed
    assert modes == ["eager", "eager", "captured", "replay", "replay"]
    assert capture.calls == ["capture", "launch", "launch", "launch"]
    assert (step.eager, step.captures, step.replays) == (2, 1, 2) and o1.t == o2.t == 5
    for name, value in m1.params.items():
        assert np.abs(to_host(m2.params[name]) - to_host(value)).max() <= 1e-12


def test_a_new_shape_or_lr_is_captured_anew(launch):
    (model, opt), _ = _pair()
    step = graphs.StepGraph(model, opt, capture=graphs.HostCapture())
    short, long = _batches(3, steps=8), _batches(3, steps=12)
    with fused.emulate_on_host(launch):
        assert [step(*b).mode for b in short] == ["eager", "captured", "replay"]
        assert step(*long[0]).mode == "eager"           # another shape: eager, then capture
        assert step(*long[1]).mode == "captured"
        opt.lr = 0.05                                   # the lr is a launch argument
        assert step(*long[2]).mode == "eager" and "new signature" in step.reason


def test_a_failed_capture_runs_eager_with_its_reason_and_is_not_retried(launch):
    (m1, o1), (m2, o2) = _pair()
    capture = graphs.HostCapture(refuse="NotImplementedError: cuBLAS during capture")
    step = graphs.StepGraph(m2, o2, capture=capture)
    with fused.emulate_on_host(launch):
        for x, y in _batches(4):
            r1 = m1.loss_and_grads(x, y)
            o1.step(m1.params, r1.grads)
            r2 = step(x, y)
            assert abs(r2.loss - r1.loss) <= 1e-12
    assert step.captures == 0 and capture.calls == ["capture"] and o2.t == 4
    assert "capture failed" in step.reason and "cuBLAS" in step.reason


def test_a_planted_host_synchronisation_fails_the_region(launch, monkeypatch):
    (model, opt), _ = _pair()
    x, y = _batches(1)[0]
    with fused.emulate_on_host(launch):
        graphs.check_region(model, opt, x, y)          # the real region: no read-back
        real = type(opt).step

        def leaky(self, params, grads):
            float(grads["V"].sum())                    # planted: a device-to-host sync
            real(self, params, grads)

        monkeypatch.setattr(type(opt), "step", leaky)
        with pytest.raises(strict.TransferGuardError, match="float"):
            graphs.check_region(model, opt, x, y)
        # and in a StepGraph the capture fails, says why, and the step runs eager
        step = graphs.StepGraph(model, opt, capture=graphs.HostCapture())
        step(x, y)
        result = step(x, y)
        assert result.mode == "eager" and "TransferGuardError" in result.reason


@pytest.mark.parametrize("change,reason", [
    ({"plan": Plan(kernels="fused")}, "graph is False"),
    ({"plan": Plan(kernels="plain", graph=True)}, "kernels='plain'"),
    ({"optimizer": "adam"}, "bias corrections"),
    ({"optimizer": "rprop"}, "no fused kernel"),
    ({"mask": True}, "mask"),
    ({"device": "cpu", "capture": None}, "not CuPy's"),
])
def test_refusals_are_decided_before_capture(launch, change, reason):
    plan = change.get("plan", PLAN)
    device = change.get("device", "cpu-strict")
    (model, opt), _ = _pair(optimizer=change.get("optimizer", "sgd"), plan=plan, device=device)
    x, y = _batches(1, device=device)[0]
    mask = np.ones(x.shape) if change.get("mask") else None
    capture = change.get("capture", graphs.HostCapture())
    with fused.emulate_on_host(launch):
        why = graphs.refusal(model, opt, x, y, mask=mask, capture=capture)
        assert why is not None and reason in why
        step = graphs.StepGraph(model, opt, capture=capture)
        for _ in range(3):
            assert step(x, y, mask=mask).mode == "eager"
        assert reason in step.reason
    assert capture is None or capture.calls == []


def test_dropout_is_refused(launch):
    model = make_model("gru", 11, 6, 11, dtype="float64", seed=2, device="cpu-strict",
                       dropout_output=0.2)
    model.plan = PLAN
    opt = make_optimizer("sgd", 0.1)
    opt.plan = PLAN
    x, y = _batches(1)[0]
    with fused.emulate_on_host(launch):
        assert "dropout" in graphs.refusal(model, opt, x, y, capture=graphs.HostCapture())


def test_loss_on_device_is_a_device_scalar_equal_to_the_float(launch):
    (model, _), _ = _pair()
    x, y = _batches(1)[0]
    with fused.emulate_on_host(launch):
        plain = model.loss_and_grads(x, y)
        kept = model.loss_and_grads(x, y, loss_on_device=True)
    assert isinstance(kept.loss, strict.StrictArray) and float(kept.loss) == plain.loss


def test_plan_graph_is_validated():
    assert Plan(graph=True).graph is True
    with pytest.raises(ValueError, match="graph"):
        Plan(graph="yes")
