"""The shared timing harness: interleaved rounds, summaries, paired ratios, the machine's record."""
import io
import json

import pytest

from gpurnn.tools import harness


def test_summary_gives_median_quartiles_and_range():
    s = harness.summary([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s["median"], s["q1"], s["q3"], s["min"], s["max"], s["n"]) == (3, 2, 4, 1, 5, 5)
    one = harness.summary([2.0])
    assert one["q1"] == one["median"] == one["q3"] == 2.0


def test_ratio_is_paired_and_says_when_the_spread_exceeds_the_difference():
    clear = harness.ratio([2.0, 2.4, 1.9, 2.2, 2.0], [1.0, 1.1, 0.9, 1.0, 4.0])
    assert clear["clear"] and clear["median"] == pytest.approx(1.9 / 0.9)
    noisy = harness.ratio([0.8, 0.9, 1.1, 1.3], [1.0, 1.0, 1.0, 1.0])
    assert not noisy["clear"]
    warnings = harness.noise_warnings({"a": clear, "b": noisy})
    assert len(warnings) == 1 and warnings[0].startswith("b: ") and "straddle 1" in warnings[0]
    with pytest.raises(ValueError):
        harness.ratio([1.0], [1.0, 2.0])


def test_rounds_interleave_every_system_in_each_round():
    calls = []
    rounds = harness.Rounds(min_sample_s=0, seed=1)
    for name in "abc":
        rounds.add(name, lambda name=name: calls.append(name))
    rounds.add("cpu", lambda: sum(range(1000)), clock="cpu")
    samples = rounds.run(4)
    assert all(len(v) == 4 and all(t >= 0 for t in v) for v in samples.values())
    assert [sorted(order) for order in rounds.order_log] == [sorted("abc") + ["cpu"]] * 4
    timed = calls[6:]                                   # after calibration's two calls each
    assert [sorted(timed[3 * r:3 * r + 3]) for r in range(4)] == [list("abc")] * 4
    assert set(rounds.summaries()) == {"a", "b", "c", "cpu"}
    with pytest.raises(ValueError):
        rounds.add("neither")


def test_serve_answers_setup_and_time_commands():
    ran = []
    commands = [{"cmd": "setup", "x": 1}, {"cmd": "time", "task": "t", "repeats": 3},
                {"cmd": "time", "task": "t", "repeats": 1, "clock": "cpu"}]
    out = io.StringIO()
    harness.serve(lambda command: {"t": lambda: ran.append(command["x"])},
                  io.StringIO("".join(json.dumps(c) + "\n" for c in commands)), out)
    replies = [json.loads(line) for line in out.getvalue().splitlines()]
    assert replies[0] == {"tasks": ["t"]} and len(ran) == 1 + 3 + 1   # warm-up included
    assert all(r["seconds"] >= 0 for r in replies[1:])


def test_environment_records_load_blas_and_the_coretype_pin(monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    info = harness.environment()
    assert info["openblas_coretype_pinned"] and info["openblas_env"]["OPENBLAS_CORETYPE"]
    assert len(info["load_average"]) == 3 and "blas" in info and "cores" in info
    assert isinstance(info["blas_pools"], list)
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    assert not harness.environment()["openblas_coretype_pinned"]
