"""The trainer (gpurnn.training.train) and its configuration (gpurnn.training.config), on tiny corpora."""
import json
import math
import warnings

import numpy
import pytest

from gpurnn import train as T
from gpurnn.training.checkpoint import CheckpointError, load_checkpoint
from gpurnn.training.config import TrainConfig, merge_config, read_config_file


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
