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
stray. Writes benchmarks/results/faults.json and, with matplotlib, faults.png.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import platform
import random
import resource
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


def start(argv: list, *, file_size_limit: int | None = None) -> subprocess.Popen:
    def limit():
        if file_size_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
    return subprocess.Popen(argv, env=environment(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=limit)


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
    """Faults injected and survived per kind, as bars (needs matplotlib)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    kinds = result["totals"]["by_kind"]
    names = list(kinds)
    figure, axes = plt.subplots(figsize=(8, 3.2))
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
    args = parser.parse_args(argv)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    result = run(args.chains, args.faults_per_chain, seed=args.seed, mpi_chains=args.mpi_chains)
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
    print(f"wrote {args.output}")
    return 0 if t["survived"] == t["faults_injected"] and \
        t["chains_bit_identical"] == t["chains"] else 1


if __name__ == "__main__":
    sys.exit(main())
