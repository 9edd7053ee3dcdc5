"""The throughput harness on tiny sizes: it measures what it says and tabulates it."""
import argparse

import pytest

from gpurnn.tools import bench

TINY_LM = bench.Config("tiny-lm", "lm", 50, 8, 50, 4, 2)
TINY_GRU = bench.Config("tiny-gru", "dense", 6, 8, 5, 4, None, "gru")


@pytest.fixture(autouse=True)
def tiny_configs(monkeypatch):
    monkeypatch.setitem(bench.CONFIGS, TINY_LM.name, TINY_LM)
    monkeypatch.setitem(bench.CONFIGS, TINY_GRU.name, TINY_GRU)


def test_speed_rows_for_gpurnn_and_the_reference():
    rows = bench.measure_speed("gpurnn", TINY_LM, [3, 5], repeats=2, warmup=1)
    rows += bench.measure_speed("reference", TINY_LM, [3, 100], repeats=1, warmup=0)
    gpurnn = [r for r in rows if r["system"] == "gpurnn"]
    assert [r["T"] for r in gpurnn] == [3, 5]
    assert all(r["tokens"] == 4 * r["T"] and r["tokens_per_s"] > 0 for r in gpurnn)
    assert all(0 < r["efficiency"] for r in gpurnn)
    reference = [r for r in rows if r["system"] == "reference"]
    assert [r["T"] for r in reference] == [3]          # long T is skipped for the plain loop
    assert reference[0]["per_sequence"] and reference[0]["tokens"] == 2 * 3
    table = bench.markdown(rows)
    assert "| tiny-lm | 3 |" in table and "(per-seq)" in table
    assert set(bench.ratios(rows)) == {"tiny-lm T=3 gpurnn/reference"}
    assert all(len(r["samples"]) == (2 if r["system"] == "gpurnn" else 1) for r in rows)


def test_gated_step_runs_and_counts_its_gate_products():
    bench.gpurnn_step(TINY_GRU, 4)()
    forward = bench.gemm_shapes(TINY_GRU, 4)[0]
    assert forward == (4, 8, 24, 4)                    # one product for the three gates


def test_window_width_enters_the_backward_products():
    assert bench.gemm_shapes(TINY_LM, 10)[1] == (3 * 4, 8, 8, 10)
    full = bench.Config("full", "lm", 50, 8, 50, 4, None)
    assert bench.gemm_shapes(full, 10)[1] == (4, 8, 8, 10)


def test_memory_probe_reports_a_positive_peak():
    result = bench.measure_memory("gpurnn", TINY_LM, 6)
    assert result["peak_bytes"] > 0 and result["step_bytes"] >= 0


def test_interleaved_repeats_alternate_between_the_systems():
    rows = bench.measure_interleaved(["gpurnn", "reference"], TINY_LM, 3, repeats=3, warmup=1)
    assert [r["system"] for r in rows] == ["gpurnn", "reference"]
    for row in rows:
        assert len(row["samples"]) == len(row["started"]) == 3
        assert row["seconds_min"] <= row["seconds"] <= row["seconds_max"]
    ours, theirs = rows[0]["started"], rows[1]["started"]
    # repeat r of each system runs after repeat r - 1 of every system: no system's repeats
    # all come first
    for r in range(1, 3):
        assert max(ours[r - 1], theirs[r - 1]) < min(ours[r], theirs[r])
    # the gated cell has no seeds' loop: that system is left out, not failed
    rows = bench.measure_interleaved(["reference", "gpurnn"], TINY_GRU, 4, repeats=1, warmup=0)
    assert [r["system"] for r in rows] == ["gpurnn"]


def test_ratios_are_paired_and_refused_within_the_noise():
    # one wild repeat (the 0.5) does not hide a clear difference ...
    clear = bench.paired_ratios([1.0, 1.1, 0.9, 1.0, 4.0], [2.0, 2.4, 1.9, 2.2, 2.0])
    assert clear["clear"] and clear["low"] > 1 and clear["ratio"] == pytest.approx(1.9 / 0.9)
    assert clear["min"] == 0.5 and clear["repeats"] == 5
    assert bench.format_ratio(clear) == "2.11x (quartiles 2.00-2.18x)"
    # ... but ratios spread across 1 print none
    noisy = bench.paired_ratios([1.0, 1.0, 1.0, 1.0], [0.8, 0.9, 1.1, 1.3])
    assert not noisy["clear"]
    assert bench.format_ratio(noisy) == ("no clear difference (quartiles 0.88-1.15x over 4 "
                                         "repeats)")


def test_bench_writes_to_a_scratch_place_unless_told(tmp_path, monkeypatch, capsys):
    from gpurnn.tools import cli
    monkeypatch.setattr(bench, "SCRATCH", tmp_path / "scratch")
    monkeypatch.setattr(bench, "plot", lambda results, prefix: [])  # matplotlib is slow to load
    argv = ["bench", "--configs", "tiny-lm", "--lengths", "3", "--systems", "gpurnn",
            "reference", "--repeats", "2", "--no-memory"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "scratch" / "throughput.json").is_file()
    assert "tiny-lm T=3 gpurnn/reference" in out
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    prefix = bench.output_prefix(parser.parse_args(["--output", str(tmp_path / "a" / "b" / "c")]))
    assert prefix == tmp_path / "a" / "b" / "c" and prefix.parent.is_dir()
    assert bench.output_prefix(parser.parse_args(["--save"])) == bench.RECORDED / "throughput"


def test_bench_output_folder_that_cannot_be_made_fails_before_running(tmp_path, monkeypatch,
                                                                       capsys):
    from gpurnn.tools import cli
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(bench, "run", lambda *a, **k: pytest.fail("ran before the check"))
    assert cli.main(["bench", "--configs", "tiny-lm", "--output",
                     str(tmp_path / "file" / "sub" / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot create the output folder" in err and len(err.splitlines()) == 1
