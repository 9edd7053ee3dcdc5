"""Fault injection for ``gpurnn train``: kill it, stop it, fill its disk, and check that
nothing is lost.

    python benchmarks/faults.py                    # the recorded run, a few minutes on 2 cores
    python benchmarks/faults.py --chains 3 --faults-per-chain 4 --output /tmp/faults.json

Each *chain* trains one small run (a checkpoint after every step, so that kills land during
writes) and injects faults into it one after another, each followed by a restart with
``--resume`` (or, while no checkpoint exists yet, a fresh start with ``--overwrite``):

* ``sigkill-write``: SIGKILL while a checkpoint's temporary file exists (during a write);
* ``sigkill``: SIGKILL at a random instant of training;
* ``sigterm-write``/``sigterm``: SIGTERM, likewise; the trainer must exit 143 after writing a
  checkpoint at the step it stopped at;
* ``disk-full``: a restart on a tmpfs (where this machine lets us mount one, else as the next)
  too full for the next checkpoint (ENOSPC); ``file-size-limit``: a restart under a
  file-size limit below the checkpoint's size (``RLIMIT_FSIZE``, no privileges needed;
  EFBIG); the trainer must exit 3 with one line, the previous checkpoint intact, no
  temporary left;
* ``mpi-sigkill``/``mpi-sigterm``: under ``mpiexec -n 2``, SIGKILL or SIGTERM to rank 1
  during training (so during or between all-reduces): every rank must stop, after SIGTERM
  all at the same step with exit 143.

After every fault the checkpoint must load, and its step may not go back (else it counts as
a checkpoint lost); at the end of a chain the run is resumed to its last step and must be
bit-identical (parameters, optimizer state, carried state, RNG, data position) to the same
run never interrupted; files left beside the checkpoint besides it and its metrics count as
stray.

Then the *hostile cases*: each a small scenario run through the real ``gpurnn`` command in
its own folder, beside a folder of someone else's files that must stay as they are: lock
files planted as a link, a hard link or a FIFO, a second trainer through a linked name,
checkpoints whose stored paths point elsewhere, devices and FIFOs as corpora, damaged and
inflating checkpoints, flags that mean nothing, a checkpoint the disk has no room for (and
the advice of its message, followed). Each gets a verdict: clean, lost (data lost, or
written outside the run), traceback, hang or unclear (see ``hostile_case``).

    python benchmarks/faults.py --only-hostile     # just those, a minute; writes nothing

Writes benchmarks/results/faults.json and, with matplotlib, faults.png.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import glob
import hashlib
import json
import os
import platform
import random
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))
from gpurnn.training.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from gpurnn.training.distributed import find_mpiexec  # noqa: E402

SINGLE_KINDS = ("sigkill-write", "sigkill", "sigterm-write", "sigterm", "disk-full",
                "file-size-limit")
MPI_KINDS = ("mpi-sigkill", "mpi-sigterm")
SETTINGS = dict(vocab_size=40, hidden=24, batch_size=4, seq_len=8, steps=600, eval_every=100,
                log_every=5, checkpoint_every=1, samples=0, quiet=True, device="cpu",
                optimizer="adam", lr=0.01, seed=0)
WAIT_S = 120  # any single process must be done within this
KILL_WINDOW_S = 1.5  # random faults land at most this long after training is seen


# ------------------------------------------------------------------------------ running

def write_corpus(folder: Path, sentences: int = 240) -> Path:
    rng = numpy.random.default_rng(0)
    subjects, verbs = ["the cat", "a dog", "the old man", "my friend"], ["sees", "likes", "eats"]
    objects = ["the fish", "a red ball", "the cake", "some bread"]
    text = " ".join(f"{rng.choice(subjects).capitalize()} {rng.choice(verbs)} "
                    f"{rng.choice(objects)}." for _ in range(sentences))
    path = folder / "corpus.txt"
    path.write_text(text + "\n", encoding="utf-8")
    return path


def train_argv(folder: Path, corpus: Path, **changes) -> list:
    values = {**SETTINGS, "corpus": str(corpus), "checkpoint": str(folder / "lm.npz"),
              **changes}
    argv = [sys.executable, "-m", "gpurnn", "train"]
    for key, value in values.items():
        if value is True:
            argv.append(f"--{key.replace('_', '-')}")
        elif value not in (None, False):
            argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def environment() -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PMI_", "OMPI_", "MPI_LOCALRANKID", "PMIX_"))}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return env


def start(argv: list, *, file_size_limit: int | None = None, memory_limit: int | None = None,
          cwd: Path | None = None) -> subprocess.Popen:
    def limit():
        if file_size_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
        if memory_limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    return subprocess.Popen(argv, env=environment(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            errors="replace", preexec_fn=limit, cwd=cwd)


def finish(process: subprocess.Popen) -> tuple:
    try:
        out, err = process.communicate(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise RuntimeError(f"trainer still running after {WAIT_S} s: {err[-500:]}")
    return process.returncode, out, err




def mpi_argv(argv: list) -> list:
    return [find_mpiexec(), "-n", "1", *argv, ":", "-n", "1", *argv]


def rank_pid(marker: str, rank: int) -> int | None:
    """The pid of MPI rank ``rank`` whose command line mentions ``marker``."""
    for folder in glob.glob("/proc/[0-9]*"):
        try:
            with open(f"{folder}/cmdline", "rb") as file:
                command = file.read().split(b"\0")
            with open(f"{folder}/environ", "rb") as file:
                env = dict(item.split(b"=", 1) for item in file.read().split(b"\0")
                           if b"=" in item)
        except OSError:
            continue
        if env.get(b"PMI_RANK") == str(rank).encode() and \
                any(marker.encode() in part for part in command[1:]):
            return int(os.path.basename(folder))
    return None


# ------------------------------------------------------------------------------ checking

def state(path: Path) -> dict:
    """Everything a resumed run continues from, as comparable values."""
    saved = load_checkpoint(path)
    arrays = {f"params/{k}": v for k, v in saved.params.items()}
    for slot, per_param in saved.optimizer_state["slots"].items():
        arrays.update({f"{slot}/{k}": v for k, v in per_param.items()})
    if saved.extra["hidden"] is not None:
        arrays["hidden"] = saved.extra["hidden"]
    return {"step": saved.step, "arrays": arrays, "rng": saved.rng_state,
            "batcher": saved.extra["batcher"], "t": saved.optimizer_state["t"]}


def identical(a: dict, b: dict) -> bool:
    return (a["step"] == b["step"] and a["rng"] == b["rng"] and a["batcher"] == b["batcher"]
            and a["t"] == b["t"] and a["arrays"].keys() == b["arrays"].keys()
            and all(numpy.array_equal(a["arrays"][k], b["arrays"][k]) for k in a["arrays"]))


def saved_step(path: Path):
    """The checkpoint's step; None when there is none; "unloadable" when it does not load."""
    if not path.exists():
        return None
    try:
        return load_checkpoint(path).step
    except CheckpointError:
        return "unloadable"


def stray_files(folder: Path) -> list:
    expected = {"lm.npz", "lm.jsonl", "corpus.txt"}
    return sorted(p.name for p in folder.iterdir() if p.name not in expected)


# ------------------------------------------------------------------------------ faults

def _start_pids(folder: Path) -> list:
    """The pid of every start/resume record of the metrics file, in order."""
    try:
        lines = (folder / "lm.jsonl").read_text().splitlines()
    except OSError:
        return []
    pids = []
    for line in lines:
        if '"event": "start"' in line or '"event": "resume"' in line:
            try:
                pids.append(json.loads(line).get("pid"))
            except ValueError:
                pass
    return pids


def wait_for_training(process, folder: Path, old_pids: list, steps_seen: int = 2) -> bool:
    """Until a new process (a start/resume record with a pid not in ``old_pids``) has
    logged ``steps_seen`` step records after it, or the process ended."""
    deadline = time.monotonic() + WAIT_S
    metrics = folder / "lm.jsonl"
    while time.monotonic() < deadline and process.poll() is None:
        try:
            lines = metrics.read_text().splitlines()
        except OSError:
            lines = []
        for i in range(len(lines) - 1, -1, -1):
            if '"event": "start"' in lines[i] or '"event": "resume"' in lines[i]:
                try:
                    pid = json.loads(lines[i]).get("pid")
                except ValueError:
                    break
                if pid not in old_pids and sum('"tokens_per_s"' in line
                                               for line in lines[i:]) >= steps_seen:
                    return True
                break
        time.sleep(0.01)
    return False


def _last_step(folder: Path) -> int:
    try:
        lines = (folder / "lm.jsonl").read_text().splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        if '"tokens_per_s"' in line:
            try:
                return json.loads(line)["step"]
            except (ValueError, KeyError):
                continue
    return 0


def random_delay(folder: Path, rng: random.Random) -> float:
    """A random instant within the first half of what is left of the run, at the rate it
    trains now (measured over a moment), so that the fault lands before the run ends."""
    step, start = _last_step(folder), time.monotonic()
    time.sleep(0.2)
    rate = (_last_step(folder) - step) / (time.monotonic() - start)
    left = (SETTINGS["steps"] - _last_step(folder)) / rate if rate > 0 else KILL_WINDOW_S
    return rng.uniform(0.0, min(KILL_WINDOW_S, 0.5 * left))


def temporaries(folder: Path) -> set:
    with os.scandir(folder) as entries:
        return {e.name for e in entries if e.name.startswith(".lm.npz.") and
                e.name.endswith(".tmp")}


def signal_during_write(process, folder: Path, signum: int, old: set) -> bool:
    """Send ``signum`` as soon as a new checkpoint temporary exists (not one of ``old``,
    left by a killed predecessor); whether one was caught."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and process.poll() is None:
        if temporaries(folder) - old:
            process.send_signal(signum)
            return True
    return False


def restart_argv(folder: Path, corpus: Path, **changes) -> list:
    resume = saved_step(folder / "lm.npz") is not None
    return train_argv(folder, corpus, resume=resume, overwrite=not resume, **changes)


@contextlib.contextmanager
def small_disk(folder: Path, size: int, wanted: bool = True):
    """A tmpfs of ``size`` bytes mounted on ``folder`` (yields False where not allowed)."""
    if not wanted or shutil.which("mount") is None:
        yield False
        return
    folder.mkdir(exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True)
    try:
        yield done.returncode == 0
    finally:
        if done.returncode == 0:
            subprocess.run(["umount", str(folder)], capture_output=True)


def inject(kind: str, folder: Path, corpus: Path, rng: random.Random, log: list) -> dict:
    """One fault of ``kind`` on the run in ``folder``; what was observed."""
    path = folder / "lm.npz"
    before = saved_step(path)
    outcome = {"kind": kind, "step_before": before}
    if kind in ("disk-full", "file-size-limit"):
        log.append(_disk_full(folder, corpus, before, outcome, tmpfs=kind == "disk-full"))
        return log[-1]
    mpi = kind.startswith("mpi")
    signum = signal.SIGKILL if "sigkill" in kind else signal.SIGTERM
    argv = restart_argv(folder, corpus)
    old, old_pids = temporaries(folder), _start_pids(folder)
    outcome["temporaries_left_before"] = len(old)  # by the previous fault: removed at start
    process = start(mpi_argv(argv) if mpi else argv)
    caught = None
    if kind.endswith("-write"):
        caught = signal_during_write(process, folder, signum, old)
    elif wait_for_training(process, folder, old_pids):
        time.sleep(random_delay(folder, rng))
        target = rank_pid(str(path), 1) if mpi else process.pid
        if target is not None and process.poll() is None:
            os.kill(target, signum)
            caught = True
    code, out, err = finish(process)
    after = saved_step(path)
    outcome.update(during_write=caught if kind.endswith("-write") else None, exit_code=code,
                   step_after=after)
    finished = after == SETTINGS["steps"]  # before the fault came: nothing to stop
    ok = (caught is True or finished) and after != "unloadable"
    lost = after == "unloadable" or (isinstance(before, int) and
                                     (after is None or after < before))
    if signum == signal.SIGTERM and not finished:
        lines = out.strip().splitlines()
        ok = ok and code == 143 and isinstance(after, int) and lines and \
            f"stopped at step {after} " in lines[-1]
        if mpi:
            ok = ok and out.count("stopped at step") == 1
    elif signum == signal.SIGKILL and not finished:
        ok = ok and code != 0
    outcome.update(ok=bool(ok), lost=bool(lost))
    if not ok:
        outcome["stderr"] = err[-800:]
    log.append(outcome)
    return outcome


def _disk_full(folder: Path, corpus: Path, before, outcome: dict, tmpfs: bool) -> dict:
    """A restart whose next checkpoint cannot be written: with ``tmpfs``, on a full tmpfs
    where this machine allows mounting one; else (or otherwise) under RLIMIT_FSIZE below the
    checkpoint's size."""
    path = folder / "lm.npz"
    if before is None:  # first a checkpoint to keep
        finish(start(restart_argv(folder, corpus, steps=3)))
        before = saved_step(path)
    size = path.stat().st_size
    small = folder.parent / f"{folder.name}-small"
    # Room for what is there, the two lock files and a little more, not a second checkpoint.
    pages = sum(-(-file.stat().st_size // 4096) for file in
                (path, folder / "lm.jsonl", corpus)) + 2 + 2
    # A chain whose earlier faults landed after the run's last step has nothing left to
    # train, and so no checkpoint to fail on: such a restart runs a few steps further (its
    # checkpoint cannot be written, so the run the chain resumes is unchanged).
    more = {"steps": before + 10} if before >= SETTINGS["steps"] else {}
    with small_disk(small, 4096 * pages, tmpfs) as mounted:
        if mounted:
            for file in (path, folder / "lm.jsonl", corpus):
                shutil.copy2(file, small / file.name)
            process = start(restart_argv(small, small / "corpus.txt", **more))
            where = small
        else:
            process = start(restart_argv(folder, corpus, **more), file_size_limit=size // 2)
            where = folder
        code, out, err = finish(process)
        after = saved_step(where / "lm.npz")
        stray = stray_files(where)
        if mounted:  # the run goes on from the small disk's checkpoint, as a user would
            shutil.copy2(small / "lm.npz", folder / "lm.npz")
            shutil.copy2(small / "lm.jsonl", folder / "lm.jsonl")
    lines = err.strip().splitlines()
    ok = (code == 3 and after == before and not stray and len(lines) >= 1 and
          lines[-1].startswith("gpurnn train: could not write checkpoint") and
          "intact" in lines[-1])
    outcome.update(how="tmpfs" if mounted else "RLIMIT_FSIZE", exit_code=code,
                   step_after=after, stray=stray, ok=bool(ok),
                   lost=after != before, message=lines[-1] if lines else "")
    return outcome


# ------------------------------------------------------------------------------ chains

def reference_state(work: Path, corpus: Path, mpi: bool) -> dict:
    folder = work / ("reference-mpi" if mpi else "reference")
    folder.mkdir()
    argv = train_argv(folder, corpus, checkpoint_every=0)
    code, _, err = finish(start(mpi_argv(argv) if mpi else argv))
    if code != 0:
        raise RuntimeError(f"the uninterrupted run failed: {err[-800:]}")
    return state(folder / "lm.npz")


def chain(work: Path, corpus: Path, kinds: list, rng: random.Random, reference: dict,
          number: int) -> dict:
    folder = work / f"chain-{number}"
    folder.mkdir()
    mpi = kinds[0].startswith("mpi")
    log: list = []
    for kind in kinds:
        inject(kind, folder, corpus, rng, log)
    argv = restart_argv(folder, corpus)
    code, _, err = finish(start(mpi_argv(argv) if mpi else argv))
    final = state(folder / "lm.npz") if code == 0 else None
    same = final is not None and identical(final, reference)
    stray = stray_files(folder)
    return {"kinds": kinds, "faults": log, "final_exit_code": code, "bit_identical": same,
            "stray_files": stray, **({"stderr": err[-800:]} if code else {})}


def run(chains: int, faults_per_chain: int, *, seed: int = 0, mpi_chains: int = 0,
        work: Path | None = None, steps: int | None = None) -> dict:
    """Run the chains (of runs of ``steps`` steps, default SETTINGS'); returns the
    per-chain logs and the totals."""
    global SETTINGS
    kept = SETTINGS
    if steps is not None:
        SETTINGS = {**SETTINGS, "steps": steps}
    try:
        return _run(chains, faults_per_chain, seed, mpi_chains, work)
    finally:
        SETTINGS = kept


def _run(chains, faults_per_chain, seed, mpi_chains, work) -> dict:
    rng = random.Random(seed)
    owned = work is None
    work = Path(tempfile.mkdtemp(prefix="gpurnn-faults-")) if owned else work
    try:
        corpus = write_corpus(work)
        results = []
        reference = reference_state(work, corpus, mpi=False) if chains else None
        for number in range(chains):
            kinds = [SINGLE_KINDS[(number * faults_per_chain + i) % len(SINGLE_KINDS)]
                     for i in range(faults_per_chain)]
            results.append(chain(work, corpus, kinds, rng, reference, number))
        if mpi_chains and find_mpiexec():
            reference = reference_state(work, corpus, mpi=True)
            for number in range(mpi_chains):
                kinds = [MPI_KINDS[(number + i) % len(MPI_KINDS)] for i in range(2)]
                results.append(chain(work, corpus, kinds, rng, reference, chains + number))
        return {"chains": results, "totals": totals(results)}
    finally:
        if owned:
            shutil.rmtree(work, ignore_errors=True)


def totals(chains: list) -> dict:
    faults = [f for c in chains for f in c["faults"]]
    by_kind = {}
    for fault in faults:
        entry = by_kind.setdefault(fault["kind"], {"injected": 0, "survived": 0})
        entry["injected"] += 1
        entry["survived"] += int(fault["ok"] and not fault["lost"])
    return {"faults_injected": len(faults),
            "survived": sum(int(f["ok"] and not f["lost"]) for f in faults),
            "checkpoints_lost": sum(int(f["lost"]) for f in faults),
            "stray_files": sum(len(c["stray_files"]) for c in chains)
            + sum(len(f.get("stray", [])) for f in faults),
            "temporaries_left_by_kills_and_removed": sum(
                f.get("temporaries_left_before", 0) for f in faults),
            "chains": len(chains),
            "chains_bit_identical": sum(int(c["bit_identical"]) for c in chains),
            "by_kind": by_kind}


# ------------------------------------------------------------------------------ hostile cases
# Each case is a small scenario in its own folder, ``work/NAME``: ``run/`` is the run's (the
# command runs there), ``outside/`` holds files of someone else's (a victim file always; another
# run's checkpoint and metrics in some cases). A case's setup returns the ``gpurnn`` argv and
# what a clean ending is: the exit codes allowed, the words its one stderr line must hold (the
# file or the flag), and a check of the run's own files. The verdict:
#
# * ``clean``: an allowed exit code, no traceback, at most one line on stderr (exactly one for
#   a refusal; a run that trains before it stops may warn first, in gpurnn's own warning
#   lines), the words in that line, nothing outside ``run/`` created, changed or removed, the
#   check holding, all within the timeout;
# * ``wrote-outside``: a file outside ``run/`` was created, changed or removed (counts as lost);
# * ``lost``: the check failed (an old checkpoint and its metrics no longer together, a run's
#   metrics in another run's file, advice that did not work);
# * ``traceback``, ``hang`` (killed after the timeout), ``unclear`` (another exit code, more
#   than one line, or a line that names neither the file nor the flag);
# * ``skipped``, only where the platform lacks what the case needs (a FIFO, /dev/zero).

HOSTILE_TIMEOUT_S = 60  # per command: a refusal takes a second or two; still running then: a hang
HOSTILE_MEMORY = 4 << 30  # address space of each command: a read that never ends stops here
HOSTILE_TRAIN = ["--vocab-size", "30", "--hidden", "8", "--batch-size", "4", "--seq-len", "8",
                 "--steps", "6", "--quiet", "--device", "cpu", "--samples", "0"]
BOMB_ELEMENTS = 40_000_000  # float64 zeros: 320 MB uncompressed, ~0.3 MB compressed


def gpurnn(*argv, cwd: Path, file_size_limit: int | None = None,
           timeout: float = HOSTILE_TIMEOUT_S) -> tuple:
    """(exit code, or None when it was killed after ``timeout``; stderr) of ``gpurnn ARGV``,
    with its address space limited to HOSTILE_MEMORY (a read that never ends fails there)."""
    process = start([sys.executable, "-m", "gpurnn", *map(str, argv)], cwd=cwd,
                    file_size_limit=file_size_limit, memory_limit=HOSTILE_MEMORY)
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
        return None, err
    return process.returncode, err


def train_here(run: Path, *more, name: str = "lm", **kwargs) -> tuple:
    """``gpurnn train`` of the small run on ``run``'s corpus, checkpoint ``run/NAME.npz``."""
    return gpurnn("train", "--corpus", run / "corpus.txt", "--checkpoint", run / f"{name}.npz",
                  *HOSTILE_TRAIN, *more, cwd=run, **kwargs)


def trained(run: Path, *more, name: str = "lm") -> Path:
    code, err = train_here(run, *more, name=name)
    if code != 0:
        raise RuntimeError(f"the good run a case starts from failed ({code}): {err[-400:]}")
    return run / f"{name}.npz"


def snapshot(folder: Path, leave_out: Path | None = None) -> dict:
    """Every entry under ``folder`` but ``leave_out``: links as their target, files as their
    content's hash and mode, anything else as its mode."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if leave_out is not None and (path == leave_out or leave_out in path.parents):
            continue
        if path.is_symlink():
            out[str(path)] = ("link", os.readlink(path))
        elif path.is_file():
            out[str(path)] = ("file", hashlib.sha256(path.read_bytes()).hexdigest(),
                              path.stat().st_mode)
        else:
            out[str(path)] = ("other", path.stat().st_mode)
    return out


def rewrite_checkpoint(path: Path, out: Path, meta=None, arrays=None, compressed=False):
    """``path``'s archive written to ``out`` with its metadata changed by ``meta`` (a function
    of the metadata returning new metadata or raw bytes) and arrays added or replaced."""
    from gpurnn.training.checkpoint import _META_KEY
    with numpy.load(path) as archive:
        members = {key: archive[key] for key in archive.files}
    if meta is not None:
        raw = meta(json.loads(members[_META_KEY].tobytes()))
        members[_META_KEY] = numpy.frombuffer(
            raw if isinstance(raw, bytes) else json.dumps(raw).encode(), numpy.uint8)
    members.update(arrays or {})
    (numpy.savez_compressed if compressed else numpy.savez)(out, **members)


def stored(meta: dict, **train) -> dict:
    """Checkpoint metadata whose stored trainer settings have ``train`` changed."""
    config = dict(meta["config"])
    config["train"] = {**config["train"], **train}
    return {**meta, "config": config}


def other_run(outside: Path) -> Path:
    """A finished run of someone else's in ``outside/a``: a.npz and its metrics a.jsonl."""
    folder = outside / "a"
    folder.mkdir()
    write_corpus(folder)
    return trained(folder, "--metrics", folder / "a.jsonl", name="a")


def fifo(path: Path) -> None:
    if not hasattr(os, "mkfifo"):
        raise NotImplementedError("this platform has no FIFOs")
    os.mkfifo(path)


def _refused(argv, *says, codes=(2,), **options):
    return {"argv": argv, "codes": codes, "says": says, **options}


# One function per case: setup(run, outside) -> what to run and what a clean ending is.

def case_lock_symlink_to_a_victim(run, outside):
    os.symlink(outside / "someone-elses.txt", run / ".lm.npz.lock")
    return _refused(["train", "--corpus", run / "corpus.txt", "--checkpoint", run / "lm.npz",
                     *HOSTILE_TRAIN], ".lm.npz.lock")


def case_lock_hard_link_to_a_victim(run, outside):
    """A regular file, but a second name of another file: refused, or trained beside without
    writing into it."""
    os.link(outside / "someone-elses.txt", run / ".lm.npz.lock")
    return _refused(["train", "--corpus", run / "corpus.txt", "--checkpoint", run / "lm.npz",
                     *HOSTILE_TRAIN], ".lm.npz.lock", codes=(0, 2))


def case_lock_fifo(run, outside):
    fifo(run / ".lm.npz.lock")
    return _refused(["train", "--corpus", run / "corpus.txt", "--checkpoint", run / "lm.npz",
                     *HOSTILE_TRAIN], ".lm.npz.lock")


def case_second_trainer_through_a_link(run, outside):
    """A trainer holds cc.npz; a second one, through ccl.npz -> cc.npz and with --overwrite,
    must be refused, the link kept and the first run's checkpoint sound."""
    first = subprocess.Popen([sys.executable, "-m", "gpurnn", "train", "--corpus",
                              str(run / "corpus.txt"), "--checkpoint", str(run / "cc.npz"),
                              *HOSTILE_TRAIN, "--steps", "1000000", "--checkpoint-every", "50"],
                             cwd=run, env=environment(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + HOSTILE_TIMEOUT_S
    while time.monotonic() < deadline and first.poll() is None and \
            '"event": "start"' not in _text(run / "cc.jsonl"):
        time.sleep(0.05)
    os.symlink(run / "cc.npz", run / "ccl.npz")

    def check(run):
        first.send_signal(signal.SIGTERM)
        try:
            code = first.wait(timeout=HOSTILE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            first.kill()
            first.wait()
            return False
        return code == 143 and (run / "ccl.npz").is_symlink() and \
            isinstance(saved_step(run / "cc.npz"), int)
    return _refused(["train", "--corpus", run / "corpus.txt", "--checkpoint", run / "ccl.npz",
                     *HOSTILE_TRAIN, "--overwrite"], "in use", check=check,
                    cleanup=lambda: first.poll() is None and (first.kill(), first.wait()))


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def case_resume_a_copy_of_another_runs_checkpoint(run, outside):
    """b.npz, a copy of another run's a.npz (which names a.jsonl as its metrics), resumed:
    a.jsonl untouched, b's records in b.jsonl beside it."""
    shutil.copy(other_run(outside), run / "b.npz")
    return {"argv": ["train", "--resume", "--checkpoint", run / "b.npz", "--steps", "9",
                     "--quiet"], "codes": (0,),
            "check": lambda run: '"event": "resume"' in _text(run / "b.jsonl")}


def _stored_metrics(where: str):
    def case(run, outside):
        trained(run)
        victim = outside / "victim.jsonl"
        victim.write_text(_text(run / "lm.jsonl"))  # looks like a metrics file, too
        path = str(victim) if where == "absolute" else "../outside/victim.jsonl"
        rewrite_checkpoint(run / "lm.npz", run / "lm.npz",
                           meta=lambda meta: stored(meta, metrics=path))
        return {"argv": ["train", "--resume", "--checkpoint", run / "lm.npz", "--steps", "9",
                         "--quiet"], "codes": (0,),
                "check": lambda run: '"event": "resume"' in _text(run / "lm.jsonl")}
    return case


def case_stored_corpus_dev_zero(run, outside):
    trained(run)
    rewrite_checkpoint(run / "lm.npz", run / "lm.npz",
                       meta=lambda meta: stored(meta, corpus="/dev/zero"))
    return _refused(["train", "--resume", "--checkpoint", run / "lm.npz", "--steps", "9",
                     "--quiet"], "/dev/zero")


def case_overwrite_that_diverges(run, outside):
    """--overwrite over a good run with settings that diverge at once: exit 1, and the old
    checkpoint and the old metrics both kept, together."""
    trained(run)
    before = ((run / "lm.npz").read_bytes(), (run / "lm.jsonl").read_bytes())
    return {"argv": ["train", "--corpus", run / "corpus.txt", "--checkpoint", run / "lm.npz",
                     *HOSTILE_TRAIN, "--overwrite", "--lr", "1e308", "--optimizer", "sgd",
                     "--clip", "0", "--max-bad-steps", "1"], "codes": (1,), "warns": True,
            "says": ("diverged", "unchanged"),
            "check": lambda run: ((run / "lm.npz").read_bytes(),
                                  (run / "lm.jsonl").read_bytes()) == before}


def _corpus(path):
    def case(run, outside):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} is not on this machine")
        return _refused(["train", "--corpus", path, "--level", "char", "--checkpoint",
                         run / "lm.npz", *HOSTILE_TRAIN], path)
    return case


def case_corpus_fifo(run, outside):
    fifo(run / "pipe.txt")
    return _refused(["train", "--corpus", run / "pipe.txt", "--checkpoint", run / "lm.npz",
                     *HOSTILE_TRAIN], "pipe.txt")


def case_corpus_folder_with_a_link_to_dev_zero(run, outside):
    """A folder of texts, one a .txt link to /dev/zero: the link is left out, the run works."""
    if not os.path.exists("/dev/zero"):
        raise FileNotFoundError("/dev/zero is not on this machine")
    (run / "texts").mkdir()
    shutil.copy(run / "corpus.txt", run / "texts" / "a.txt")
    os.symlink("/dev/zero", run / "texts" / "zero.txt")
    return {"argv": ["train", "--corpus", run / "texts", "--checkpoint", run / "lm.npz",
                     *HOSTILE_TRAIN], "codes": (0,),
            "check": lambda run: saved_step(run / "lm.npz") == 6}


def case_corpus_utf16(run, outside):
    (run / "u16.txt").write_text("Hello there, said the cat.\n" * 50, encoding="utf-16")
    return _refused(["train", "--corpus", run / "u16.txt", "--checkpoint", run / "lm.npz",
                     *HOSTILE_TRAIN], "u16.txt", "UTF-16")


def _damaged(change, *says, command="generate"):
    def case(run, outside):
        trained(run)
        rewrite_checkpoint(run / "lm.npz", run / "bad.npz", meta=change)
        return _refused([command, run / "bad.npz"], "bad.npz", *says)
    return case


def _bomb(command):
    """A checkpoint whose extras hold a 320 MB array of zeros, compressed to a small file: far
    over the cap (64 MiB + 8x the parameters' bytes), refused before it is inflated."""
    def case(run, outside):
        trained(run)
        junk = {"__array__": "extra/junk"}  # how the metadata points to an extra array
        rewrite_checkpoint(run / "lm.npz", run / "bomb.npz",
                           meta=lambda meta: {**meta, "extra": {**meta["extra"], "junk": junk}},
                           arrays={"extra/junk": numpy.zeros(BOMB_ELEMENTS)}, compressed=True)
        if command == "generate":
            return _refused(["generate", run / "bomb.npz"], "bomb.npz", "uncompressed")
        return _refused(["train", "--resume", "--checkpoint", run / "bomb.npz", "--steps", "9",
                         "--quiet"], "bomb.npz", "uncompressed")
    return case


def _flag(command, *argv, says=()):
    """A flag that means nothing, refused in one line naming it."""
    def case(run, outside):
        named = [argv[0]] if not says else list(says)
        if command == "generate":
            return _refused(["generate", trained(run), *argv], *named)
        if command == "train":
            return _refused(["train", "--corpus", run / "corpus.txt", "--checkpoint",
                             run / "lm.npz", *HOSTILE_TRAIN, *argv], *named,
                            check=lambda run: not (run / "lm.npz").exists())
        return _refused([command, *argv], *named)
    return case


def _disk_full_case(first: bool):
    """A checkpoint write that fails (a file-size limit of half the checkpoint's size: EFBIG,
    as a full disk): exit 3, one line whose advice is then followed literally, which must
    work: the same command again after the first checkpoint, the ``--resume`` it names
    after a later one."""
    def case(run, outside):
        probe = run.parent / "probe"
        probe.mkdir()
        write_corpus(probe)
        limit = trained(probe).stat().st_size // 2
        argv = ["train", "--corpus", run / "corpus.txt", "--checkpoint", run / "lm.npz",
                *HOSTILE_TRAIN]
        if not first:
            trained(run)
            argv = [*argv, "--resume", "--steps", "12"]

        def check(run, err):
            advice = err.strip().splitlines()[-1] if err.strip() else ""
            if advice.endswith("run the same gpurnn train command again"):
                again = argv
            elif "continue with: gpurnn " in advice:
                again = shlex.split(advice.split("continue with: gpurnn ", 1)[1])
            else:
                return False
            code, _ = gpurnn(*again, cwd=run)
            return code == 0 and isinstance(saved_step(run / "lm.npz"), int)
        return _refused(argv, "could not write checkpoint", codes=(3,), warns=True,
                        file_size_limit=limit, check_err=check)
    return case


def case_disk_full_tmpfs_first_checkpoint(run, outside):
    """The run's folder a tmpfs with room for the corpus, the lock and the metrics but not
    the first checkpoint (ENOSPC): exit 3; then the disk is given room (remounted larger) and
    the message's advice, the same command again, must work."""
    corpus = (run / "corpus.txt").read_bytes()
    mount = contextlib.ExitStack()  # the tmpfs stays mounted until the case's cleanup
    if not mount.enter_context(small_disk(run, 4096 * (-(-len(corpus) // 4096) + 4))):
        mount.close()
        raise NotImplementedError("this machine does not let us mount a tmpfs")
    (run / "corpus.txt").write_bytes(corpus)
    argv = ["train", "--corpus", run / "corpus.txt", "--checkpoint", run / "lm.npz",
            *HOSTILE_TRAIN]

    def check(run, err):
        subprocess.run(["mount", "-o", "remount,size=4m", str(run)], check=True,
                       capture_output=True)
        if not err.strip().endswith("run the same gpurnn train command again"):
            return False
        code, _ = gpurnn(*argv, cwd=run)
        return code == 0 and saved_step(run / "lm.npz") == 6
    return _refused(argv, "could not write checkpoint", "No space left", codes=(3,),
                    warns=True, check_err=check, cleanup=mount.close)


HOSTILE_GROUPS = {
    "locks": {  # planted lock files and a second trainer
        "lock-symlink-to-a-victim": case_lock_symlink_to_a_victim,
        "lock-hard-link-to-a-victim": case_lock_hard_link_to_a_victim,
        "lock-fifo": case_lock_fifo,
        "second-trainer-through-a-link": case_second_trainer_through_a_link,
    },
    "stored paths": {  # paths a checkpoint stores
        "resume-a-copy-of-another-runs-checkpoint": case_resume_a_copy_of_another_runs_checkpoint,
        "stored-metrics-absolute": _stored_metrics("absolute"),
        "stored-metrics-dotdot": _stored_metrics("dotdot"),
        "stored-corpus-dev-zero": case_stored_corpus_dev_zero,
        "overwrite-that-diverges": case_overwrite_that_diverges,
    },
    "corpora": {  # corpora that are not text files
        "corpus-dev-zero": _corpus("/dev/zero"),
        "corpus-dev-urandom": _corpus("/dev/urandom"),
        "corpus-fifo": case_corpus_fifo,
        "corpus-folder-with-a-link-to-dev-zero": case_corpus_folder_with_a_link_to_dev_zero,
        "corpus-utf16": case_corpus_utf16,
    },
    "checkpoints": {  # damaged and inflating checkpoints
        "checkpoint-extra-int-generate": _damaged(lambda m: {**m, "extra": 7}, "extra"),
        "checkpoint-extra-int-diagnose": _damaged(lambda m: {**m, "extra": 7}, "extra",
                                                  command="diagnose"),
        "checkpoint-vocab-dict": _damaged(lambda m: {**m, "vocab": {"a": 1}}, "vocab"),
        "checkpoint-metadata-nested-100k-deep": _damaged(
            lambda m: b"[" * 100_000 + b"]" * 100_000, "nested"),
        "decompression-bomb-generate": _bomb("generate"),
        "decompression-bomb-resume": _bomb("resume"),
    },
    "flags": {  # flags that mean nothing, contradictions
        "generate-num-1e20": _flag("generate", "--num", "1e20"),
        "generate-num-1000000000": _flag("generate", "--num", "1000000000", says=["num"]),
        "generate-seed-negative": _flag("generate", "--seed", "-1"),
        "generate-device-tpu": _flag("generate", "--device", "tpu", says=["tpu"]),
        "gradcheck-eps-0": _flag("gradcheck", "--eps", "0"),
        "gradcheck-eps-negative": _flag("gradcheck", "--eps", "-1"),
        "gradcheck-eps-nan": _flag("gradcheck", "--eps", "nan"),
        "gradcheck-eps-1e300": _flag("gradcheck", "--eps", "1e300"),
        "gradcheck-tolerance-negative": _flag("gradcheck", "--tolerance", "-1"),
        "train-resume-and-overwrite": _flag("train", "--resume", "--overwrite"),
        "train-stop-signal-segv": _flag("train", "--stop-signal", "SEGV"),
        "train-samples-1e20": _flag("train", "--samples", "99999999999999999999"),
        "train-config-a-folder": _flag("train", "--config", ".", says=["folder"]),
    },
    "disk full": {  # a checkpoint that cannot be written, and the advice of its message
        "disk-full-first-checkpoint-then-its-advice": _disk_full_case(first=True),
        "disk-full-later-checkpoint-then-its-advice": _disk_full_case(first=False),
        "disk-full-tmpfs-first-checkpoint-then-its-advice": case_disk_full_tmpfs_first_checkpoint,
    },
}
HOSTILE_CASES = {name: case for cases in HOSTILE_GROUPS.values() for name, case in cases.items()}
FAST_HOSTILE = ("lock-symlink-to-a-victim", "lock-fifo", "corpus-dev-zero", "corpus-fifo",
                "gradcheck-eps-nan", "train-stop-signal-segv")  # the tests' few, a second each


def hostile_case(name: str, work: Path) -> dict:
    """Set up case ``name`` in ``work/NAME``, run its command, and give its verdict."""
    folder = work / name
    run, outside = folder / "run", folder / "outside"
    run.mkdir(parents=True)
    outside.mkdir()
    write_corpus(run)
    (outside / "someone-elses.txt").write_text("keep me\n")
    record = {"case": name, "group": next(group for group, cases in HOSTILE_GROUPS.items()
                                          if name in cases)}
    try:
        case = HOSTILE_CASES[name](run, outside)
    except (OSError, NotImplementedError) as error:  # the platform lacks what it needs
        return {**record, "verdict": "skipped", "why": f"{type(error).__name__}: {error}"}
    before, around = snapshot(folder, leave_out=run), sorted(os.listdir(work))
    start = time.monotonic()
    try:
        code, err = gpurnn(*case["argv"], cwd=run, file_size_limit=case.get("file_size_limit"))
        seconds = time.monotonic() - start
        lines = [line for line in err.splitlines() if line.strip()]
        changed = _changes(before, snapshot(folder, leave_out=run), around, work)
        named = code == 0 or bool(lines) and all(word in lines[-1]
                                                 for word in case.get("says", ()))
        if code is None:
            verdict = "hang"
        elif "Traceback (most recent call last)" in err:
            verdict = "traceback"
        elif changed:
            verdict = "wrote-outside"
        elif code not in case["codes"] or not named or \
                not _one_message(lines, case.get("warns", False)):
            verdict = "unclear"
        elif not case.get("check", lambda run: True)(run) or \
                not case.get("check_err", lambda run, err: True)(run, err):
            verdict = "lost"
        else:
            verdict = "clean"
        if not changed:  # what the check ran (the advice followed) counts too
            changed = _changes(before, snapshot(folder, leave_out=run), around, work)
            verdict = "wrote-outside" if changed else verdict
    finally:
        case.get("cleanup", lambda: None)()
    argv = [str(a) for a in case["argv"]]
    return {**record, "command": " ".join(["gpurnn", *argv]).replace(str(folder), "$CASE"),
            "expected": list(case["codes"]), "exit_code": code, "verdict": verdict,
            "seconds": round(seconds, 2),
            "stderr": (lines[-1] if lines else "").replace(str(folder), "$CASE")[:500],
            **({"stderr_lines": len(lines)} if len(lines) > 1 else {}),
            **({"changed_outside": [c.replace(str(folder), "$CASE") for c in changed]}
               if changed else {})}


def _changes(before: dict, after: dict, around: list, work: Path) -> list:
    """What is new, changed or gone outside the run: the case's other files, and the
    entries of the folder all cases are in."""
    paths = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    return paths + sorted(set(os.listdir(work)).symmetric_difference(around))


def _one_message(lines: list, warns: bool) -> bool:
    """At most one line; or, for a run that trains before it stops (``warns``), its own
    warnings (skipped steps, a retried write) and then the one line that ends it."""
    return len(lines) <= 1 or warns and all(line.startswith("gpurnn: warning:")
                                             for line in lines[:-1])


def hostile(work: Path, names=None) -> dict:
    """The hostile cases (all of them, or ``names``) in folders under ``work``; their
    verdicts and totals (``lost`` counts the cases that wrote outside their run too)."""
    cases = [hostile_case(name, work) for name in (names or HOSTILE_CASES)]
    count = collections.Counter(case["verdict"] for case in cases)
    return {"cases": cases, "totals": {
        "tried": len(cases) - count["skipped"], "clean": count["clean"],
        "lost": count["lost"] + count["wrote-outside"], "wrote_outside": count["wrote-outside"],
        "traceback": count["traceback"], "hang": count["hang"], "unclear": count["unclear"],
        "skipped": count["skipped"], "timeout_s": HOSTILE_TIMEOUT_S}}


# ------------------------------------------------------------------------------ main

def machine() -> dict:
    import gpurnn
    info = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "platform": platform.platform(), "python": platform.python_version(),
            "cores": os.cpu_count(), "numpy": numpy.__version__, "gpurnn": gpurnn.__version__}
    try:
        import mpi4py
        info["mpi4py"] = mpi4py.__version__
    except ImportError:
        pass
    return info


def plot(result: dict, path: Path) -> None:
    """Faults injected and survived per kind, and the hostile cases clean per group, as bars
    (needs matplotlib)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    kinds = result["totals"]["by_kind"]
    names = list(kinds)
    cases = result.get("hostile", {}).get("cases", [])
    figure, panels = plt.subplots(1, 2 if cases else 1, figsize=(12 if cases else 8, 3.4),
                                  gridspec_kw={"width_ratios": [4, 3]} if cases else None,
                                  squeeze=False)
    axes = panels[0][0]
    x = numpy.arange(len(names))
    axes.bar(x - 0.2, [kinds[k]["injected"] for k in names], 0.4, label="injected")
    axes.bar(x + 0.2, [kinds[k]["survived"] for k in names], 0.4, label="survived")
    axes.set_xticks(x, names, rotation=20, fontsize=8)
    t = result["totals"]
    axes.set_title(f"gpurnn train under faults: {t['survived']}/{t['faults_injected']} survived, "
                   f"{t['checkpoints_lost']} checkpoints lost, {t['stray_files']} stray files",
                   fontsize=9)
    axes.set_ylabel("faults")
    axes.legend(fontsize=8)
    if cases:
        axes = panels[0][1]
        groups = list(dict.fromkeys(case["group"] for case in cases))
        tried = [sum(c["group"] == g and c["verdict"] != "skipped" for c in cases)
                 for g in groups]
        clean = [sum(c["group"] == g and c["verdict"] == "clean" for c in cases) for g in groups]
        x = numpy.arange(len(groups))
        axes.bar(x - 0.2, tried, 0.4, label="tried", color="tab:gray")
        axes.bar(x + 0.2, clean, 0.4, label="clean", color="tab:green")
        axes.set_xticks(x, groups, rotation=20, fontsize=8)
        h = result["hostile"]["totals"]
        axes.set_title(f"hostile cases: {h['clean']}/{h['tried']} clean, {h['lost']} lost "
                       f"({h['wrote_outside']} wrote outside), {h['traceback']} tracebacks, "
                       f"{h['hang']} hangs", fontsize=9)
        axes.set_ylabel("cases")
        axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chains", type=int, default=6, help="single-process chains (6)")
    parser.add_argument("--faults-per-chain", type=int, default=6, help="faults each (6)")
    parser.add_argument("--mpi-chains", type=int, default=3,
                        help="chains under mpiexec -n 2, two faults each (3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS / "faults.json")
    parser.add_argument("--only-hostile", nargs="*", metavar="CASE", default=None,
                        choices=sorted(HOSTILE_CASES),
                        help="run only the hostile cases (all, or those named), print their "
                             "verdicts and write nothing")
    args = parser.parse_args(argv)
    if args.only_hostile is not None:
        with tempfile.TemporaryDirectory(prefix="gpurnn-hostile-") as work:
            found = hostile(Path(work), args.only_hostile or None)
        print_hostile(found, every_case=True)
        return 0 if found["totals"]["clean"] == found["totals"]["tried"] else 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    result = run(args.chains, args.faults_per_chain, seed=args.seed, mpi_chains=args.mpi_chains)
    faults_seconds = time.monotonic() - started
    with tempfile.TemporaryDirectory(prefix="gpurnn-hostile-") as work:
        result["hostile"] = hostile(Path(work))
    result["hostile"]["seconds"] = round(time.monotonic() - started - faults_seconds, 1)
    result.update(machine=machine(), seconds=round(time.monotonic() - started, 1),
                  settings=SETTINGS, seed=args.seed)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    try:
        plot(result, args.output.with_suffix(".png"))
    except ImportError:
        print("matplotlib is not installed: no plot")
    t = result["totals"]
    print(f"faults injected {t['faults_injected']}, survived {t['survived']}, checkpoints lost "
          f"{t['checkpoints_lost']}, stray files {t['stray_files']}; chains bit-identical "
          f"{t['chains_bit_identical']} of {t['chains']}; {result['seconds']} s")
    for kind, entry in t["by_kind"].items():
        print(f"  {kind:14s} {entry['survived']}/{entry['injected']}")
    print_hostile(result["hostile"])
    print(f"wrote {args.output}")
    h = result["hostile"]["totals"]
    return 0 if t["survived"] == t["faults_injected"] and \
        t["chains_bit_identical"] == t["chains"] and h["clean"] == h["tried"] else 1


def print_hostile(found: dict, every_case: bool = False) -> None:
    """The totals line of the hostile cases, then each case not clean (or every case)."""
    h = found["totals"]
    print(f"hostile cases tried {h['tried']}, clean {h['clean']}, lost {h['lost']} (wrote "
          f"outside {h['wrote_outside']}), tracebacks {h['traceback']}, hangs {h['hang']}, "
          f"unclear {h['unclear']}, skipped {h['skipped']}")
    for case in found["cases"]:
        if every_case or case["verdict"] != "clean":
            print(f"  {case['verdict']:>13s}  {case['case']} (exit {case.get('exit_code')}): "
                  f"{case.get('stderr', case.get('why')) or '(nothing on stderr)'}")


if __name__ == "__main__":
    sys.exit(main())
