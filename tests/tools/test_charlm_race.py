"""benchmarks/charlm_race.py in miniature: both systems train, and both are scored on the same
characters of the same held-out stretch with the same per-character loss."""
import importlib.util
import math
import pathlib

import numpy
import pytest

from gpurnn.training import data as D
from gpurnn.training.optim import scheduled_lr

torch = pytest.importorskip("torch", reason="the race's competitor is written in PyTorch "
                                            "(the bench extra)")

PATH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "charlm_race.py"
spec = importlib.util.spec_from_file_location("charlm_race", PATH)
race = importlib.util.module_from_spec(spec)
spec.loader.exec_module(race)

TEXT = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(150))


def test_the_transformers_schedule_is_gpurnns_cosine():
    cfg = race.TRANSFORMER
    for it in (0, 50, 99, 100, 700, 1999, 2000):
        assert race.nanogpt_lr(it, cfg) == pytest.approx(scheduled_lr(
            it, cfg["lr"], total_steps=cfg["iters"], warmup_steps=cfg["warmup"],
            min_lr=cfg["min_lr"]))


def test_both_systems_are_scored_on_the_same_characters(tmp_path):
    train_t, valid_t = D.split_text(TEXT, race.VALID_FRACTION)
    vocab = D.Vocabulary.for_text(TEXT, size=2000)
    train_ids, valid_ids = vocab.encode(train_t), vocab.encode(valid_t)
    cfg = dict(race.TRANSFORMER, iters=4, eval_every=2, warmup=1, eval_batches=2)
    tf = race.train_transformer(train_ids, valid_ids, len(vocab), 0, cfg)
    assert [c[1] for c in tf["curve"]] == [0, 2, 4] and tf["seconds"] > 0
    total, count = race.score_transformer(tf["model"], valid_ids, cfg["context"])
    assert count == len(valid_ids) - 1 and math.isfinite(total)
    (tmp_path / "t.txt").write_text(TEXT)
    ours = race.train_gpurnn(tmp_path / "t.txt", 3.0, 0, tmp_path, quick=True)
    assert ours["steps"] >= 1 and ours["curve"] and "\n" in ours["sample"]
    total, scored = race.score_gpurnn(ours["checkpoint"], valid_t, tmp_path)
    assert scored == count and math.isfinite(total)


def test_the_transformer_scores_every_character_once_whatever_the_length():
    model = race.transformer_model(7, race.TRANSFORMER)
    for n in (2, 40, 65, 66, 97, 200):
        ids = numpy.random.default_rng(n).integers(0, 7, n)
        _, count = race.score_transformer(model, ids, race.TRANSFORMER["context"])
        assert count == n - 1, n


def test_a_quick_race_records_both_systems_scored_alike(monkeypatch):
    monkeypatch.setenv("GPURNN_BLAS_THREADS", "1")
    result = race.run(1, quick=True, corpora={"code": TEXT})
    for key in ("machine", "versions", "threads", "method", "gpurnn_recipe", "transformer",
                "texts", "summary"):
        assert key in result, key
    assert set(result["versions"]) == {"python", "numpy", "torch", "gpurnn"}
    by_system = {r["system"]: r for r in result["runs"]}
    assert set(by_system) == {"transformer", "gpurnn"}
    ours, theirs = by_system["gpurnn"], by_system["transformer"]
    assert ours["scored"] == theirs["scored"] == result["texts"]["code"]["held_out"] - 1
    for r in (ours, theirs):
        assert math.isfinite(r["score"]) and r["curve"]
        assert all(math.isfinite(loss) for _, _, loss in r["curve"])
    assert ours["budget_seconds"] == theirs["seconds"] and "\n" in ours["sample"]
    assert result["summary"]["code"]["winner"] in ("gpurnn", "transformer")
