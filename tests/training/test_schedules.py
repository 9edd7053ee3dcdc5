"""The learning-rate schedules' ends: values at chosen steps, bad settings refused, a warm-up
longer than the run, and a cosine run resumed with more steps (it follows the longer curve)."""
import io
import json
import math

import pytest

import gpurnn
from gpurnn.training.config import TrainConfig
from gpurnn.training.optim import scheduled_lr
from gpurnn.training.train import Trainer

from test_train import tiny


def _lrs(path):
    return {r["step"]: r["lr"] for r in map(json.loads, path.read_text().splitlines())
            if "loss" in r and "event" not in r}


def test_the_curve_at_chosen_steps():
    lr = lambda step: gpurnn.scheduled_lr(step, 1.0, total_steps=110, warmup_steps=10,
                                          min_lr=0.0)
    assert [lr(k) for k in (0, 4, 9)] == pytest.approx([1 / 11, 5 / 11, 10 / 11])  # the ramp
    assert lr(10) == 1.0                                             # the top
    assert lr(60) == pytest.approx(0.5)                              # the cosine's midpoint
    assert lr(35) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    assert lr(109) == pytest.approx((1 + math.cos(math.pi * 99 / 100)) / 2)
    assert lr(110) == lr(10**9) == 0.0                               # the end, and beyond
    # a warm-up no shorter than the run leaves the rate at min_lr once it is over
    assert gpurnn.scheduled_lr(5, 1.0, total_steps=5, warmup_steps=5) == pytest.approx(0.1)
    assert gpurnn.scheduled_lr(4, 1.0, total_steps=5, warmup_steps=5) == pytest.approx(5 / 6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(min_lr=2.0), "min_lr 2.0 is above lr 1.0"),
    (dict(min_lr=-1.0), "min_lr must be a finite number >= 0"),
    (dict(warmup_steps=-1), "warmup_steps must be an integer >= 0"),
    (dict(total_steps=2.5), "total_steps must be an integer >= 0"),
])
def test_scheduled_lr_refuses_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        scheduled_lr(0, 1.0, **{"total_steps": 10, **kwargs})


def test_min_lr_zero_is_allowed_and_above_the_default_rate_refused(tmp_path):
    assert TrainConfig(schedule="cosine", min_lr=0.0).validate().min_lr == 0.0
    with pytest.raises(ValueError, match="--min-lr must be a number >= 0"):
        TrainConfig(schedule="cosine", min_lr=-0.1)
    # no --lr: the trainer's default for adam, 3e-3, is the top of the curve
    with pytest.raises(ValueError, match=r"--min-lr 0.01 is above the learning rate 0.003 "
                                         r"\(adam's default\)"):
        Trainer(tiny(tmp_path, lr=None, schedule="cosine", min_lr=0.01))


def test_a_warmup_as_long_as_the_run_is_warned_about(tmp_path):
    with pytest.warns(UserWarning, match="--warmup-steps 6 is not below the run's 6 steps"):
        Trainer(tiny(tmp_path, steps=6, schedule="cosine", warmup_steps=6)).run()


def test_more_steps_on_resuming_stretch_the_cosine(tmp_path):
    """The curve is over the run's total: resumed from step 8 of 8 with --steps 16, the run
    follows the 16-step curve from step 8 on (said in one line), to --min-lr at 16."""
    settings = dict(schedule="cosine", lr=0.02, min_lr=0.002, warmup_steps=2, log_every=1,
                    eval_every=4)
    gpurnn.train(tiny(tmp_path, steps=8, **settings))
    out = io.StringIO()
    Trainer(tiny(tmp_path, steps=16, resume=True, **{**settings, "quiet": False}),
            out=out).run()
    curve = lambda k, total: scheduled_lr(k, 0.02, total_steps=total, warmup_steps=2,
                                          min_lr=0.002)
    lrs = _lrs(tmp_path / "lm.jsonl")
    assert [lrs[k] for k in range(1, 9)] == pytest.approx([curve(k - 1, 8) for k in range(1, 9)])
    assert [lrs[k] for k in range(9, 17)] == pytest.approx([curve(k - 1, 16)
                                                            for k in range(9, 17)])
    assert (f"the cosine schedule now runs over 16 steps, not 8: the rate at step 8 is "
            f"{curve(8, 16):.3g}, not {curve(8, 8):.3g}") in out.getvalue()
