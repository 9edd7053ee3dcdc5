"""Hostile files and inputs: nothing a planted file or a checkpoint holds writes outside its
run, hangs, or reaches a traceback; each case is one line naming the file or the flag."""
import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import time

import numpy
import pytest

from gpurnn.tools import cli
from gpurnn.training import checkpoint as C
from gpurnn.training import data as D
from gpurnn.training import saving
from gpurnn.training.generate import load_language_model, sample
from gpurnn.training.train import Trainer

from test_train import tiny, write_corpus

posix = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX file types")


def train_argv(folder, *more):
    return ["train", "--corpus", str(folder / "corpus.txt"), "--vocab-size", "30", "--hidden",
            "8", "--batch-size", "4", "--seq-len", "8", "--steps", "6", "--quiet",
            "--device", "cpu", "--samples", "0", "--checkpoint", str(folder / "lm.npz"), *more]


def exit_code(argv):
    """What ``gpurnn ARGV`` exits with, argparse's refusals (SystemExit) included."""
    try:
        return cli.main(argv)
    except SystemExit as exit_:
        return exit_.code


def one_line_error(capsys, *words):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    return err


# ------------------------------------------------------------------------------- the locks

@posix
def test_a_lock_planted_as_a_symlink_is_refused_and_its_target_untouched(tmp_path, capsys):
    write_corpus(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    os.symlink(victim, tmp_path / ".lm.npz.lock")
    assert cli.main(train_argv(tmp_path)) == 2
    one_line_error(capsys, ".lm.npz.lock is a symbolic link")
    assert victim.read_text() == "precious" and not (tmp_path / "lm.npz").exists()


@posix
def test_a_lock_that_is_not_a_regular_file_is_refused(tmp_path, capsys):
    write_corpus(tmp_path)
    os.mkfifo(tmp_path / ".lm.npz.lock")
    assert cli.main(train_argv(tmp_path)) == 2
    one_line_error(capsys, "not a regular file")


@posix
def test_a_lock_planted_as_a_hard_link_is_refused_and_its_other_name_untouched(tmp_path,
                                                                              capsys):
    write_corpus(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    os.link(victim, tmp_path / ".lm.npz.lock")
    assert cli.main(train_argv(tmp_path)) == 2
    one_line_error(capsys, ".lm.npz.lock has 2 names (a hard link to another file)")
    assert victim.read_text() == "precious"


@posix
def test_two_names_of_one_checkpoint_share_its_lock(tmp_path):
    (tmp_path / "cc.npz").write_bytes(b"")
    os.symlink(tmp_path / "cc.npz", tmp_path / "ccl.npz")
    held = saving.FileLock(tmp_path / "cc.npz", "--checkpoint").acquire()
    try:
        with pytest.raises(saving.CheckpointInUseError, match="ccl.npz is in use"):
            saving.FileLock(tmp_path / "ccl.npz", "--checkpoint").acquire()
    finally:
        held.release()


# ----------------------------------------------------------------- paths a checkpoint stores

def test_resume_writes_metrics_beside_the_checkpoint_named_not_the_stored_path(tmp_path,
                                                                              capsys):
    write_corpus(tmp_path)
    assert cli.main(train_argv(tmp_path, "--metrics", str(tmp_path / "a.jsonl"))) == 0
    before = (tmp_path / "a.jsonl").read_text()
    shutil.copy(tmp_path / "lm.npz", tmp_path / "b.npz")
    assert cli.main(["train", "--resume", "--checkpoint", str(tmp_path / "b.npz"), "--steps",
                     "9", "--quiet"]) == 0
    assert (tmp_path / "a.jsonl").read_text() == before      # another run's file: untouched
    records = [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert records[0]["event"] == "resume" and records[-1]["step"] == 9
    assert C.load_checkpoint(tmp_path / "lm.npz").step == 6  # and so is its checkpoint


def test_an_overwrite_that_fails_keeps_the_old_checkpoint_and_metrics_together(tmp_path):
    Trainer(tiny(tmp_path, steps=10)).run()
    metrics = (tmp_path / "lm.jsonl").read_text()
    with pytest.raises(Exception):  # diverges at once, before its first checkpoint
        with pytest.warns(RuntimeWarning):
            Trainer(tiny(tmp_path, steps=10, overwrite=True, lr=1e308, clip=0.0,
                         optimizer="sgd", max_bad_steps=1)).run()
    assert C.load_checkpoint(tmp_path / "lm.npz").step == 10
    assert (tmp_path / "lm.jsonl").read_text() == metrics
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "lm.jsonl", "lm.npz"]
    # an overwrite that succeeds replaces both
    Trainer(tiny(tmp_path, steps=4, overwrite=True)).run()
    assert C.load_checkpoint(tmp_path / "lm.npz").step == 4
    assert json.loads((tmp_path / "lm.jsonl").read_text().splitlines()[-1])["step"] == 4


def test_a_failed_first_checkpoint_says_what_works_and_it_does(tmp_path, monkeypatch):
    real = numpy.savez

    def full_disk(file, **arrays):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(numpy, "savez", full_disk)
    monkeypatch.setattr(saving, "RETRY_PAUSE_S", 0.0)
    with pytest.raises(saving.CheckpointWriteError) as info, pytest.warns(RuntimeWarning):
        Trainer(tiny(tmp_path, steps=5)).run()
    assert str(info.value).endswith("no checkpoint was written; fix it and run the same "
                                    "gpurnn train command again")
    monkeypatch.setattr(numpy, "savez", real)
    assert Trainer(tiny(tmp_path, steps=5)).run().step == 5  # the same command, again


# ------------------------------------------------------------------------------- the corpus

@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_a_device_as_corpus_is_refused_at_once(tmp_path, capsys, device):
    if not os.path.exists(device):
        pytest.skip(f"{device} is not on this machine")
    start = time.monotonic()
    assert cli.main(train_argv(tmp_path, "--corpus", device, "--level", "char")) == 2
    one_line_error(capsys, device, "not a regular file")
    assert time.monotonic() - start < 10


@posix
def test_a_fifo_as_corpus_is_refused_without_blocking(tmp_path, capsys):
    os.mkfifo(tmp_path / "pipe.txt")
    assert cli.main(train_argv(tmp_path, "--corpus", str(tmp_path / "pipe.txt"))) == 2
    one_line_error(capsys, "pipe.txt is not a regular file")
    assert not (tmp_path / ".lm.npz.lock").exists()


def test_a_corpus_over_the_limit_is_refused_before_reading(tmp_path):
    (tmp_path / "big.txt").write_text("word " * 1000)
    with pytest.raises(ValueError, match=r"holds 5,000 bytes, more than the limit of 1,000"):
        D.load_corpus(tmp_path / "big.txt", max_bytes=1000)
    with pytest.raises(ValueError, match="more than the limit"):
        D.load_text(tmp_path / "big.txt", level="byte", max_bytes=1000)
    assert D.load_text(tmp_path / "big.txt", max_bytes=0)  # 0: no limit


def test_utf16_text_is_named_as_such(tmp_path):
    (tmp_path / "bom.txt").write_text("Hello there.\n", encoding="utf-16")
    (tmp_path / "le.txt").write_bytes("Hello there, no mark.\n".encode("utf-16-le"))
    for name in ("bom.txt", "le.txt"):
        with pytest.raises(ValueError, match=f"{name}: is UTF-16 text, not UTF-8; convert"):
            D.load_corpus(tmp_path / name)
    assert D.load_text(tmp_path / "le.txt", level="byte")  # bytes read anything


# ------------------------------------------------------------------------------ checkpoints

def _saved(tmp_path):
    Trainer(tiny(tmp_path, steps=3)).run()
    return C.load_checkpoint(tmp_path / "lm.npz")


def test_a_decompression_bomb_is_refused_before_it_inflates(tmp_path, monkeypatch):
    saved = _saved(tmp_path)
    bomb = tmp_path / "bomb.npz"
    C.save_checkpoint(bomb, params=saved.params, optimizer_state={}, vocab=saved.vocab,
                      config=saved.config, rng_state=None, step=3,
                      extra={"junk": numpy.zeros(200_000)})
    monkeypatch.setattr(C, "_OTHER_BYTES_ALLOWED", 1000)
    monkeypatch.setattr(C, "_OTHER_BYTES_PER_PARAM_BYTE", 1)
    inflated = []
    monkeypatch.setattr(numpy, "load", lambda *a, **k: inflated.append(1))
    with pytest.raises(C.CheckpointError, match=r"bomb\.npz: its optimizer state and extras "
                                                r"would take 1,600,\d+ bytes uncompressed"):
        C.load_checkpoint(bomb)
    assert not inflated


@pytest.mark.parametrize("field, value, message", [
    ("extra", 7, "field 'extra' is int, expected an object or null"),
    ("vocab", {"a": 1}, "field 'vocab' is dict, expected a list"),
    ("params", [["x"]], "field 'params' must list strings only"),
    ("optimizer", [1, 2], "field 'optimizer' is list, expected an object"),
])
def test_damaged_metadata_is_refused_naming_the_field(tmp_path, capsys, field, value, message):
    _saved(tmp_path)
    with numpy.load(tmp_path / "lm.npz") as archive:
        arrays = {key: archive[key] for key in archive.files}
    meta = json.loads(arrays[C._META_KEY].tobytes())
    meta[field] = value
    arrays[C._META_KEY] = numpy.frombuffer(json.dumps(meta).encode(), numpy.uint8)
    numpy.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(C.CheckpointError, match=message):
        C.load_checkpoint(tmp_path / "bad.npz")
    assert cli.main(["generate", str(tmp_path / "bad.npz")]) == 2
    one_line_error(capsys, "bad.npz", field)


def test_deeply_nested_metadata_is_refused(tmp_path):
    _saved(tmp_path)
    with numpy.load(tmp_path / "lm.npz") as archive:
        arrays = {key: archive[key] for key in archive.files}
    arrays[C._META_KEY] = numpy.frombuffer(b"[" * 100_000 + b"]" * 100_000, numpy.uint8)
    numpy.savez(tmp_path / "deep.npz", **arrays)
    with pytest.raises(C.CheckpointError, match="nested too deeply"):
        C.load_checkpoint(tmp_path / "deep.npz")


@posix
def test_checkpoints_follow_the_umask_and_keep_a_chosen_mode(tmp_path):
    old = os.umask(0o022)
    try:
        Trainer(tiny(tmp_path, steps=2)).run()
        assert stat.S_IMODE(os.stat(tmp_path / "lm.npz").st_mode) == 0o644
        assert stat.S_IMODE(os.stat(tmp_path / "lm.jsonl").st_mode) == 0o644
        os.chmod(tmp_path / "lm.npz", 0o640)
        os.chmod(tmp_path / "lm.jsonl", 0o600)
        Trainer(tiny(tmp_path, steps=4, resume=True)).run()
        assert stat.S_IMODE(os.stat(tmp_path / "lm.npz").st_mode) == 0o640
        Trainer(tiny(tmp_path, steps=3, overwrite=True)).run()  # metrics via a temporary
        assert stat.S_IMODE(os.stat(tmp_path / "lm.jsonl").st_mode) == 0o600
    finally:
        os.umask(old)


# ---------------------------------------------------------------------------- the commands

@pytest.mark.parametrize("argv, words", [
    (["--num", "1e20"], ["--num", "expected a positive integer"]),
    (["--num", "1000000000"], ["num must be a positive integer up to 100,000"]),
    (["--seed", "-1"], ["--seed", "expected an integer >= 0"]),
    (["--device", "tpu"], ["unknown device 'tpu'"]),
])
def test_generate_refuses_bad_flags_in_one_line(tmp_path, capsys, argv, words):
    _saved(tmp_path)
    capsys.readouterr()
    assert exit_code(["generate", str(tmp_path / "lm.npz"), *argv]) == 2
    err = one_line_error(capsys, *words)
    assert "lm.npz" not in err or "--device" not in argv  # a bad device is not the file's


@pytest.mark.parametrize("flag, value", [("--eps", "0"), ("--eps", "-1"), ("--eps", "nan"),
                                         ("--eps", "1e300"), ("--tolerance", "-1")])
def test_gradcheck_refuses_steps_and_tolerances_that_mean_nothing(capsys, flag, value):
    assert exit_code(["gradcheck", flag, value]) == 2
    one_line_error(capsys, flag, "expected a number above 0 and at most 1")


def test_sample_checks_its_arguments_up_front(tmp_path):
    _saved(tmp_path)
    lm = load_language_model(tmp_path / "lm.npz")
    bigger = D.Vocabulary(lm.vocab.to_list() + ["extra"])
    with pytest.raises(ValueError, match=r"the vocabulary has \d+: give the vocabulary"):
        sample(lm.model, bigger)
    with pytest.raises(ValueError, match="warmup must be 1-D integer token ids"):
        sample(lm.model, lm.vocab, warmup=[1.5])
    with pytest.raises(ValueError, match="warmup must be"):
        sample(lm.model, lm.vocab, warmup=[len(lm.vocab)])
    assert len(sample(lm.model, lm.vocab, num=numpy.int64(2), top_k=numpy.int64(3),
                      seed=0)) == 2


def test_no_validation_set_is_said_for_what_it_is(tmp_path):
    with pytest.warns(UserWarning, match=r"--valid-fraction 0 holds nothing out"):
        Trainer(tiny(tmp_path, steps=2, valid_fraction=0.0)).run()


@posix
def test_a_hostile_corpus_is_one_line_in_a_real_process(tmp_path):
    """The command as a user runs it: a device as corpus ends in one line and exit code 2."""
    result = subprocess.run([sys.executable, "-m", "gpurnn", *train_argv(tmp_path, "--corpus",
                                                                          "/dev/null")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr


# --------------------------------------------------------------------------- the Python API

def test_assigning_a_parameter_entry_is_checked_like_the_attribute():
    from gpurnn import ElmanRNN, LSTM
    model = ElmanRNN(5, 3, 5)
    with pytest.raises(KeyError, match=r"'W' is not a parameter of this model \(the seeds' "
                                       r"name W is the attribute model\.W; its key here is "
                                       r"'weight_hh'\)"):
        model.params["W"] = numpy.zeros((3, 3))
    with pytest.raises(ValueError, match=r"weight_hh must have shape \(3, 3\), got \(4, 3\)"):
        model.params["weight_hh"] = numpy.zeros((4, 3))
    with pytest.raises(TypeError, match="cannot be removed"):
        model.params.pop("V")
    model.params["weight_hh"] = numpy.eye(3)           # a good one is stored, as a copy
    assert numpy.array_equal(model.W, numpy.eye(3)) and model.W.dtype == model.dtype
    lstm = LSTM(4, 2, 4)
    lstm.params.update(weight_hh=numpy.zeros((8, 2)))
    with pytest.raises(ValueError, match="weight_hh must have shape"):
        lstm.params.update(weight_hh=numpy.zeros((2, 2)))


def test_a_model_too_big_for_the_machine_is_refused_before_allocating():
    from gpurnn import ElmanRNN
    with pytest.raises(ValueError, match=r"ElmanRNN\(20, 1000000000000, 20\) would need .*PiB "
                                         r"for its parameters.*more than this machine's"):
        ElmanRNN(20, 10**12, 20)


def test_check_finite_names_the_parameter():
    from gpurnn import GRU
    model = GRU(4, 3, 4)
    model.check_finite()
    model.params["weight_hh"][0, 0] = numpy.nan          # in place: the dict cannot see it
    with pytest.raises(ValueError, match="parameter weight_hh holds NaN or Inf"):
        model.check_finite()


# ----------------------------------------------------------------------- contradictions

@pytest.mark.parametrize("argv, words", [
    (["--resume", "--overwrite"], ["--resume continues the checkpoint and --overwrite "
                                   "replaces it"]),
    (["--stop-signal", "SEGV"], ["--stop-signal must name a signal that can be caught safely"]),
    (["--samples", "99999999999999999999"], ["--samples must be at most 100,000"]),
    (["--corpus-limit", "lots"], ["--corpus-limit must be a number of bytes"]),
])
def test_train_refuses_contradictions_and_unsafe_values(tmp_path, capsys, argv, words):
    write_corpus(tmp_path)
    assert exit_code(train_argv(tmp_path, *argv)) == 2
    one_line_error(capsys, *words)
    assert not (tmp_path / "lm.npz").exists()


def test_the_corpus_limit_flag(tmp_path, capsys):
    write_corpus(tmp_path)
    assert exit_code(train_argv(tmp_path, "--corpus-limit", "1kB")) == 2
    one_line_error(capsys, "more than the limit of 1,000 (--corpus-limit raises it)")
    assert exit_code(train_argv(tmp_path, "--corpus-limit", "0")) == 0  # 0: no limit


def test_a_config_that_is_a_folder_is_named_as_one(tmp_path, capsys):
    write_corpus(tmp_path)
    assert exit_code(train_argv(tmp_path, "--config", str(tmp_path))) == 2
    one_line_error(capsys, "is a folder; give a .toml or .json file")


def test_an_older_checkpoint_of_a_run_started_with_overwrite_resumes(tmp_path):
    """Run-control flags stored in a checkpoint (it was started with --overwrite) do not
    contradict the --resume of the command that continues it."""
    write_corpus(tmp_path)
    assert exit_code(train_argv(tmp_path)) == 0
    assert exit_code(train_argv(tmp_path, "--overwrite")) == 0
    assert exit_code(["train", "--resume", "--checkpoint", str(tmp_path / "lm.npz"),
                      "--steps", "8", "--quiet"]) == 0
    assert C.load_checkpoint(tmp_path / "lm.npz").step == 8


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_a_checkpoint_whose_stored_corpus_is_a_device_resumes_to_one_line(tmp_path, capsys):
    """--resume reads the corpus path stored in the checkpoint only after the checks a
    --corpus flag gets: a device there is refused at once, not read forever."""
    write_corpus(tmp_path)
    assert exit_code(train_argv(tmp_path)) == 0
    saved = C.load_checkpoint(tmp_path / "lm.npz")
    config = {**saved.config, "train": {**saved.config["train"], "corpus": "/dev/zero"}}
    C.save_checkpoint(tmp_path / "lm.npz", params=saved.params,
                      optimizer_state=saved.optimizer_state, vocab=saved.vocab, config=config,
                      rng_state=saved.rng_state, step=saved.step, extra=saved.extra)
    capsys.readouterr()
    start = time.monotonic()
    assert exit_code(["train", "--resume", "--checkpoint", str(tmp_path / "lm.npz"),
                      "--steps", "9", "--quiet"]) == 2
    one_line_error(capsys, "/dev/zero is not a regular file")
    assert time.monotonic() - start < 20
