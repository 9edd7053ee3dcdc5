"""Fault injection: the trainer killed (SIGKILL, SIGTERM) at random instants and during
checkpoint writes, its disk filled, its MPI ranks signalled; after each fault it resumes,
and each chain of faults must end bit-identical to a run never interrupted, with no
checkpoint lost and no stray file. The harness is benchmarks/faults.py, whose larger
recorded run is benchmarks/results/faults.json; this is its default size for CI.
"""
import os
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
