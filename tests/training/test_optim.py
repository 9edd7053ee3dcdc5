"""Optimizers, the loss-rise schedule, gradient clipping (gpurnn.training.optim), on NumPy and CuPy."""
import json
import math

import numpy
import pytest

from gpurnn.engine.arrays import backend

from gpurnn.training import optim

NAMES = ["sgd", "momentum", "adagrad", "rmsprop", "adam", "rprop"]


@pytest.fixture
def xp(device):
    """numpy, or cupy where a GPU is present (``device`` comes from conftest.py)."""
    return backend.get_device(device).xp


def _quadratic(xp, dtype=numpy.float64):
    """f(p) = 0.5 * sum(a * (p - c)**2) over two parameters, with its gradient."""
    rng = numpy.random.default_rng(0)
    a = {"W": rng.uniform(0.5, 2.0, (3, 4)), "b": rng.uniform(0.5, 2.0, 4)}
    c = {k: rng.normal(size=v.shape) for k, v in a.items()}
    a = {k: xp.asarray(v, dtype=dtype) for k, v in a.items()}
    c = {k: xp.asarray(v, dtype=dtype) for k, v in c.items()}

    def loss_and_grads(params):
        loss = sum(float((0.5 * a[k] * (params[k] - c[k]) ** 2).sum()) for k in params)
        return loss, {k: a[k] * (params[k] - c[k]) for k in params}

    params = {k: xp.zeros(v.shape, dtype=dtype) for k, v in a.items()}
    return params, loss_and_grads


@pytest.mark.parametrize("name", NAMES)
def test_each_optimizer_decreases_a_quadratic(xp, name):
    params, loss_and_grads = _quadratic(xp, numpy.float32)
    start = loss_and_grads(params)[0]
    lr = {"sgd": 0.1, "momentum": 0.05, "adagrad": 0.3, "rmsprop": 0.02, "adam": 0.05,
          "rprop": 0.01}[name]
    optimizer = optim.make_optimizer(name, lr)
    arrays = dict(params)
    for _ in range(200):
        optimizer.step(params, loss_and_grads(params)[1])
    assert loss_and_grads(params)[0] < 0.05 * start
    assert all(params[k] is arrays[k] and params[k].dtype == numpy.float32 for k in params)


def _first_step(name, p, g, **kw):
    params, grads = {"p": numpy.array(p)}, {"p": numpy.array(g)}
    optim.make_optimizer(name, **kw).step(params, grads)
    return params["p"]


def test_first_steps_match_hand_computation():
    p, g = numpy.array([1.0, -2.0, 0.5]), numpy.array([0.5, -4.0, 0.0])
    eps = 1e-8
    expected = {
        ("sgd", ()): p - 0.1 * g,
        ("momentum", ()): p - 0.1 * g,                      # v = g
        ("momentum", (("nesterov", True),)): p - 0.1 * (g + 0.9 * g),
        ("adagrad", ()): p - 0.1 * g / (numpy.abs(g) + eps),
        ("rmsprop", ()): p - 0.1 * g / (numpy.sqrt(0.1 * g * g) + eps),
        ("adam", ()): p - 0.1 * g / (numpy.abs(g) + eps),   # m̂ = g, v̂ = g**2
        ("rprop", ()): p - numpy.sign(g) * 0.1 * 0.5,        # previous sign 0: shrink
    }
    for (name, kw), want in expected.items():
        got = _first_step(name, p, g, lr=0.1, **dict(kw))
        numpy.testing.assert_allclose(got, want, rtol=1e-12, err_msg=name)


def test_momentum_second_step():
    params, g = {"p": numpy.array([0.0])}, {"p": numpy.array([1.0])}
    opt = optim.Momentum(lr=0.1, momentum=0.5)
    opt.step(params, g)
    opt.step(params, g)  # v = 0.5 * 1 + 1 = 1.5
    numpy.testing.assert_allclose(params["p"], [-0.1 - 0.15])


def test_adam_bias_correction():
    # A constant gradient gives m̂ = g and v̂ = g**2 at every t, so every step is lr * g / (|g| + eps)
    # (without the correction the first step would be 0.1 / sqrt(0.001) ≈ 3.2 times larger).
    g = numpy.array([2.0, -0.5])
    params = {"p": numpy.zeros(2)}
    opt = optim.Adam(lr=0.01)
    for t in range(1, 6):
        before = params["p"].copy()
        opt.step(params, {"p": g.copy()})
        numpy.testing.assert_allclose(params["p"] - before, -0.01 * g / (numpy.abs(g) + 1e-8),
                                      rtol=1e-9)
    assert opt.t == 5


def test_rprop_steps_grow_and_shrink():
    opt = optim.Rprop(lr=0.1, eta_plus=1.2, eta_minus=0.5)
    params = {"p": numpy.zeros(1)}
    moves = []
    for grad in [1.0, 1.0, 1.0, -1.0, -1.0]:
        before = params["p"][0]
        opt.step(params, {"p": numpy.array([grad])})
        moves.append(params["p"][0] - before)
    numpy.testing.assert_allclose(moves, [-0.05, -0.06, -0.072, 0.036, 0.0432])
    bounded = optim.Rprop(lr=0.1, step_max=0.11)
    params = {"p": numpy.zeros(1)}
    for _ in range(10):
        bounded.step(params, {"p": numpy.array([1.0])})
    assert bounded.state_dict()["slots"]["step"]["p"][0] == 0.11


def test_rprop_matches_seed_001_loop():
    """Roelants' update_rprop on two scalar weights, written as in the seed."""
    rng = numpy.random.default_rng(1)
    grads = rng.normal(size=(30, 2)) + 0.3
    W, W_delta, W_prev_sign = [0.5, -1.0], [0.001, 0.001], [0, 0]
    for row in grads:
        W_sign = numpy.sign(row)
        for i in range(2):
            W_delta[i] *= 1.2 if W_sign[i] == W_prev_sign[i] else 0.5
        W_prev_sign = W_sign
        for i in range(2):
            W[i] -= W_sign[i] * W_delta[i]
    opt = optim.Rprop(lr=0.001, step_min=0.0, step_max=math.inf)
    params = {"W": numpy.array([0.5, -1.0])}
    for row in grads:
        opt.step(params, {"W": row.copy()})
    numpy.testing.assert_allclose(params["W"], W, rtol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_continues_bit_identically(xp, name):
    params, loss_and_grads = _quadratic(xp, numpy.float32)
    opt = optim.make_optimizer(name, 0.01)
    for _ in range(3):
        opt.step(params, loss_and_grads(params)[1])
    opt.lr = 0.005  # as a schedule would
    state = opt.state_dict()
    assert all(isinstance(a, numpy.ndarray) for per in state["slots"].values() for a in per.values())
    json.dumps({k: v for k, v in state.items() if k != "slots"})  # the rest is JSON-able
    twin_params = {k: xp.asarray(backend.to_host(v)) for k, v in params.items()}
    twin = optim.make_optimizer(name, 0.5)
    twin.load_state_dict(state)
    assert twin.lr == 0.005 and twin.t == 3
    for _ in range(3):
        opt.step(params, loss_and_grads(params)[1])
        twin.step(twin_params, loss_and_grads(twin_params)[1])
    for k in params:
        assert numpy.array_equal(backend.to_host(params[k]), backend.to_host(twin_params[k]))
    for slot in twin.slots:  # the loaded host arrays moved next to the parameters
        assert backend.device_of(twin._state[slot]["W"]) == backend.device_of(params["W"])


def test_state_dict_is_a_copy_and_load_rejects_other_optimizer():
    params = {"p": numpy.ones(2)}
    opt = optim.Adam()
    opt.step(params, {"p": numpy.ones(2)})
    state = opt.state_dict()
    state["slots"]["m"]["p"][:] = 99.0
    assert opt.state_dict()["slots"]["m"]["p"][0] != 99.0
    with pytest.raises(ValueError, match="'adam', not 'sgd'"):
        optim.SGD().load_state_dict(state)


def test_make_optimizer_and_argument_errors():
    assert isinstance(optim.make_optimizer("adam"), optim.Adam)
    assert optim.make_optimizer("momentum", 0.2, nesterov=True).nesterov
    with pytest.raises(ValueError, match="sgd, momentum, adagrad, rmsprop, adam, rprop"):
        optim.make_optimizer("lbfgs")
    with pytest.raises(TypeError, match="beta1"):
        optim.make_optimizer("adam", 0.1, momentum=0.9)
    with pytest.raises(ValueError, match="lr"):
        optim.SGD(lr=-1)
    with pytest.raises(ValueError, match="beta2"):
        optim.Adam(beta2=1.0)
    opt = optim.SGD(0.1)
    with pytest.raises(ValueError, match="keys"):
        opt.step({"a": numpy.zeros(1)}, {"b": numpy.zeros(1)})
    with pytest.raises(ValueError, match=r"grads\['a'\] has shape"):
        opt.step({"a": numpy.zeros(2)}, {"a": numpy.zeros(3)})


def test_halve_on_plateau():
    opt = optim.SGD(0.008)
    schedule = optim.HalveOnPlateau(opt)
    assert [schedule.step(loss) for loss in [5.0, 4.0, 4.5, 4.6, 3.0]] == [
        False, False, True, True, False]
    assert opt.lr == 0.002
    restored = optim.HalveOnPlateau(optim.SGD(0.002))
    restored.load_state_dict(json.loads(json.dumps(schedule.state_dict())))
    assert restored.step(3.5) and restored.optimizer.lr == 0.001
    with pytest.raises(ValueError, match="finite"):
        schedule.step(float("nan"))


def test_clip_grad_norm(xp):
    grads = {"a": xp.asarray([3.0]), "b": xp.asarray([[4.0]])}
    assert optim.clip_grad_norm(grads, 10.0) == pytest.approx(5.0)
    assert float(grads["a"][0]) == 3.0  # below the limit: untouched
    assert optim.clip_grad_norm(grads, 1.0) == pytest.approx(5.0)
    numpy.testing.assert_allclose(backend.to_host(grads["a"]), [0.6])
    numpy.testing.assert_allclose(backend.to_host(grads["b"]), [[0.8]])
    bad = {"a": xp.asarray([numpy.inf, 1.0])}
    assert math.isinf(optim.clip_grad_norm(bad, 1.0)) and float(bad["a"][1]) == 1.0
    with pytest.raises(ValueError, match="max_norm"):
        optim.clip_grad_norm(grads, 0.0)


def test_clip_grad_value(xp):
    grads = {"a": xp.asarray([3.0, -7.0, 0.5]), "b": xp.asarray([[numpy.nan, -0.25]])}
    same = grads["a"]
    assert optim.clip_grad_value(grads, 1.0) is None
    assert grads["a"] is same                               # in place
    numpy.testing.assert_array_equal(backend.to_host(grads["a"]), [1.0, -1.0, 0.5])
    b = backend.to_host(grads["b"])
    assert numpy.isnan(b[0, 0]) and b[0, 1] == -0.25        # NaN is left for the guard
    with pytest.raises(ValueError, match="max_value"):
        optim.clip_grad_value(grads, -1.0)


def test_grads_finite(xp):
    assert optim.grads_finite({"a": xp.ones(3), "b": xp.zeros((2, 2))})
    assert not optim.grads_finite({"a": xp.ones(3), "b": xp.asarray([numpy.nan])})
    assert not optim.grads_finite({"a": xp.asarray([-numpy.inf])})
    assert optim.grads_finite({})


def test_the_fused_update_runs_after_the_weight_decay(monkeypatch):
    """The fused kernels know no weight decay: step() shrinks the matrices first, in place,
    and the kernel then updates the shrunk weights; eps inside the root runs the plain update
    (test_recipes.py). Here the kernel launch is replaced by the plain update it stands for."""
    from gpurnn.engine.gpu import fused
    seen = {}

    def elementwise(launch, kernel, dtype, size, args):
        param, grad = args[:2]
        seen[param.ndim] = param.copy()
        name = next(k for k, v in fused_params.items() if v is param)
        adam._update(name, param, grad, numpy.empty_like(param))
    monkeypatch.setattr(fused, "launcher_for", lambda plan, param: "launch")
    monkeypatch.setattr(fused, "_elementwise", elementwise)
    rng = numpy.random.default_rng(3)
    start = {"W": rng.normal(size=(3, 4)), "b": rng.normal(size=4)}
    grads = {k: rng.normal(size=v.shape) for k, v in start.items()}
    fused_params = {k: v.copy() for k, v in start.items()}
    adam = optim.Adam(lr=0.1, weight_decay=0.5)
    adam.step(fused_params, grads)
    assert numpy.array_equal(seen[2], start["W"] * (1 - 0.1 * 0.5))
    assert numpy.array_equal(seen[1], start["b"])
    monkeypatch.undo()
    plain = {k: v.copy() for k, v in start.items()}
    optim.Adam(lr=0.1, weight_decay=0.5).step(plain, grads)
    for k in start:
        assert numpy.array_equal(fused_params[k], plain[k]), k
