"""The throughput harness on tiny sizes: it measures what it says and tabulates it."""
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
