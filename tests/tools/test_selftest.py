"""``gpurnn selftest``: one clear line without a GPU; its checks, sweep and reports run on
the CPU here (fused kernels through the host emulation), so the code a GPU run depends on
has run before it gets there."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpurnn.engine.arrays import backend
from gpurnn.engine.gpu import fused
from gpurnn.engine.gpu.kernels import host
from gpurnn.tools import gpu_sweep, selftest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(backend.cuda_available(), reason="a GPU is present: the command would run")
@pytest.mark.parametrize("command", [["-m", "gpurnn", "selftest", "--device", "cuda"],
                                     [str(ROOT / "scripts" / "gpu_check.py")]])
def test_without_a_gpu_it_fails_fast_with_one_line(command, tmp_path):
    start = time.time()
    done = subprocess.run([sys.executable, *command, "--output", str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode != 0
    assert time.time() - start < 30
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cuda" in lines[0] and "error" in lines[0]
    assert "--dry-run" in lines[0]                              # what can be run instead
    assert not list(tmp_path.iterdir())                         # nothing written
    assert not list(Path.cwd().iterdir())


@pytest.fixture(scope="module")
def launch():
    if host.compiler() is None and os.environ.get("GPURNN_REQUIRE_KERNEL_TOOLS") != "1":
        pytest.skip("no host C++ compiler (g++) to build the kernels for the host")
    return host.HostLauncher(host.build())


def test_the_sweep_and_its_reports_run_on_the_cpu(launch, tmp_path):
    pytest.importorskip("torch")
    with fused.emulate_on_host(launch):
        rows = gpu_sweep.sweep("cpu", lengths=(3,), cells=("gru",), repeats=1,
                              sizes=dict(vocab=17, hidden=6, batch=3, small_batch=2))
    assert not [r for r in rows if "error" in r or "skipped" in r], rows
    systems = {r["system"] for r in rows}
    assert systems == {"gpurnn-plain", "gpurnn-fused", "torch"}
    assert {(r["B"], r["H"]) for r in rows} == {(3, 6), (2, 6), (3, 12)}  # + small B, wide H
    # every configuration and system in float32, then in bf16-mixed (torch: autocast)
    by_precision = {p: {(r["system"], r["B"], r["H"]) for r in rows if r["precision"] == p}
                    for p in ("float32", "bf16-mixed")}
    assert by_precision["float32"] == by_precision["bf16-mixed"] and len(rows) == 18
    table = gpu_sweep.summary_table([{"check": "x", "error": 0.0, "passed": True}], rows)
    assert "gpurnn-fused" in table and "vs ref" in table
    assert gpu_sweep.plot_sweep(rows, tmp_path / "sweep.png") is None or \
        (tmp_path / "sweep.png").stat().st_size > 0
    json.dumps(rows)                                            # what selftest.json holds


def test_with_tf32_the_sweep_runs_the_tf32_plan():
    rows = gpu_sweep.sweep("cpu", tf32=True, lengths=(3,), cells=("elman",), repeats=1,
                          sizes=dict(vocab=5, hidden=2, batch=1, small_batch=1))
    assert rows and {(r["precision"], r["tf32"]) for r in rows} == {("tf32", True)}
    assert not [r for r in rows if "error" in r or "skipped" in r], rows


def test_the_precision_checks_run_on_the_cpu_beside_pytorch():
    """bf16-mixed (plain and fused) and tf32 steps against float64 in units of u, with
    PyTorch's autocast and TF32 steps against its own float64 one beside them; cpu-strict
    runs the tf32 ones and refuses a 16-bit step in one line."""
    pytest.importorskip("torch")
    pytest.importorskip("ml_dtypes")
    records = list(selftest.precision_checks("cpu"))
    assert len(records) == 3 * len(selftest.PRECISION_STEPS)
    assert all(r["passed"] and r["tolerance"] == selftest.MIXED_U for r in records), records
    bf16 = [r for r in records if r["check"].startswith("bf16-mixed")]
    # both really ran in bfloat16: errors of a few u, not float32's 2^-16 u
    assert all(1 / 64 < r["error"] and 1 / 64 < r["torch_error"] < selftest.MIXED_U
               for r in bf16), bf16
    tf32 = [r for r in records if r["check"].startswith("tf32")]
    assert all(r["error"] < 1 / 64 and r["torch_error"] < 1 / 64 for r in tf32)  # the CPU
    strict = list(selftest.precision_checks("cpu-strict", cells=("gru",),
                                            steps=(("tf32", "plain"),)))
    assert strict[0]["passed"] and strict[0]["error"] == tf32[1]["error"]
    with pytest.raises(ValueError, match="cpu-strict device has no 16-bit emulation"):
        list(selftest.precision_checks("cpu-strict", with_torch=False, cells=("gru",)))


def test_a_deadline_skips_what_it_cannot_start():
    rows = gpu_sweep.sweep("cpu", lengths=(3,), cells=("elman",), deadline=0,
                          sizes=dict(vocab=5, hidden=2, batch=1, small_batch=1))
    assert rows and all(r.get("skipped") == "time budget" for r in rows)


def test_a_dry_run_goes_through_every_stage_on_the_cpu(launch):
    """``gpurnn selftest --dry-run``: the checks and the sweep in their worker processes, on
    the CPU with the kernels emulated, tiny sizes; the JSON files, the plot and the table,
    under gpurnn-selftest-dry-run/ of the current folder (ignored by git), nothing else."""
    done = subprocess.run([sys.executable, "-m", "gpurnn", "selftest", "--dry-run",
                           "--no-suite", "--budget", "300"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert [p.name for p in Path.cwd().iterdir()] == ["gpurnn-selftest-dry-run"]
    folder = Path.cwd() / "gpurnn-selftest-dry-run"
    report = json.loads((folder / "selftest.json").read_text())
    assert report["machine"]["dry_run"] and "nothing about GPU speed" in \
        report["machine"]["note"]
    checks = report["checks"]
    # per cell: float64 plain and fused, float32 fused, float64 full BPTT through the
    # persistent and the auto plan; persistent: 2 dtypes × (Elman, GRU,
    # LSTM) × (forward, backward); the optimizers; the precision steps of 3 cells; no CUDA
    # graph without a GPU; the scan kernels: 2 dtypes × (forward, adjoint) and their timing;
    # the ParaGRU by Newton on them against the loop, and its timing
    assert len(checks) == (3 + len(selftest.PLANNED)) * len(selftest.CELLS) + 12 \
        + len(fused.OPTIMIZERS) + 3 * len(selftest.PRECISION_STEPS) + 7
    assert sum("scan kernels" in c["check"] for c in checks) == 5
    newton = [c for c in checks if "ParaGRU Newton" in c["check"]]
    assert len(newton) == 1 and newton[0]["iterations"] and newton[0]["fallbacks"] == 0
    planned = [c for c in checks if "persistent plan" in c["check"]]
    assert len(planned) == len(selftest.CELLS)
    assert all("backward persistent" in c["paths"] for c in planned), planned
    assert all(c["passed"] for c in checks), [c for c in checks if not c["passed"]]
    rows = json.loads((folder / "sweep.json").read_text())["rows"]
    assert {r["tf32"] for r in rows} == {False, True}
    assert not [r for r in rows if "error" in r or "skipped" in r]
    assert "vs ref" in done.stdout and "wrote" in done.stdout
    first, *_, note, wrote = done.stdout.strip().splitlines()
    assert first == note == selftest.DRY_RUN_NOTE       # before the table and after it
    assert "emulating" in note and "says nothing about GPU speed" in note


def _where_it_writes(monkeypatch, argv, gpu=True):
    """The folder ``gpurnn selftest ARGV`` writes to, run() itself left out."""
    from gpurnn.tools import cli
    seen = []
    monkeypatch.setattr(selftest, "run", lambda device, output, *a, **k: seen.append(
        (str(device), output)) or 0)
    if gpu:
        monkeypatch.setattr(backend, "cuda_unavailable_reason", lambda: None)
        monkeypatch.setattr(backend, "get_device", lambda spec: backend.Device("cuda", 0))
    assert cli.main(["selftest", *argv]) == 0
    return seen


def test_a_dry_run_writes_outside_the_kept_gpu_results(monkeypatch):
    assert _where_it_writes(monkeypatch, ["--dry-run"], gpu=False) == \
        [("cpu", Path("gpurnn-selftest-dry-run"))]
    assert _where_it_writes(monkeypatch, ["--dry-run", "--output", "x"], gpu=False) == \
        [("cpu", Path("x"))]
    assert _where_it_writes(monkeypatch, []) == [("cuda:0", Path("benchmarks/results/gpu"))]


def test_a_dry_run_never_overwrites_the_results_of_a_gpu_run(tmp_path, capsys):
    from gpurnn.tools import cli
    (tmp_path / "selftest.json").write_text(json.dumps({"machine": {"dry_run": False}}))
    assert cli.main(["selftest", "--dry-run", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds the results of a run on a GPU" in err and len(err.splitlines()) == 1
    assert json.loads((tmp_path / "selftest.json").read_text()) == {"machine": {"dry_run": False}}


@pytest.mark.skipif(backend.cuda_available(), reason="a GPU is present: the command would run")
@pytest.mark.parametrize("device", ["cuda", "cuda:1", "auto"])
def test_without_a_gpu_the_error_suggests_the_dry_run(device, capsys):
    from gpurnn.tools import cli
    assert cli.main(["selftest", "--device", device]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpurnn selftest: error: no usable GPU: ") and len(err.splitlines()) == 1
    assert err.endswith("run gpurnn selftest --dry-run to check the command on the CPU")


@pytest.mark.parametrize("status,summary,require_ran,passed", [
    (0, "310 passed, 4 skipped, 700 deselected in 80s", True, True),
    (1, "300 passed, 10 failed, 4 skipped in 80s", True, False),
    (0, "1 passed, 223 skipped, 700 deselected in 3s", True, False),   # CuPy unusable there
    (0, "1 passed, 223 skipped, 700 deselected in 3s", False, True),   # --dry-run on a CPU
])
def test_the_suite_stage_fails_when_the_cupy_tests_did_not_run(status, summary, require_ran,
                                                                 passed):
    assert selftest._suite_verdict(status, summary, require_ran)["passed"] is passed


def test_the_step_graph_stage_reports_a_refusal_instead_of_raising():
    from gpurnn.tools.selftest import step_graph_check

    record = step_graph_check("cpu")          # no GPU: refused, every step eager, equal
    assert record["passed"] and "not CuPy's" in record["skipped"]
    assert record["modes"] == ["eager"] * 4 and record["error"] <= 1e-10
