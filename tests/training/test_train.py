"""The trainer (gpurnn.training.train) and its configuration (gpurnn.training.config), on tiny corpora."""
import errno
import io
import json
import math
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy
import pytest

from gpurnn.training import train as T
from gpurnn.training import saving, sizing
from gpurnn.training.checkpoint import CheckpointError, load_checkpoint
from gpurnn.training.config import TrainConfig, merge_config, parse_duration, read_config_file
from gpurnn.training.distributed import SingleProcess
from gpurnn.training.stopping import StopConditions

ROOT = Path(__file__).resolve().parents[2]


def write_corpus(folder, sentences=240, seed=0):
    """A small regular English-like corpus: a model learns it within a few dozen steps."""
    rng = numpy.random.default_rng(seed)
    subjects, verbs = ["the cat", "a dog", "the old man", "my friend"], ["sees", "likes", "eats"]
    objects = ["the fish", "a red ball", "the cake", "some bread"]
    lines = [f"{rng.choice(subjects).capitalize()} {rng.choice(verbs)} {rng.choice(objects)}."
             for _ in range(sentences)]
    path = folder / "corpus.txt"
    path.write_text(" ".join(lines) + "\n", encoding="utf-8")
    return path


def tiny(tmp_path, **changes):
    """A config that trains in well under a second."""
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        write_corpus(tmp_path)
    values = dict(corpus=str(corpus), vocab_size=30, hidden=12, batch_size=4,
                  seq_len=8, steps=30, lr=0.02, eval_every=10, log_every=5, checkpoint_every=0,
                  checkpoint=str(tmp_path / "lm.npz"), samples=0, quiet=True, device="cpu")
    values.update(changes)
    return TrainConfig(**values)


def run(config):
    return T.Trainer(config).run()


def checkpoint_arrays(path):
    saved = load_checkpoint(path)
    arrays = dict(saved.params)
    for slot, per_param in saved.optimizer_state["slots"].items():
        arrays.update({f"{slot}/{name}": a for name, a in per_param.items()})
    if saved.extra["hidden"] is not None:
        arrays["hidden"] = saved.extra["hidden"]
    return saved, arrays


# ---------------------------------------------------------------------------------- config

def test_config_checks_name_the_flag():
    with pytest.raises(ValueError, match="--batch-size must be a positive integer, got 0"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="--vocab-size must be at least 5.*SENTENCE_END"):
        TrainConfig(vocab_size=4)
    with pytest.raises(ValueError, match="--optimizer must be one of sgd, momentum"):
        TrainConfig(optimizer="lbfgs")
    with pytest.raises(TypeError, match="--hidden must be an integer"):
        TrainConfig(hidden=1.5)
    with pytest.raises(ValueError, match="--steps or --epochs, not both"):
        TrainConfig(steps=3, epochs=1)
    with pytest.raises(ValueError, match="--device"):
        TrainConfig(device="tpu")
    TrainConfig(device="cuda:1", truncate=0, clip=0)  # valid; nothing probes the GPU here


def test_merge_config_accepts_dashes_rejects_unknown_keys_and_layers_steps_epochs():
    config = merge_config(TrainConfig(), {"batch-size": 8, "lr": 1, "epochs": 2})
    assert config.batch_size == 8 and config.lr == 1.0 and isinstance(config.lr, float)
    assert config.epochs == 2 and config.steps is None
    assert merge_config(config, {"steps": 5}).epochs is None  # a later layer replaces
    with pytest.raises(ValueError, match="unknown key 'hiden'; valid keys are: corpus, .*hidden"):
        TrainConfig.from_dict({"hiden": 3})
    with pytest.raises(TypeError, match="--quiet must be true or false"):
        TrainConfig.from_dict({"quiet": "yes"})


def test_config_files_toml_and_json(tmp_path):
    (tmp_path / "a.toml").write_text('hidden = 16\nvocab-size = 100\noptimizer = "sgd"\n')
    (tmp_path / "a.json").write_text('{"hidden": 16, "clip": 1}')
    assert read_config_file(tmp_path / "a.toml") == {"hidden": 16, "vocab-size": 100,
                                                      "optimizer": "sgd"}
    assert TrainConfig.from_dict(read_config_file(tmp_path / "a.json")).clip == 1.0
    (tmp_path / "bad.json").write_text("{hidden: 3")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        read_config_file(tmp_path / "bad.json")
    (tmp_path / "bad.toml").write_text("hidden = = 3")
    with pytest.raises(ValueError, match="bad.toml: not valid TOML"):
        read_config_file(tmp_path / "bad.toml")
    with pytest.raises(FileNotFoundError):
        read_config_file(tmp_path / "missing.toml")


# --------------------------------------------------------------------------------- training

@pytest.mark.parametrize("mode", ["stream", "sentence"])
def test_loss_falls_and_everything_is_recorded(tmp_path, mode):
    result = run(tiny(tmp_path, mode=mode, steps=40, samples=2))
    history = result.valid_history
    assert [step for step, _ in history] == [0, 10, 20, 30, 40]
    assert history[-1][1] < history[0][1] - 1.0  # nats per token
    vocab = T.Trainer(tiny(tmp_path, overwrite=True)).data.vocab
    assert math.isclose(history[0][1], math.log(len(vocab)), rel_tol=0.1)  # untrained: uniform
    assert len(result.samples) == 2 and not result.interrupted and 0 <= result.overhead < 1
    records = [json.loads(line) for line in (tmp_path / "lm.jsonl").read_text().splitlines()]
    assert records[0]["event"] == "start" and records[-1]["event"] == "end"
    train_records = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_records] == list(range(5, 41, 5))
    assert {"epoch", "lr", "tokens_per_s", "grad_norm", "skipped"} <= set(train_records[0])
    valid = [r for r in records if "valid_loss" in r]
    assert valid[-1]["valid_ppl"] == pytest.approx(math.exp(valid[-1]["valid_loss"]))
    saved = load_checkpoint(tmp_path / "lm.npz")
    assert saved.step == 40 and saved.config["train"]["mode"] == mode


def test_epochs_count_passes_over_the_data(tmp_path):
    config = tiny(tmp_path, steps=None, epochs=2)
    trainer = T.Trainer(config)
    assert trainer.total_steps == 2 * len(trainer.data.train)
    assert trainer.run().step == trainer.total_steps


@pytest.mark.parametrize("changes", [
    dict(mode="stream", optimizer="adam"),
    dict(mode="sentence", optimizer="sgd", lr=2.0, truncate=2),  # with the halving schedule
    dict(mode="stream", optimizer="rprop", clip=0.0),
    dict(mode="stream", optimizer="adam", cell="lstm", layers=2),  # carries (h, c) per layer
    dict(mode="sentence", optimizer="adam", cell="gru"),
])
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, changes):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    whole.mkdir(), parts.mkdir()
    run(tiny(whole, steps=30, samples=2, **changes))
    run(tiny(parts, steps=13, checkpoint_every=5, samples=2, **changes))  # stops mid-epoch
    resumed = run(tiny(parts, steps=30, resume=True, samples=2, **changes))
    assert resumed.step == 30
    a, arrays_a = checkpoint_arrays(whole / "lm.npz")
    b, arrays_b = checkpoint_arrays(parts / "lm.npz")
    assert arrays_a.keys() == arrays_b.keys()
    for name in arrays_a:
        assert numpy.array_equal(arrays_a[name], arrays_b[name]), name
    assert a.rng_state == b.rng_state and a.extra["batcher"] == b.extra["batcher"]
    assert a.optimizer_state["hyper"] == b.optimizer_state["hyper"]  # lr after any halving
    assert a.extra["schedule"] == b.extra["schedule"]
    regular = [h for h in a.extra["valid_history"]]
    assert regular == [h for h in b.extra["valid_history"] if h[0] != 13]


def test_resume_refuses_other_settings_and_other_data(tmp_path):
    run(tiny(tmp_path, steps=5))
    with pytest.raises(CheckpointError, match=r"other settings.*--hidden 12 -> 16"):
        T.Trainer(tiny(tmp_path, steps=10, resume=True, hidden=16))
    write_corpus(tmp_path, seed=1)  # same path, other text
    with pytest.raises(CheckpointError, match="training data differs"):
        T.Trainer(tiny(tmp_path, steps=10, resume=True))


def test_resume_past_the_end_trains_nothing(tmp_path, capsys):
    run(tiny(tmp_path, steps=5))
    capsys.readouterr()
    result = run(tiny(tmp_path, steps=3, resume=True))
    assert result.step == 5 and load_checkpoint(tmp_path / "lm.npz").step == 5
    assert "is at step 5, the end of a run of 3 steps: nothing to train" in capsys.readouterr().out


def test_resume_drops_metrics_logged_after_the_checkpoint(tmp_path):
    run(tiny(tmp_path, steps=10))
    with open(tmp_path / "lm.jsonl", "a") as file:  # as if it had crashed at step 12
        file.write(json.dumps({"step": 12, "loss": 1.0}) + "\n")
    run(tiny(tmp_path, steps=15, resume=True))
    steps = [json.loads(line).get("step") for line in open(tmp_path / "lm.jsonl")]
    assert steps.count(12) == 0 and 15 in steps


def _poison(trainer, bad_steps):
    """Make the model return a NaN loss and gradients at the given (1-based) steps."""
    real = trainer.model.loss_and_grads
    calls = []

    def loss_and_grads(*args, **kwargs):
        calls.append(1)
        loss, grads, last = real(*args, **kwargs)
        if len(calls) in bad_steps:
            grads = {k: numpy.full_like(g, numpy.nan) for k, g in grads.items()}
            return float("nan"), grads, last
        return loss, grads, last
    trainer.model.loss_and_grads = loss_and_grads


def test_non_finite_steps_are_skipped_counted_and_warned(tmp_path):
    trainer = T.Trainer(tiny(tmp_path, steps=12))
    _poison(trainer, {3, 7, 8})
    with pytest.warns(T.NonFiniteStepWarning) as caught:
        result = trainer.run()
    assert [str(w.message).split(":")[0] for w in caught] == ["step 3", "step 7", "step 8"]
    assert "non-finite loss (loss nan, gradient norm nan); step skipped" in str(caught[0].message)
    assert result.step == 12 and trainer.guard.skipped == 3 and trainer.optimizer.t == 9
    saved = load_checkpoint(tmp_path / "lm.npz")
    assert all(numpy.isfinite(p).all() for p in saved.params.values())
    assert saved.extra["skipped"] == 3


def test_repeated_non_finite_steps_stop_training_and_keep_the_checkpoint(tmp_path):
    trainer = T.Trainer(tiny(tmp_path, steps=30, checkpoint_every=4, max_bad_steps=3))
    _poison(trainer, set(range(6, 31)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", T.NonFiniteStepWarning)
        with pytest.raises(T.TrainingError, match="stopped at step 8: 3 steps in a row"):
            trainer.run()
    saved = load_checkpoint(tmp_path / "lm.npz")
    assert saved.step == 4 and all(numpy.isfinite(p).all() for p in saved.params.values())


def test_sum_reduction_reports_the_mean_per_token(tmp_path):
    mean = run(tiny(tmp_path, steps=1, eval_every=1, optimizer="sgd"))
    summed = run(tiny(tmp_path, steps=1, eval_every=1, optimizer="sgd", reduction="sum",
                      overwrite=True))
    assert summed.valid_history[0] == mean.valid_history[0]  # step 0: same model
    records = [json.loads(line) for line in open(tmp_path / "lm.jsonl")]
    assert 1 < [r for r in records if "loss" in r][0]["loss"] < 5  # nats, not a sum


def test_missing_checkpoint_folder_is_refused_before_training(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        T.Trainer(tiny(tmp_path, checkpoint=str(tmp_path / "no" / "lm.npz")))


def test_train_function_applies_overrides(tmp_path):
    result = T.train(tiny(tmp_path), steps=3, eval_every=3)
    assert result.step == 3 and result.checkpoint.name == "lm.npz"


# ------------------------------------------------------------------ stopping: signals, time

def _send_at(trainer, call, signum):
    """Send ``signum`` to this process during the ``call``-th step (its engine work)."""
    real, calls = trainer.model.loss_and_grads, []

    def loss_and_grads(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            os.kill(os.getpid(), signum)
        return real(*args, **kwargs)
    trainer.model.loss_and_grads = loss_and_grads


@pytest.mark.parametrize("signum, stop_signal, code, name", [
    (signal.SIGTERM, None, 143, "SIGTERM"),
    (signal.SIGUSR1, "USR1", 128 + signal.SIGUSR1, "SIGUSR1"),  # SLURM's --signal=USR1@90
    (signal.SIGINT, None, 130, "Ctrl-C (SIGINT)"),
])
def test_a_signal_stops_after_the_step_saves_and_resumes_bit_identically(
        tmp_path, signum, stop_signal, code, name):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    whole.mkdir(), parts.mkdir()
    run(tiny(whole, steps=30, stop_signal=stop_signal))
    trainer = T.Trainer(tiny(parts, steps=30, stop_signal=stop_signal))
    _send_at(trainer, 13, signum)
    result = trainer.run()
    assert (result.step, result.interrupted, result.exit_code, result.stopped_by) == \
        (13, True, code, name)
    assert load_checkpoint(parts / "lm.npz").step == 13
    assert signal.getsignal(signum) in (signal.SIG_DFL, signal.default_int_handler)  # restored
    run(tiny(parts, steps=30, resume=True, stop_signal=stop_signal))
    a, arrays_a = checkpoint_arrays(whole / "lm.npz")
    b, arrays_b = checkpoint_arrays(parts / "lm.npz")
    assert a.step == b.step == 30 and arrays_a.keys() == arrays_b.keys()
    for key in arrays_a:
        assert numpy.array_equal(arrays_a[key], arrays_b[key]), key
    assert a.rng_state == b.rng_state and a.extra["batcher"] == b.extra["batcher"]


def test_stop_signal_must_be_catchable():
    with pytest.raises(ValueError, match="--stop-signal must name a signal that can be caught"):
        TrainConfig(stop_signal="KILL")
    assert TrainConfig(stop_signal="sigusr2").stop_signal == "sigusr2"


def test_time_limit_stops_leaving_room_for_the_measured_checkpoint():
    clock, said = [0.0], []
    stopper = StopConditions(TrainConfig(time_limit="100s"), SingleProcess(), said.append,
                             clock=lambda: clock[0])
    trainer = SimpleNamespace(longest={"step": 1.0, "valid": 2.0, "save": 0.0}, step=7)
    clock[0] = 99.5
    stopper.on_step_end(trainer)
    assert not stopper.stopped  # no checkpoint measured yet: no guess
    trainer.longest["save"] = 10.0  # reserve: a step, an evaluation, twice the save, 1 s
    clock[0] = 75.5
    stopper.on_step_end(trainer)
    assert not stopper.stopped
    clock[0] = 76.5
    stopper.on_step_end(trainer)
    assert stopper.stopped and stopper.exit_code == 75
    assert said == ["the time limit (100s) is near (24 s left): saving a checkpoint after step "
                    "7 and stopping"]


def test_time_limit_in_a_run(tmp_path):
    result = run(tiny(tmp_path, steps=1_000_000, time_limit="2s", eval_every=1000))
    assert result.interrupted and result.exit_code == 75
    # before the limit, to the margin of a loaded machine (the rule: the fake-clock test above)
    assert result.stopped_by == "the time limit (2s)" and result.seconds < 2.5
    assert load_checkpoint(tmp_path / "lm.npz").step == result.step > 0


def test_durations():
    assert parse_duration("2h30m") == 9000 and parse_duration("90") == 90
    assert parse_duration("1d") == 86400 and parse_duration("1.5m") == 90
    for bad in ("2x", "h", "0", "-3", "1h 2q"):
        with pytest.raises(ValueError, match="--time-limit must be a"):
            TrainConfig(time_limit=bad)


# ------------------------------------------------------------------ saving: writes, paths, lock

def _failing_savez(monkeypatch, failing_calls):
    """numpy.savez that writes part of a file, then fails with ENOSPC on the given calls."""
    real, calls = numpy.savez, []

    def savez(file, **arrays):
        calls.append(1)
        if len(calls) in failing_calls:
            file.write(b"PK\x03\x04 half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(file, **arrays)
    monkeypatch.setattr(numpy, "savez", savez)
    monkeypatch.setattr(saving, "RETRY_PAUSE_S", 0.0)


def test_a_failed_checkpoint_write_is_retried_once(tmp_path, monkeypatch):
    _failing_savez(monkeypatch, {2})  # the second write fails, its retry succeeds
    with pytest.warns(RuntimeWarning, match=r"writing checkpoint .*lm\.npz failed \(No space "
                                            r"left on device \(ENOSPC\)\); trying once more"):
        result = run(tiny(tmp_path, steps=20, checkpoint_every=5))
    assert result.step == 20 and load_checkpoint(tmp_path / "lm.npz").step == 20


def test_a_failing_checkpoint_write_stops_keeping_the_previous_one(tmp_path, monkeypatch):
    _failing_savez(monkeypatch, {3, 4})  # the checkpoint at step 15 and its retry
    with pytest.raises(saving.CheckpointWriteError) as info, pytest.warns(RuntimeWarning):
        run(tiny(tmp_path, steps=30, checkpoint_every=5))
    message = str(info.value)
    assert "\n" not in message and message == (
        f"could not write checkpoint {tmp_path / 'lm.npz'} at step 15: No space left on device "
        f"(ENOSPC) (tried twice); the last checkpoint, {tmp_path / 'lm.npz'} (step 10), is "
        f"intact; fix it and continue with: gpurnn train --resume --checkpoint "
        f"{tmp_path / 'lm.npz'}")
    assert load_checkpoint(tmp_path / "lm.npz").step == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "lm.jsonl", "lm.npz"]


@pytest.mark.parametrize("case, changes, error, message", [
    ("existing", {}, FileExistsError, r"already holds a checkpoint \(step 3\); add --resume to "
                                      r"continue it or --overwrite to replace it"),
    ("foreign", {"overwrite": True}, FileExistsError, r"notes\.npz exists and is not a gpurnn "
                                                      r"checkpoint; refusing to replace it"),
    ("corpus", {"checkpoint": "corpus.txt", "overwrite": True}, ValueError,
     r"--checkpoint .*corpus\.txt would overwrite the corpus"),
    ("corpus", {"metrics": "corpus.txt"}, ValueError, r"--metrics .*corpus\.txt would overwrite"),
    ("same", {"metrics": "lm.npz"}, ValueError, r"--checkpoint and --metrics are the same file"),
    ("folder", {"checkpoint": "sub"}, IsADirectoryError, r"--checkpoint .*sub is a folder; give "
                                                         r"a file path such as .*sub/lm\.npz"),
    ("notes", {"resume": True, "metrics": "notes.txt"}, FileExistsError,
     r"--metrics .*notes\.txt exists and is not a gpurnn metrics file"),
    ("metrics", {"checkpoint": "new.npz", "metrics": "lm.jsonl"}, FileExistsError,
     r"--metrics .*lm\.jsonl already holds the metrics of a run; add --resume"),
])
def test_nothing_is_overwritten_by_surprise(tmp_path, case, changes, error, message):
    run(tiny(tmp_path, steps=3))
    (tmp_path / "sub").mkdir()
    (tmp_path / "notes.txt").write_text("my notes\n")
    (tmp_path / "notes.npz").write_bytes(b"PK\x03\x04 a zip of mine")
    if case == "foreign":
        changes = {**changes, "checkpoint": "notes.npz"}
    changes = {k: str(tmp_path / v) if k in ("checkpoint", "metrics") else v
               for k, v in changes.items()}
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(error, match=message):
        T.Trainer(tiny(tmp_path, steps=6, **changes))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_overwrite_replaces_a_checkpoint_and_resume_keeps_it(tmp_path):
    run(tiny(tmp_path, steps=3))
    assert run(tiny(tmp_path, steps=5, resume=True)).step == 5
    assert run(tiny(tmp_path, steps=2, overwrite=True)).step == 2
    assert load_checkpoint(tmp_path / "lm.npz").step == 2


def test_an_unwritable_folder_is_refused_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(saving.os, "access", lambda path, mode: False)  # as a non-root user
    with pytest.raises(PermissionError, match=r"--checkpoint .*lm\.npz: no permission to "
                                              r"write in folder"):
        T.Trainer(tiny(tmp_path))


def test_a_second_trainer_on_a_held_checkpoint_refuses_naming_the_holder(tmp_path):
    first = T.Trainer(tiny(tmp_path, steps=5))
    with pytest.raises(saving.CheckpointInUseError,
                       match=rf"--checkpoint .*lm\.npz is in use by another gpurnn train "
                             rf"\(PID {os.getpid()} on [^)]+\); wait for it to end"):
        T.Trainer(tiny(tmp_path, steps=5, overwrite=True))
    first.run()
    assert not list(tmp_path.glob(".*.lock"))  # released, and removed by its holder
    assert run(tiny(tmp_path, steps=8, resume=True)).step == 8


LOCK_HOLDER = """
import sys, time
from pathlib import Path
from gpurnn.training.saving import FileLock
FileLock(Path(sys.argv[1]), "--checkpoint").acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_a_killed_holder_never_leaves_the_lock_stuck(tmp_path):
    target = tmp_path / "lm.npz"
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(target)],
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(saving.CheckpointInUseError, match=f"PID {holder.pid} on"):
            saving.FileLock(target, "--checkpoint").acquire()
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / ".lm.npz.lock").exists()  # left behind by the killed holder ...
    lock = saving.FileLock(target, "--checkpoint").acquire()  # ... but not held
    lock.release()
    assert not (tmp_path / ".lm.npz.lock").exists()


def test_stale_temporaries_of_this_checkpoint_alone_are_removed(tmp_path, capsys):
    ours = [".lm.npz.k2x_9abq.tmp", ".lm.npz.00000000.tmp"]
    others = [".lm.npz.ABCDEFGH.tmp", ".lm.npz.abc.tmp", ".other.npz.k2x_9abq.tmp",
              "lm.npz.k2x_9abq.tmp", ".lm.npz.k2x_9abq.tmp.keep"]
    for name in ours + others:
        (tmp_path / name).write_bytes(b"x")
    run(tiny(tmp_path, steps=2, quiet=False))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        others + ["corpus.txt", "lm.jsonl", "lm.npz"])
    out = capsys.readouterr().out
    assert f"removed {ours[0]}, left by a writer of lm.npz that did not finish" in out


# ------------------------------------------------------------------ divergence, reports

def _poison_params_after(trainer, step):
    """Make the parameters NaN right after the update of ``step``."""
    real, calls = trainer.optimizer.step, []

    def update(params, grads):
        real(params, grads)
        calls.append(1)
        if len(calls) == step:
            for value in params.values():
                value[...] = numpy.nan
    trainer.optimizer.step = update


@pytest.mark.parametrize("mode, at, what", [
    ("stream", 10, "the validation loss is nan"),  # found by the evaluation of step 10
    ("stream", 7, "the parameters hold NaN or Inf"),  # found by the step after
    ("sentence", 7, "the parameters hold NaN or Inf"),
])
def test_a_diverged_run_says_so(tmp_path, mode, at, what):
    trainer = T.Trainer(tiny(tmp_path, mode=mode, steps=30, checkpoint_every=5))
    _poison_params_after(trainer, at)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", T.NonFiniteStepWarning)
        with pytest.raises(T.TrainingError) as info:
            trainer.run()
    message = str(info.value)
    assert f"{what}" in message and "so the run diverged; try a lower --lr (now 0.02) or " \
        "--clip (now 5)" in message and "h0" not in message
    assert f"the last checkpoint, {tmp_path / 'lm.npz'} (step 5), is intact" in message
    assert load_checkpoint(tmp_path / "lm.npz").step == 5


def test_a_huge_finite_loss_is_reported_not_an_overflow(tmp_path, capsys):
    trainer = T.Trainer(tiny(tmp_path, steps=10, quiet=False))
    trainer.evaluate = lambda: 800.0  # exp(800) overflows a float
    trainer.run()
    assert "valid loss 800.000, perplexity inf" in capsys.readouterr().out
    valid = [json.loads(line) for line in open(tmp_path / "lm.jsonl") if "valid_loss" in line]
    assert valid[-1]["valid_loss"] == 800.0 and valid[-1]["valid_ppl"] is None


def test_quiet_still_prints_the_final_line(tmp_path):
    out = io.StringIO()
    T.Trainer(tiny(tmp_path, steps=10), out=out).run()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"checkpoint: {tmp_path / 'lm.npz'} (step 10, "
                                                   f"perplexity ")


def test_without_a_terminal_a_progress_line_comes_every_n_seconds(tmp_path):
    out = io.StringIO()  # not a terminal, as a batch job's log is not
    T.Trainer(tiny(tmp_path, steps=20, quiet=False, log_every_seconds=0), out=out).run()
    progress = [line for line in out.getvalue().splitlines() if "/20: loss" in line]
    assert [line.split(":")[0] for line in progress] == ["step 5/20", "step 10/20",
                                                         "step 15/20", "step 20/20"]
    out = io.StringIO()  # steps in between records: the clock decides
    T.Trainer(tiny(tmp_path, steps=300, quiet=False, log_every=1000, log_every_seconds=0.02,
                   overwrite=True), out=out).run()
    progress = [line for line in out.getvalue().splitlines() if "/300: loss" in line]
    assert len(progress) >= 2 and "tokens/s" in progress[0] and "left" in progress[0]


# ------------------------------------------------------------------ hostile configs, sizes

def test_sizes_that_would_not_fit_are_refused_before_allocating(tmp_path):
    with pytest.raises(ValueError, match=r"--hidden 100000000 .* needs at least [0-9.]+ PiB, "
                                         r"more than the .* free on cpu; lower --hidden"):
        T.Trainer(tiny(tmp_path, hidden=100_000_000))


@pytest.mark.parametrize("cell, layers", [("elman", 1), ("elman", 2), ("gru", 1), ("gru", 2),
                                          ("lstm", 3), ("mingru", 2), ("minlstm", 1),
                                          ("lru", 2), ("paragru", 2)])
def test_the_memory_estimate_counts_the_parameters_of_every_cell(cell, layers):
    from gpurnn import make_model
    config = TrainConfig(cell=cell, layers=layers, hidden=7)
    model = make_model(cell, 23, 7, 23, num_layers=layers)
    assert sizing.parameter_count(config, 23) == sum(p.size for p in model.params.values())


def test_a_key_given_twice_in_two_spellings_is_refused(tmp_path):
    (tmp_path / "a.toml").write_text('vocab-size = 100\nvocab_size = 200\n')
    with pytest.raises(ValueError, match=r"a\.toml: --vocab-size is given twice, as "
                                         r"'vocab-size' and 'vocab_size'; keep one"):
        merge_config(TrainConfig(), read_config_file(tmp_path / "a.toml"),
                     source=str(tmp_path / "a.toml"))
    (tmp_path / "a.json").write_text('{"hidden": 8, "hidden": 9}')
    with pytest.raises(ValueError, match=r"a\.json: key 'hidden' is given twice; keep one"):
        read_config_file(tmp_path / "a.json")


def test_a_checkpoint_whose_data_position_is_out_of_range_is_refused(tmp_path):
    run(tiny(tmp_path, steps=5))
    saved = load_checkpoint(tmp_path / "lm.npz")
    fields = dict(params=saved.params, optimizer_state=saved.optimizer_state,
                  vocab=saved.vocab, config=saved.config, rng_state=saved.rng_state,
                  step=saved.step, extra={**saved.extra, "batcher": {
                      **saved.extra["batcher"], "index": 10_000}})
    from gpurnn.training.checkpoint import save_checkpoint
    save_checkpoint(tmp_path / "lm.npz", **fields)
    with pytest.raises(CheckpointError, match=r"cannot resume from this checkpoint \(ValueError: "
                                              r"batcher state position \(epoch 0, index 10000\) "
                                              r"is out of range\)"):
        T.Trainer(tiny(tmp_path, steps=10, resume=True))


def test_an_optimizer_state_that_overflowed_stops_as_diverged_not_unloadable(tmp_path):
    trainer = T.Trainer(tiny(tmp_path, steps=30, checkpoint_every=5))
    real = trainer.optimizer.step

    def update(params, grads):  # Adam's second moment overflows at step 7 (float32, no clip)
        real(params, grads)
        if trainer.optimizer.t == 7:
            trainer.optimizer._state["v"]["weight_hh"][...] = numpy.inf
    trainer.optimizer.step = update
    with pytest.raises(T.TrainingError, match=r"training stopped at step 10: "
                                              r"optimizer/slots/v/weight_hh contains NaN or Inf; .*so "
                                              r"the run diverged; .*\(step 5\), is intact"):
        trainer.run()
    assert load_checkpoint(tmp_path / "lm.npz").step == 5


def test_clip_value_clips_every_element_the_optimizer_sees(tmp_path):
    trainer = T.Trainer(tiny(tmp_path, steps=6, clip=0, clip_value=1e-3))
    seen, real = [], trainer.optimizer.step

    def step(params, grads):
        seen.append(max(float(numpy.abs(g).max()) for g in grads.values()))
        real(params, grads)
    trainer.optimizer.step = step
    trainer.run()
    assert len(seen) == 6 and max(seen) == float(numpy.float32(1e-3))   # float32 training
    with pytest.raises(ValueError, match="--clip-value must be a number >= 0"):
        tiny(tmp_path, clip_value=-1.0)
