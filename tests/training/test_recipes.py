"""The recipes users copy: cosine decay with warm-up, decoupled weight decay (AdamW), eps
inside or outside the root (min-char-rnn's loop replayed: test_min_char_rnn.py)."""
import json
import math
import signal

import numpy
import pytest

from gpurnn.engine.gpu import fused
from gpurnn.training import optim
from gpurnn.training.checkpoint import load_checkpoint
from gpurnn.training.config import TrainConfig
from gpurnn.training.optim import Adagrad, Adam, RMSprop, SGD, make_optimizer, scheduled_lr
from gpurnn.training.train import Trainer

from test_train import _send_at, tiny


# ----------------------------------------------------------------------------- schedules

def test_cosine_with_warmup_is_nanogpts_curve():
    lr = lambda step: scheduled_lr(step, 1e-3, total_steps=2000, warmup_steps=100,
                                   min_lr=1e-4)
    assert lr(0) == pytest.approx(1e-3 / 101) and lr(99) == pytest.approx(1e-3 * 100 / 101)
    assert lr(100) == pytest.approx(1e-3)                          # the top, after warm-up
    assert lr(1050) == pytest.approx(5.5e-4)                       # halfway: the mean
    assert lr(1999) == pytest.approx(1e-4, rel=1e-4) and lr(2000) == lr(5000) == 1e-4
    steps = [lr(s) for s in range(100, 2001)]
    assert all(a >= b for a, b in zip(steps, steps[1:]))          # decays monotonically
    # min_lr defaults to a tenth; without cosine the warm-up leads to a constant rate
    assert scheduled_lr(10**6, 2.0, total_steps=10) == pytest.approx(0.2)
    assert scheduled_lr(3, 2.0, total_steps=10, warmup_steps=3, cosine=False) == 2.0
    assert scheduled_lr(0, 2.0, total_steps=10, warmup_steps=3, cosine=False) == 0.5


def _lrs(path):
    return {r["step"]: r["lr"] for r in map(json.loads, path.read_text().splitlines())
            if "loss" in r and "event" not in r}


def test_the_trainer_follows_the_schedule(tmp_path):
    Trainer(tiny(tmp_path, steps=24, log_every=1, eval_every=8, schedule="cosine",
                 warmup_steps=5, min_lr=0.002, lr=0.02)).run()
    assert _lrs(tmp_path / "lm.jsonl") == {
        step: pytest.approx(scheduled_lr(step - 1, 0.02, total_steps=24, warmup_steps=5,
                                         min_lr=0.002)) for step in range(1, 25)}


def test_a_run_stopped_and_resumed_under_cosine_is_bit_identical(tmp_path):
    """The rate is a function of the step and the run's total: a run stopped at step 9 of
    20 and resumed continues the same curve, to the last bit of every weight."""
    changes = dict(steps=20, eval_every=5, log_every=1, schedule="cosine", warmup_steps=4,
                   lr=0.02, dtype="float64", weight_decay=0.1)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    whole.mkdir()
    parts.mkdir()
    Trainer(tiny(whole, **changes)).run()
    stopped = Trainer(tiny(parts, **changes))
    _send_at(stopped, 9, signal.SIGTERM)
    assert stopped.run().step == 9
    Trainer(tiny(parts, resume=True, **changes)).run()
    a, b = load_checkpoint(whole / "lm.npz"), load_checkpoint(parts / "lm.npz")
    assert a.step == b.step == 20
    assert all(numpy.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert _lrs(parts / "lm.jsonl") == _lrs(whole / "lm.jsonl")


# -------------------------------------------------------------------------- weight decay

def _problem(seed=0):
    rng = numpy.random.default_rng(seed)
    params = {"weight": rng.normal(size=(4, 3)), "bias": rng.normal(size=4),
              "E": rng.normal(size=(5, 2))}
    grads = [{k: rng.normal(size=v.shape) for k, v in params.items()} for _ in range(5)]
    return params, grads


def test_adamw_equals_the_formula_and_leaves_biases_alone():
    params, grads = _problem()
    ours = {k: v.copy() for k, v in params.items()}
    adam = Adam(lr=0.01, weight_decay=0.1)
    m = {k: numpy.zeros_like(v) for k, v in params.items()}
    v2 = {k: numpy.zeros_like(v) for k, v in params.items()}
    expected = {k: v.copy() for k, v in params.items()}
    for t, g in enumerate(grads, 1):
        adam.step(ours, {k: x.copy() for k, x in g.items()})
        for k in expected:
            if expected[k].ndim >= 2:
                expected[k] *= 1 - 0.01 * 0.1
            m[k] = 0.9 * m[k] + 0.1 * g[k]
            v2[k] = 0.999 * v2[k] + 0.001 * g[k] ** 2
            expected[k] -= 0.01 * (m[k] / (1 - 0.9 ** t)) / (numpy.sqrt(v2[k] / (1 - 0.999 ** t))
                                                            + 1e-8)
    for k in expected:
        numpy.testing.assert_allclose(ours[k], expected[k], rtol=1e-13, err_msg=k)
    # with no gradient at all, a bias stays, a matrix shrinks by exactly 1 - lr * wd
    sgd = SGD(lr=0.5, weight_decay=0.2)
    p = {"w": numpy.ones((2, 2)), "b": numpy.ones(2)}
    sgd.step(p, {"w": numpy.zeros((2, 2)), "b": numpy.zeros(2)})
    assert (p["w"] == 0.9).all() and (p["b"] == 1.0).all()


def test_adamw_equals_pytorchs_with_decay_on_the_matrices_only():
    torch = pytest.importorskip("torch", reason="PyTorch (the bench extra) compares AdamW")
    params, grads = _problem(1)
    ours = {k: v.copy() for k, v in params.items()}
    tensors = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
               for k, v in params.items()}
    reference = torch.optim.AdamW(
        [{"params": [tensors["weight"], tensors["E"]], "weight_decay": 0.05},
         {"params": [tensors["bias"]], "weight_decay": 0.0}], lr=3e-3, eps=1e-8)
    adam = Adam(lr=3e-3, weight_decay=0.05)
    for g in grads:
        for k, tensor in tensors.items():
            tensor.grad = torch.tensor(g[k], dtype=torch.float64)
        reference.step()
        adam.step(ours, {k: x.copy() for k, x in g.items()})
    for k in ours:
        numpy.testing.assert_allclose(ours[k], tensors[k].detach().numpy(), rtol=1e-12,
                                      atol=0, err_msg=k)


def test_sgd_weight_decay_is_an_l2_penalty():
    params, grads = _problem(2)
    decayed = {k: v.copy() for k, v in params.items()}
    penalised = {k: v.copy() for k, v in params.items()}
    a, b = SGD(lr=0.1, weight_decay=0.3), SGD(lr=0.1)
    for g in grads:
        a.step(decayed, {k: x.copy() for k, x in g.items()})
        b.step(penalised, {k: x + (0.3 * penalised[k] if x.ndim >= 2 else 0)
                           for k, x in g.items()})
    for k in params:
        numpy.testing.assert_allclose(decayed[k], penalised[k], rtol=1e-13)


def test_hyperparameters_round_trip_and_bad_values_are_refused():
    adagrad = Adagrad(lr=0.1, eps=1e-6, eps_placement="inside", weight_decay=0.01)
    state = adagrad.state_dict()
    again = make_optimizer("adagrad")
    again.load_state_dict(state)
    assert again.hyperparameters() == adagrad.hyperparameters()
    old = {**state, "hyper": {"lr": 0.1, "eps": 1e-8}}  # written before these options
    again.load_state_dict(old)
    assert (again.weight_decay, again.eps_placement) == (0.0, "outside")
    with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0"):
        Adam(weight_decay=-0.1)
    with pytest.raises(ValueError, match="eps_placement must be 'outside'"):
        RMSprop(eps_placement="under")


# ---------------------------------------------------------------------------- eps placement

@pytest.mark.parametrize("cls, squares", [(Adagrad, lambda g: g * g),
                                          (RMSprop, lambda g: 0.1 * g * g)])
def test_eps_inside_or_outside_the_root(cls, squares):
    g = numpy.array([[1e-4, 1e-2], [1.0, -3e-5]])
    for placement, root in (("outside", lambda G: numpy.sqrt(G) + 1e-8),
                            ("inside", lambda G: numpy.sqrt(G + 1e-8))):
        p = {"w": numpy.zeros_like(g)}
        cls(lr=0.1, eps=1e-8, eps_placement=placement).step(p, {"w": g.copy()})
        numpy.testing.assert_allclose(p["w"], -0.1 * g / root(squares(g)), rtol=1e-14)
    inside, outside = ({"w": numpy.zeros_like(g)} for _ in range(2))
    cls(lr=0.1, eps_placement="inside").step(inside, {"w": g.copy()})
    cls(lr=0.1).step(outside, {"w": g.copy()})
    assert abs(inside["w"][1, 1] / outside["w"][1, 1]) < 0.5  # far apart at small gradients


def test_the_fused_update_leaves_eps_inside_to_the_plain_one(monkeypatch):
    monkeypatch.setattr(fused, "launcher_for", lambda plan, param: "launch")
    monkeypatch.setattr(fused, "_elementwise", lambda *args: None)
    p = numpy.zeros(3)
    assert not fused.optimizer_update(None, Adagrad(eps_placement="inside"), p, p, [p])
    assert fused.optimizer_update(None, Adagrad(), p, p, [p])


# -------------------------------------------------------------------------- flags and errors

@pytest.mark.parametrize("changes, message", [
    (dict(warmup_steps=10, optimizer="sgd"), "--warmup-steps works with --schedule cosine"),
    (dict(min_lr=0.1), "--min-lr is where --schedule cosine ends"),
    (dict(schedule="cosine", lr=0.01, min_lr=0.1), "--min-lr 0.1 is above --lr 0.01"),
    (dict(weight_decay=-1.0), "--weight-decay must be a number >= 0"),
    (dict(eps_placement="inside"), "--eps-placement inside is for adagrad and rmsprop"),
    (dict(eps=1e-6, optimizer="sgd"), "--eps is for adagrad, rmsprop and adam"),
    (dict(warmup_steps=-1), "--warmup-steps must be an integer >= 0"),
])
def test_recipe_settings_are_checked(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)


def test_train_help_lists_the_recipe_flags(capsys):
    from gpurnn.tools import cli
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    for flag in ("--schedule {auto,halve,cosine,none}", "--warmup-steps N", "--min-lr X",
                 "--weight-decay X", "--eps X", "--eps-placement {outside,inside}",
                 "--clip-value X"):
        assert flag in text, flag


def test_a_cosine_run_decays_to_min_lr_and_weight_decay_reaches_the_optimizer(tmp_path):
    result = Trainer(tiny(tmp_path, steps=12, schedule="cosine", lr=0.01, min_lr=0.001,
                          weight_decay=0.5, log_every=1)).run()
    assert result.step == 12
    saved = load_checkpoint(tmp_path / "lm.npz")
    assert saved.optimizer_state["hyper"]["weight_decay"] == 0.5
    assert _lrs(tmp_path / "lm.jsonl")[12] == pytest.approx(
        scheduled_lr(11, 0.01, total_steps=12, min_lr=0.001))
    assert math.isclose(scheduled_lr(12, 0.01, total_steps=12, min_lr=0.001), 0.001)
    assert optim.EPS_PLACEMENTS == ("outside", "inside")
