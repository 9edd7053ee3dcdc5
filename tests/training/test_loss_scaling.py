"""float16 dynamic loss scaling (gpurnn.training.scaling) in the trainer: a planted overflow
is skipped and backs the scale off, clean steps grow it, and a stopped fp16-mixed run
resumes bit-identically, its scale kept in the checkpoint."""
import math

import numpy
import pytest

from gpurnn.training import train as T
from gpurnn.training.checkpoint import load_checkpoint
from gpurnn.training.scaling import LossScaler
from test_train import checkpoint_arrays, run, tiny

pytest.importorskip("ml_dtypes")


def test_scaler_backs_off_skips_and_grows():
    scaler = LossScaler(1024.0, growth_interval=3)
    assert scaler.is_overflow(2.0, math.inf) and not scaler.is_overflow(math.nan, math.inf)
    scaler.update(True)
    assert scaler.scale == 512.0 and scaler.overflows == 1
    for _ in range(3):
        scaler.update(False)
    assert scaler.scale == 1024.0 and scaler.clean == 0
    again = LossScaler()
    again.load_state_dict(scaler.state_dict())
    assert again.state_dict() == scaler.state_dict()
    with pytest.raises(ValueError):
        LossScaler(0.0)


def test_a_planted_overflow_is_skipped_and_backs_the_scale_off(tmp_path):
    # 2^40 overflows float16's 65504 in the first backward sweep: the steps are skipped
    # (no update, not counted as divergence) and the scale halves until the sweep fits.
    config = tiny(tmp_path, precision="fp16-mixed", loss_scale=2.0 ** 40, steps=40,
                  loss_scale_window=10, optimizer="adam", max_bad_steps=3)
    trainer = T.Trainer(config)
    before = {name: value.copy() for name, value in trainer.model.params.items()}
    trainer._train_step(next(iter(trainer.data.train)))
    assert trainer.scaler.overflows == 1 and trainer.scaler.scale == 2.0 ** 39
    assert not trainer.last_step[3]                       # skipped
    assert all(numpy.array_equal(before[k], v) for k, v in trainer.model.params.items())
    assert trainer.guard.skipped == 0                     # not a non-finite step
    result = trainer.run()
    assert result.step == 40
    scaler = trainer.scaler
    assert 15 <= scaler.overflows <= 30 and scaler.scale < 2.0 ** 24
    saved = load_checkpoint(tmp_path / "lm.npz")
    assert saved.extra["loss_scale"] == scaler.state_dict()
    history = result.valid_history
    assert history[-1][1] < history[0][1]                 # it trained


def test_fp16_mixed_resume_is_bit_identical(tmp_path):
    changes = dict(precision="fp16-mixed", optimizer="adam", cell="lstm", loss_scale=2.0 ** 20,
                   loss_scale_window=4)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    whole.mkdir(), parts.mkdir()
    run(tiny(whole, steps=24, **changes))
    run(tiny(parts, steps=11, checkpoint_every=5, **changes))
    run(tiny(parts, steps=24, resume=True, **changes))
    a, arrays_a = checkpoint_arrays(whole / "lm.npz")
    b, arrays_b = checkpoint_arrays(parts / "lm.npz")
    for name in arrays_a:
        assert numpy.array_equal(arrays_a[name], arrays_b[name]), name
    assert a.extra["loss_scale"] == b.extra["loss_scale"]
    assert a.extra["loss_scale"]["overflows"] > 0         # the scale moved both ways


@pytest.mark.parametrize("precision", ["bf16-mixed", "tf32"])
def test_other_precisions_train_without_a_scaler(tmp_path, precision):
    trainer = T.Trainer(tiny(tmp_path, precision=precision, steps=10))
    assert trainer.scaler is None and trainer.model.plan.precision == precision
    assert trainer.run().step == 10


def test_mixed_precision_needs_float32_master_weights(tmp_path):
    with pytest.raises(ValueError, match="--dtype float32"):
        tiny(tmp_path, precision="bf16-mixed", dtype="float64")
