"""Data-parallel training (gpurnn.training.distributed): the pieces in one process, then real
2-process runs under mpiexec on the CPU.

The MPI tests need mpi4py and an mpiexec (``pip install -e ".[mpi]"``); without them they
are skipped, unless GPURNN_REQUIRE_MPI=1 (as in CI), where that is a failure.
"""
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy
import pytest

from gpurnn.tools import cli

from gpurnn.training import distributed
from gpurnn.training import train as T
from gpurnn.training.checkpoint import load_checkpoint
from gpurnn.training.config import TrainConfig
from gpurnn.training.data import Batch
from gpurnn.training.distributed import find_mpiexec
from gpurnn.training.resuming import moved_position

ROOT = Path(__file__).resolve().parents[2]
KILL_BOUND_S = 30  # the other ranks must be gone this soon after one fails


# ------------------------------------------------------------------------ in one process

class FakeRanks(distributed.Communicator):
    """Rank ``rank`` of ``size``, whose all-gather returns what the test says."""

    def __init__(self, rank, size, gathered=None, local_rank=0):
        self.rank, self.size, self.local_rank, self.gathered = rank, size, local_rank, gathered

    def allgather(self, value):
        if self.gathered is None:  # every rank holds the same
            return [value] * self.size
        return [value if r == self.rank else other for r, other in enumerate(self.gathered)]


def test_flat_gradients_one_buffer_with_views_and_extra_slots():
    rng = numpy.random.default_rng(0)
    params = {"weight_ih": rng.normal(size=(3, 5)), "weight_hh": rng.normal(size=(3, 3)), "bias_ih": rng.normal(size=3)}
    flat = distributed.FlatGradients(params, extra=2)
    assert flat.buffer.shape == (15 + 9 + 3 + 2,) and flat.buffer.dtype == numpy.float64
    assert flat.nbytes == 29 * 8
    grads = {name: rng.normal(size=p.shape) for name, p in params.items()}
    views = flat.pack(grads)
    for name in params:
        assert numpy.shares_memory(views[name], flat.buffer)
        assert numpy.array_equal(views[name], grads[name])
    flat.set_extra([7.0, 8.0])
    flat.buffer *= 2  # what a reduction over 2 equal ranks does
    assert numpy.array_equal(flat.grads["weight_hh"], 2 * grads["weight_hh"])
    assert flat.get_extra() == [14, 16]
    flat.zero()
    assert not flat.values.any() and flat.get_extra() == [14, 16]
    with pytest.raises(KeyError):
        flat.pack({"weight_ih": grads["weight_ih"]})
    with pytest.raises(ValueError, match="gradient bias_ih has shape"):
        flat.pack({**grads, "bias_ih": numpy.zeros(4)})
    with pytest.raises(TypeError, match="one dtype"):
        distributed.FlatGradients({"a": numpy.zeros(2), "b": numpy.zeros(2, numpy.float32)})


def test_single_process_collectives_are_the_identity():
    one = distributed.SingleProcess()
    assert (one.rank, one.size, one.local_rank) == (0, 1, 0)
    buffer = numpy.arange(4.0)
    assert one.allreduce_(buffer) is buffer and one.broadcast("x") == "x"
    assert one.allgather(3) == [3] and one.on_root(lambda: 5) == 5
    with pytest.raises(ZeroDivisionError):  # errors pass unchanged
        one.collectively(lambda: 1 / 0)
    one.agree("anything", {"a": 1})


def test_disagreement_names_what_differs_on_which_rank():
    facts = [{"--hidden": 12, "--seq-len": 8}, {"--hidden": 16, "--seq-len": 8}]
    digests = [("h0", facts[0]), ("h1", facts[1])]
    with pytest.raises(distributed.DistributedError,
                       match=r"disagree on the settings: --hidden \(rank 0: 12, rank 1: 16\)"
                             r"; start every rank") as caught:
        FakeRanks(0, 2, digests).agree("the settings", facts[0])
    assert distributed.is_collective(caught.value)
    FakeRanks(1, 2).agree("the settings", facts[0])  # equal everywhere: passes


def test_an_error_on_one_rank_is_raised_on_every_rank():
    failure = FileNotFoundError("corpus path x.txt does not exist")
    rank0 = FakeRanks(0, 2, [None, failure])
    with pytest.raises(FileNotFoundError, match="^rank 1: corpus path x.txt") as caught:
        rank0.collectively(lambda: 42)
    assert distributed.is_collective(caught.value)
    assert FakeRanks(0, 2, [None, None]).collectively(lambda: 42) == 42


def test_devices_follow_the_local_rank():
    rank = FakeRanks(1, 2, local_rank=1)
    assert distributed.device_for_rank("cpu", rank) == "cpu"
    assert distributed.device_for_rank("cuda:0", rank) == "cuda:0"  # explicit: kept
    if distributed.cuda_device_count() == 0:
        assert distributed.device_for_rank("auto", rank) == "cpu"
        assert distributed.device_for_rank("cuda", rank) == "cuda"  # fails later, with why
    else:
        count = distributed.cuda_device_count()
        assert distributed.device_for_rank("cuda", rank) == f"cuda:{1 % count}"
    assert distributed.device_for_rank("cuda", distributed.SingleProcess()) == "cuda"


def test_rows_of_a_batch_and_moved_positions():
    mask = numpy.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], numpy.float32)
    ids = numpy.arange(12).reshape(3, 4)
    batch = Batch(ids, ids + 100, mask, epoch=2, index=5)
    mine = T._rows(batch, slice(1, None, 2), trim=True)  # rank 1 of 2: row 1 only
    assert mine.inputs.tolist() == [[4, 5]] and mine.mask.tolist() == [[1, 1]]
    assert (mine.epoch, mine.index) == (2, 5)
    assert T._rows(batch, slice(0, None, 2), trim=True).inputs.shape == (2, 4)
    assert len(T._rows(batch, slice(3, None, 4), trim=True).inputs) == 0  # an empty share
    position = {"kind": "stream", "seed": None, "epoch": 1, "index": 13, "num_batches": 58}
    assert moved_position(position, 116) == {**position, "index": 26, "num_batches": 116}
    assert moved_position({**position, "index": 57}, 1) == {
        **position, "epoch": 2, "index": 0, "num_batches": 1}


def small_argv(folder, *extra):
    return ["train", "--corpus", str(folder / "corpus.txt"), "--vocab-size", "30",
            "--hidden", "12", "--batch-size", "4", "--seq-len", "8", "--steps", "12",
            "--eval-every", "6", "--checkpoint-every", "0", "--samples", "0", "--quiet",
            "--device", "cpu", "--checkpoint", str(folder / "lm.npz"), *extra]


def test_one_process_without_mpi4py_trains_exactly_as_with_it(tmp_path, monkeypatch):
    for variable in distributed._SIZE_VARIABLES + (distributed.MPI_ENV,):
        monkeypatch.delenv(variable, raising=False)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    write_corpus(tmp_path / "a"), write_corpus(tmp_path / "b")
    monkeypatch.setattr(distributed, "_WORLD", None)
    assert cli.main(small_argv(tmp_path / "a")) == 0
    monkeypatch.setattr(distributed, "_WORLD", None)
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # as if not installed
    assert isinstance(distributed.world(), distributed.SingleProcess)
    assert cli.main(small_argv(tmp_path / "b")) == 0
    a, b = load_checkpoint(tmp_path / "a" / "lm.npz"), load_checkpoint(tmp_path / "b" / "lm.npz")
    for name in a.params:
        assert numpy.array_equal(a.params[name], b.params[name])
    records = [json.loads(line) for line in open(tmp_path / "b" / "lm.jsonl")]
    assert "world_size" not in records[0] and "allreduce_seconds" not in records[-1]


def test_launched_as_two_ranks_without_mpi4py_says_what_to_install(tmp_path, monkeypatch,
                                                                     capsys):
    monkeypatch.setattr(distributed, "_WORLD", None)
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setenv("PMI_RANK", "0")
    write_corpus(tmp_path)
    assert cli.main(small_argv(tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert "started as one of 2 MPI ranks (PMI_SIZE=2) but mpi4py cannot be used" in err
    assert "pip install 'gpurnn[mpi]'" in err and len(err.splitlines()) == 1
    monkeypatch.setenv("PMI_RANK", "1")  # the other ranks fail alike, silently
    assert cli.main(small_argv(tmp_path)) == 2
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------ 2 processes, mpiexec



def _mpi_missing():
    import importlib.util
    if importlib.util.find_spec("mpi4py") is None:  # its MPI library loads in the ranks
        return "mpi4py is not installed; pip install -e '.[mpi]'"
    if find_mpiexec() is None:
        return "no mpiexec found; pip install -e '.[mpi]' brings MPICH's"
    return None


@pytest.fixture
def mpiexec():
    missing = _mpi_missing()
    if missing:
        if os.environ.get("GPURNN_REQUIRE_MPI") == "1":
            pytest.fail(f"GPURNN_REQUIRE_MPI=1 but {missing}")
        pytest.skip(missing)
    return find_mpiexec()


def _env():
    env = {k: v for k, v in os.environ.items()
           if k not in distributed._SIZE_VARIABLES + distributed._RANK_VARIABLES}
    # one BLAS thread per rank: 2 ranks share the cores; Open MPI refuses root without these
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return env


GPURNN = [sys.executable, "-m", "gpurnn"]


def launch(mpiexec, *ranks, timeout=120, popen=False):
    """``mpiexec -n 1 CMD0 : -n 1 CMD1 ...``: one rank per command (argument lists)."""
    command = [mpiexec]
    for i, argv in enumerate(ranks):
        command += ([":"] if i else []) + ["-n", "1", *argv]
    if popen:
        return subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=timeout)


def write_corpus(folder, sentences=240, seed=0):
    rng = numpy.random.default_rng(seed)
    subjects, verbs = ["the cat", "a dog", "the old man", "my friend"], ["sees", "likes", "eats"]
    objects = ["the fish", "a red ball", "the cake", "some bread"]
    text = " ".join(f"{rng.choice(subjects).capitalize()} {rng.choice(verbs)} "
                    f"{rng.choice(objects)}." for _ in range(sentences))
    (folder / "corpus.txt").write_text(text + "\n", encoding="utf-8")
    return folder / "corpus.txt"


def settings(folder, **changes):
    values = dict(corpus=str(folder / "corpus.txt"), vocab_size=30, hidden=12, batch_size=2,
                  seq_len=8, steps=40, eval_every=10, log_every=5, checkpoint_every=0,
                  samples=0, quiet=True, device="cpu", checkpoint=str(folder / "lm.npz"))
    values.update(changes)
    return values


def flags(values):
    argv = ["train"]
    for key, value in values.items():
        if value is True:
            argv.append(f"--{key.replace('_', '-')}")
        elif value not in (None, False):
            argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def trained_alone(folder, **values):
    """The same run in this process, with the global batch of the 2-process run."""
    values = settings(folder, **values)
    values["batch_size"] *= 2
    T.Trainer(TrainConfig(**values), comm=distributed.SingleProcess()).run()
    return load_checkpoint(values["checkpoint"])


def records(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.mark.parametrize("changes, rtol", [
    (dict(mode="stream", dtype="float64", optimizer="sgd", lr=0.5), 1e-12),
    # 213 training sentences: the last batch of the epoch has 1 row, so rank 1 has none
    (dict(mode="sentence", dtype="float64", optimizer="momentum", lr=0.1, truncate=2,
          sentences=237, steps=60), 1e-12),
    (dict(mode="stream", dtype="float32", optimizer="adam", lr=0.01, reduction="sum",
          steps=100), 1e-5),
])
def test_two_processes_equal_one_with_twice_the_batch(mpiexec, tmp_path, changes, rtol):
    changes = dict(changes)
    write_corpus(tmp_path, sentences=changes.pop("sentences", 240))
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir(), one.mkdir()
    argv = GPURNN + flags(settings(tmp_path, **changes, checkpoint=str(two / "lm.npz")))
    done = launch(mpiexec, argv, argv)
    assert done.returncode == 0, done.stderr
    a = load_checkpoint(two / "lm.npz")
    b = trained_alone(tmp_path, **changes, checkpoint=str(one / "lm.npz"))
    assert a.step == b.step == changes.get("steps", 40)
    for name in b.params:
        numpy.testing.assert_allclose(a.params[name], b.params[name], rtol=rtol,
                                      atol=rtol * numpy.abs(b.params[name]).max(), err_msg=name)
    assert a.extra["batcher"] == b.extra["batcher"] and a.extra["world_size"] == 2
    if changes["mode"] == "stream":  # every rank's rows of the carried state, in order
        numpy.testing.assert_allclose(a.extra["hidden"], b.extra["hidden"], rtol=rtol,
                                      atol=rtol)
    numpy.testing.assert_allclose(numpy.array(a.extra["valid_history"]),
                                  numpy.array(b.extra["valid_history"]), rtol=rtol)
    # rank 0 alone writes the metrics: each step once, with the global token rate
    logged = records(two / "lm.jsonl")
    assert logged[0]["world_size"] == 2 and logged[0]["global_batch"] == 4
    steps = [r["step"] for r in logged if "loss" in r]
    assert steps == list(range(5, changes.get("steps", 40) + 1, 5))
    assert logged[-1]["event"] == "end" and logged[-1]["allreduce_seconds"] > 0
    assert not list(two.glob("*.tmp")) and sorted(p.name for p in two.iterdir()) == [
        "lm.jsonl", "lm.npz"]


def test_only_rank_0_prints_and_the_report_counts_global_tokens(mpiexec, tmp_path):
    write_corpus(tmp_path)
    argv = GPURNN + flags(settings(tmp_path, quiet=False, samples=2, steps=20))
    done = launch(mpiexec, argv, argv)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("step 10: train loss") == 1
    assert "data-parallel over MPI, 2 ranks" in done.stdout
    assert "each process takes 2 of the 4 sequences of a global batch" in done.stdout
    assert done.stdout.count("checkpoint: ") == 1 and done.stdout.count("  > ") == 2
    rates = [r["tokens_per_s"] for r in records(tmp_path / "lm.jsonl") if "loss" in r]
    assert all(rate > 0 for rate in rates)


def test_resume_with_the_same_and_with_another_number_of_processes(mpiexec, tmp_path):
    write_corpus(tmp_path)
    whole, parts, moved = tmp_path / "whole", tmp_path / "parts", tmp_path / "moved"
    for folder in (whole, parts, moved):
        folder.mkdir()
    run_whole = GPURNN + flags(settings(tmp_path, steps=30, checkpoint=str(whole / "lm.npz")))
    assert launch(mpiexec, run_whole, run_whole).returncode == 0
    first = GPURNN + flags(settings(tmp_path, steps=13, checkpoint_every=5,
                                    checkpoint=str(parts / "lm.npz")))
    assert launch(mpiexec, first, first).returncode == 0
    shutil.copy(parts / "lm.npz", moved / "lm.npz")
    again = GPURNN + ["train", "--resume", "--checkpoint", str(parts / "lm.npz"),
                      "--steps", "30", "--quiet"]
    done = launch(mpiexec, again, again)
    assert done.returncode == 0, done.stderr
    a, b = load_checkpoint(whole / "lm.npz"), load_checkpoint(parts / "lm.npz")
    for name in a.params:  # the same number of processes: bit-identical
        assert numpy.array_equal(a.params[name], b.params[name]), name
    assert numpy.array_equal(a.extra["hidden"], b.extra["hidden"])
    # from 2 processes to 1: the global batch halves, so twice the batches per epoch
    done = subprocess.run(GPURNN + ["train", "--resume", "--checkpoint", str(moved / "lm.npz"),
                                    "--steps", "30"], env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "written by 2 process(es), this run has 1" in done.stdout
    assert "moved from batch 13 of 58 to 26 of 116" in done.stdout
    saved = load_checkpoint(moved / "lm.npz")
    assert saved.step == 30 and saved.extra["world_size"] == 1
    assert saved.extra["batcher"]["index"] == 26 + 17
    # and back to 2
    back = GPURNN + ["train", "--resume", "--checkpoint", str(moved / "lm.npz"), "--steps",
                     "34", "--quiet"]
    done = launch(mpiexec, back, back)
    assert done.returncode == 0, done.stderr
    saved = load_checkpoint(moved / "lm.npz")
    assert saved.extra["batcher"]["index"] == round(43 * 58 / 116) + 4
    assert records(moved / "lm.jsonl")[-1]["event"] == "end"


def test_ranks_with_other_settings_or_data_are_refused(mpiexec, tmp_path):
    write_corpus(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    write_corpus(other, seed=1)
    base = settings(tmp_path)
    cases = [
        (dict(hidden=16), "--hidden (rank 0: 12, rank 1: 16)"),
        (dict(corpus=str(other / "corpus.txt")), "the data (a hash)"),
    ]
    for change, message in cases:
        start = time.monotonic()
        done = launch(mpiexec, GPURNN + flags(base), GPURNN + flags({**base, **change}))
        assert done.returncode == 2 and time.monotonic() - start < KILL_BOUND_S
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "the 2 ranks disagree on their settings and data" in lines[0]
        assert message in lines[0]
    # an error on one rank alone (its corpus is missing) is reported once, for every rank
    done = launch(mpiexec, GPURNN + flags(base),
                  GPURNN + flags({**base, "corpus": str(tmp_path / "missing.txt")}))
    assert done.returncode == 2
    assert done.stderr.strip() == (f"gpurnn train: error: rank 1: corpus path "
                                   f"{tmp_path / 'missing.txt'} does not exist")
    assert not (tmp_path / "lm.npz").exists()


def rank_pids(marker):
    """rank -> pid of the running ranks whose command line mentions ``marker``."""
    found = {}
    for folder in glob.glob("/proc/[0-9]*"):
        try:
            with open(f"{folder}/cmdline", "rb") as file:
                command = file.read().split(b"\0")
            with open(f"{folder}/environ", "rb") as file:
                env = dict(item.split(b"=", 1) for item in file.read().split(b"\0")
                           if b"=" in item)
        except OSError:
            continue
        rank = env.get(b"PMI_RANK") or env.get(b"OMPI_COMM_WORLD_RANK")
        if rank is not None and any(marker.encode() in part for part in command[1:]) \
                and b"python" in os.path.basename(command[0]):
            found[int(rank)] = int(os.path.basename(folder))
    return found


def start_long_run(mpiexec, tmp_path):
    write_corpus(tmp_path)
    argv = GPURNN + flags(settings(tmp_path, steps=1_000_000, log_every=1, eval_every=10_000))
    process = launch(mpiexec, argv, argv, popen=True)
    metrics, deadline = tmp_path / "lm.jsonl", time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if metrics.exists() and sum(1 for _ in open(metrics)) > 5:
            break
        time.sleep(0.05)
    pids = rank_pids(str(tmp_path / "lm.npz"))
    assert process.poll() is None and sorted(pids) == [0, 1], process.communicate()
    return process, pids


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self"),
                                reason="finds the ranks' processes through /proc")


@needs_proc
def test_a_killed_rank_stops_the_others(mpiexec, tmp_path):
    process, pids = start_long_run(mpiexec, tmp_path)
    os.kill(pids[1], signal.SIGKILL)
    start = time.monotonic()
    try:
        out, err = process.communicate(timeout=KILL_BOUND_S)
    finally:
        if process.poll() is None:
            process.kill()
    assert time.monotonic() - start < KILL_BOUND_S and process.returncode != 0
    assert "signal 9" in out + err or "KILLED" in out + err  # the launcher says why
    assert rank_pids(str(tmp_path / "lm.npz")) == {}


@needs_proc
def test_ctrl_c_on_one_rank_stops_every_rank_after_the_same_step(mpiexec, tmp_path):
    process, pids = start_long_run(mpiexec, tmp_path)
    os.kill(pids[1], signal.SIGINT)  # not rank 0: the request must travel
    out, err = process.communicate(timeout=KILL_BOUND_S)
    assert process.returncode == 130, err  # every rank exits as Ctrl-C asks, after saving
    assert out.count("stopped at step") == 1 and "--resume" in out
    saved = load_checkpoint(tmp_path / "lm.npz")
    assert 0 < saved.step < 1_000_000 and saved.extra["world_size"] == 2
    assert records(tmp_path / "lm.jsonl")[-1]["interrupted"]


DRIVER = """
import json, sys
import numpy
from gpurnn.training.config import TrainConfig
from gpurnn.training.distributed import world
from gpurnn.training.train import Trainer, TrainingError

trainer = Trainer(TrainConfig(**json.loads(sys.argv[1])))
how, at = sys.argv[2], int(sys.argv[3])
if world().rank == 1:  # rank 1 goes wrong from its step `at` on
    real, calls = trainer.model.loss_and_grads, []

    def loss_and_grads(*args, **kwargs):
        calls.append(1)
        loss, grads, last = real(*args, **kwargs)
        if len(calls) >= at:
            if how == "raise":
                raise RuntimeError("something broke on rank 1")
            grads = {k: numpy.full_like(g, numpy.nan) for k, g in grads.items()}
        return loss, grads, last
    trainer.model.loss_and_grads = loss_and_grads
try:
    trainer.run()
except TrainingError as error:
    print(f"rank {world().rank}: {error}", file=sys.stderr)
    sys.exit(1)
"""


@pytest.mark.parametrize("how", ["raise", "nan"])
def test_a_failing_rank_stops_every_rank_with_a_message(mpiexec, tmp_path, how):
    write_corpus(tmp_path)
    (tmp_path / "driver.py").write_text(DRIVER)
    values = settings(tmp_path, steps=1_000_000, checkpoint_every=4, max_bad_steps=3)
    argv = [sys.executable, str(tmp_path / "driver.py"), json.dumps(values), how, "6"]
    start = time.monotonic()
    done = launch(mpiexec, argv, argv, timeout=KILL_BOUND_S + 60)
    assert time.monotonic() - start < KILL_BOUND_S + 10 and done.returncode == 1
    if how == "raise":  # rank 1 alone: the job is aborted
        assert "rank 1 of 2 failed (RuntimeError: something broke on rank 1); stopping " \
               "every rank" in done.stderr
    else:  # NaN gradients on rank 1 are NaN sums on both: both stop, at the same step
        for rank in (0, 1):
            assert f"rank {rank}: training stopped at step 8: 3 steps in a row" in done.stderr
    saved = load_checkpoint(tmp_path / "lm.npz")
    assert saved.step == 4 and all(numpy.isfinite(p).all() for p in saved.params.values())


DROPOUT = dict(cell="lstm", layers=2, embedding_size=6, dropout=0.3, dropout_input=0.2,
               dropout_output=0.2, dropout_state=0.2, weight_drop=0.3, dropout_embedding=0.1)


def test_two_processes_with_dropout_resume_bit_identically(mpiexec, tmp_path):
    write_corpus(tmp_path)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    whole.mkdir(), parts.mkdir()
    run_whole = GPURNN + flags(settings(tmp_path, steps=16, **DROPOUT,
                                        checkpoint=str(whole / "lm.npz")))
    assert launch(mpiexec, run_whole, run_whole).returncode == 0
    first = GPURNN + flags(settings(tmp_path, steps=7, **DROPOUT,
                                    checkpoint=str(parts / "lm.npz")))
    assert launch(mpiexec, first, first).returncode == 0
    again = GPURNN + ["train", "--resume", "--checkpoint", str(parts / "lm.npz"),
                      "--steps", "16", "--quiet"]
    done = launch(mpiexec, again, again)
    assert done.returncode == 0, done.stderr
    a, b = load_checkpoint(whole / "lm.npz"), load_checkpoint(parts / "lm.npz")
    for name in a.params:
        assert numpy.array_equal(a.params[name], b.params[name]), name
