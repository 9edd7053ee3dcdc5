"""Fault injection: the trainer killed (SIGKILL, SIGTERM) at random instants and during
checkpoint writes, its disk filled, its MPI ranks signalled; after each fault it resumes,
and each chain of faults must end bit-identical to a run never interrupted, with no
checkpoint lost and no stray file; then hostile inputs through the real command, each clean
or not. The harness is benchmarks/faults.py, whose larger recorded run is
benchmarks/results/faults.json; this is its default size for CI.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.faults,
              pytest.mark.skipif(not os.path.isdir("/proc/self") or os.name != "posix",
                                 reason="signals, RLIMIT_FSIZE and /proc are POSIX/Linux")]


@pytest.fixture(scope="module")
def faults():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import faults
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return faults


def _assert_all_survived(result):
    totals = result["totals"]
    failed = [f for c in result["chains"] for f in c["faults"] if not f["ok"] or f["lost"]]
    assert not failed, failed
    assert totals["survived"] == totals["faults_injected"] > 0
    assert totals["checkpoints_lost"] == 0 and totals["stray_files"] == 0
    assert totals["chains_bit_identical"] == totals["chains"], result["chains"]


def test_every_kind_of_fault_is_survived_and_the_run_ends_bit_identical(faults, tmp_path):
    result = faults.run(1, len(faults.SINGLE_KINDS), seed=1, work=tmp_path, steps=200)
    kinds = [f["kind"] for f in result["chains"][0]["faults"]]
    assert kinds == list(faults.SINGLE_KINDS)
    _assert_all_survived(result)
    during = [f for f in result["chains"][0]["faults"] if f["kind"].endswith("-write")]
    assert all(f["during_write"] or f["step_after"] == 200 for f in during)
    limit = next(f for f in result["chains"][0]["faults"] if f["kind"] == "file-size-limit")
    assert limit["how"] == "RLIMIT_FSIZE" and "File too large (EFBIG)" in limit["message"]


def _mpi_missing():
    import importlib.util
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed; pip install -e '.[mpi]'"
    from gpurnn.training.distributed import find_mpiexec
    if find_mpiexec() is None:
        return "no mpiexec found; pip install -e '.[mpi]' brings MPICH's"
    return None


def test_a_signal_to_one_rank_stops_every_rank_and_the_run_resumes(faults, tmp_path):
    missing = _mpi_missing()
    if missing:
        if os.environ.get("GPURNN_REQUIRE_MPI") == "1":
            pytest.fail(f"GPURNN_REQUIRE_MPI=1 but {missing}")
        pytest.skip(missing)
    result = faults.run(0, 0, seed=2, mpi_chains=1, work=tmp_path, steps=100)
    _assert_all_survived(result)
    sigterm = next(f for f in result["chains"][0]["faults"] if f["kind"] == "mpi-sigterm")
    assert sigterm["exit_code"] == 143 or sigterm["step_after"] == 100


# ------------------------------------------------------------------------- hostile cases

def test_hostile_cases_are_refused_cleanly(faults, tmp_path):
    """A few of the benchmark's hostile cases through the real command (the full list runs
    with the benchmark): planted locks, a device and a FIFO as corpora, flags that mean
    nothing; each one line and exit code 2, nothing written outside its run."""
    result = faults.hostile(tmp_path, faults.FAST_HOSTILE)
    unclean = [c for c in result["cases"] if c["verdict"] != "clean"]
    assert not unclean, unclean
    totals = result["totals"]
    assert totals["tried"] == totals["clean"] == len(faults.FAST_HOSTILE)
    assert totals["lost"] == totals["traceback"] == totals["hang"] == totals["unclear"] == 0
    assert all(c["exit_code"] == 2 and " error: " in c["stderr"] for c in result["cases"])


def test_the_hostile_verdicts_tell_each_failure_apart(faults, tmp_path, monkeypatch):
    """The verdicts can fail: stand-in commands (Python one-liners) that refuse cleanly,
    raise, hang, write outside, say two lines, name nothing, or lose the run's data."""
    def command(code, **options):
        return lambda run, outside: {"argv": [code], "codes": (2,), "says": ("--flag",),
                                     **options}
    refuse = "import sys; sys.stderr.write('gpurnn x: error: bad --flag\\n'); sys.exit(2)"
    cases = {
        "clean": command(refuse),
        "traceback": command("raise ValueError('--flag')"),
        "hang": command("import time; time.sleep(60)"),
        "wrote-outside": command("open('../outside/someone-elses.txt', 'a').write('x'); "
                                 + refuse),
        "new-file-outside": command("open('../../planted', 'w'); " + refuse),
        "two-lines": command("import sys; print('one\\ntwo --flag', file=sys.stderr); "
                             "sys.exit(2)"),
        "names-nothing": command(refuse.replace("--flag", "value")),
        "exit-0": command("pass"),
        "lost": command(refuse, check=lambda run: False),
    }
    monkeypatch.setattr(faults, "HOSTILE_GROUPS", {"stand-ins": cases})
    monkeypatch.setattr(faults, "HOSTILE_CASES", cases)

    def gpurnn(code, *, cwd, file_size_limit=None):
        try:
            done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True,
                                  text=True, timeout=1.5)
        except subprocess.TimeoutExpired:
            return None, ""
        return done.returncode, done.stderr
    monkeypatch.setattr(faults, "gpurnn", gpurnn)
    result = faults.hostile(tmp_path)
    verdicts = {c["case"]: c["verdict"] for c in result["cases"]}
    assert verdicts == {"clean": "clean", "traceback": "traceback", "hang": "hang",
                        "wrote-outside": "wrote-outside", "new-file-outside": "wrote-outside",
                        "two-lines": "unclear", "names-nothing": "unclear",
                        "exit-0": "unclear", "lost": "lost"}
    assert result["totals"] == {**result["totals"], "tried": 9, "clean": 1, "lost": 3,
                                "wrote_outside": 2, "traceback": 1, "hang": 1, "unclear": 3}
    changed = next(c for c in result["cases"] if c["case"] == "wrote-outside")
    assert changed["changed_outside"] == ["$CASE/outside/someone-elses.txt"]


def test_a_lock_planted_as_a_hard_link_leaves_its_other_name_untouched(faults, tmp_path):
    case = faults.hostile(tmp_path, ["lock-hard-link-to-a-victim"])["cases"][0]
    assert case["verdict"] == "clean", case
