"""The gpurnn command end to end: train, generate, resume, plot, and its errors."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy
import pytest

from gpurnn.tools import cli
from gpurnn.training.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def corpus(tmp_path):
    rng = numpy.random.default_rng(0)
    text = " ".join(f"{rng.choice(['The cat', 'A dog', 'My friend'])} "
                    f"{rng.choice(['sees', 'likes', 'eats'])} "
                    f"{rng.choice(['the fish', 'a ball', 'some bread'])}." for _ in range(240))
    path = tmp_path / "corpus.txt"
    path.write_text(text)
    return path


def small(corpus, tmp_path, *extra):
    """A train command line that runs in well under a second."""
    return ["train", "--corpus", str(corpus), "--vocab-size", "40", "--hidden", "12",
            "--batch-size", "4", "--seq-len", "8", "--lr", "0.02", "--eval-every", "10",
            "--log-every", "5", "--samples", "2", "--checkpoint", str(tmp_path / "lm.npz"),
            "--device", "cpu", *extra]


def records(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_train_then_generate(corpus, tmp_path, capsys):
    assert cli.main(small(corpus, tmp_path, "--steps", "40")) == 0
    out = capsys.readouterr().out
    assert "step 0: valid loss" in out and "step 40:" in out and "perplexity" in out
    assert "outside loss_and_grads" in out
    valid = [r["valid_loss"] for r in records(tmp_path / "lm.jsonl") if "valid_loss" in r]
    assert len(valid) == 5 and valid[-1] < valid[0] - 1.0
    vocab = set(load_checkpoint(tmp_path / "lm.npz").vocab)
    assert cli.main(["generate", str(tmp_path / "lm.npz"), "--num", "3", "--seed", "1",
                     "--temperature", "0.7", "--top-k", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    for line in lines:
        words = line.replace(".", " .").split()
        assert words and set(words) <= vocab
    cli.main(["generate", str(tmp_path / "lm.npz"), "--num", "3", "--seed", "1",
              "--temperature", "0.7", "--top-k", "5"])
    assert capsys.readouterr().out.splitlines() == lines  # seeded
    assert cli.main(["generate", str(tmp_path / "lm.npz"), "--prompt", "The dog",
                     "--num", "1", "--min-length", "3"]) == 0
    assert capsys.readouterr().out.startswith("the dog")


def test_resume_from_the_command_line_equals_one_run(corpus, tmp_path, capsys):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    whole.mkdir(), parts.mkdir()
    assert cli.main(small(corpus, whole, "--steps", "30", "--mode", "sentence")) == 0
    assert cli.main(small(corpus, parts, "--steps", "15", "--mode", "sentence")) == 0
    # only --resume, --checkpoint and --steps: every other setting comes from the checkpoint
    assert cli.main(["train", "--resume", "--checkpoint", str(parts / "lm.npz"), "--steps",
                     "30", "--quiet"]) == 0
    a, b = load_checkpoint(whole / "lm.npz"), load_checkpoint(parts / "lm.npz")
    assert a.step == b.step == 30
    for name in a.params:
        assert numpy.array_equal(a.params[name], b.params[name])
    steps = [r["step"] for r in records(parts / "lm.jsonl") if "loss" in r]
    assert steps == list(range(5, 31, 5))  # appended, no step twice


def test_config_file_with_flag_overrides(corpus, tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text(f'corpus = "{corpus}"\nvocab-size = 40\nhidden = 10\nbatch_size = 4\n'
                      f'seq-len = 8\nsteps = 6\neval-every = 3\nquiet = true\n'
                      f'checkpoint = "{tmp_path / "lm.npz"}"\n')
    assert cli.main(["train", "--config", str(config), "--hidden", "8", "--device", "cpu"]) == 0
    saved = load_checkpoint(tmp_path / "lm.npz")
    assert saved.config["train"]["hidden"] == 8 and saved.config["train"]["seq_len"] == 8
    assert saved.step == 6
    (tmp_path / "bad.json").write_text('{"hiden": 8}')
    assert cli.main(["train", "--config", str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown key 'hiden'; valid keys are: corpus, level, vocab-size" in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("setup, args, message", [
    ("empty", ["--corpus", "{dir}/empty.txt"], "contains no tokens"),
    ("binary", ["--corpus", "{dir}/binary.txt"], "looks like a binary file"),
    (None, ["--corpus", "{dir}/missing.txt"], "does not exist"),
    (None, ["--corpus", "{dir}/c.txt"], "too short for batch_size=32"),
    (None, ["--corpus", "{dir}/folder"], "contains no .txt files"),
    (None, ["--vocab-size", "3"], "--vocab-size must be at least 5"),
    (None, ["--vocab-size", "4"], "--vocab-size must be at least 5"),
    (None, ["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
    (None, ["--optimizer", "lbfgs"], "argument --optimizer: invalid choice: 'lbfgs'"),
    (None, ["--hidden", "many"], "argument --hidden: invalid int value"),
    (None, ["--steps", "5", "--epochs", "1"], "not allowed with argument"),
    (None, ["--resume", "--checkpoint", "{dir}/none.npz"], "--resume: no checkpoint at"),
    (None, ["--checkpoint", "{dir}/no/such/lm.npz", "--corpus", "{dir}/c.txt"],
     "folder {dir}/no/such for lm.npz does not exist"),
    ("junk", ["--resume", "--checkpoint", "{dir}/junk.npz"], "not a gpurnn checkpoint"),
    (None, ["--config", "{dir}/missing.toml"], "config file {dir}/missing.toml does not exist"),
    (None, ["--layer-norm"], "--layer-norm applies to --cell gru or lstm, not elman"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, setup, args, message):
    (tmp_path / "c.txt").write_text("A tiny corpus. It has two sentences.")
    (tmp_path / "folder").mkdir()
    if setup == "empty":
        (tmp_path / "empty.txt").write_text("")
    elif setup == "binary":
        (tmp_path / "binary.txt").write_bytes(bytes(range(256)) * 4)
    elif setup == "junk":
        (tmp_path / "junk.npz").write_bytes(b"junk" * 100)
    argv = ["train", *(a.replace("{dir}", str(tmp_path)) for a in args), "--quiet"]
    with pytest.raises(SystemExit) if "argument" in message else _no_exit() as exit_info:
        code = cli.main(argv)
    if exit_info is not None and getattr(exit_info, "value", None) is not None:
        code = exit_info.value.code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message.replace("{dir}", str(tmp_path)) in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


class _no_exit:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_layer_norm_flag_trains_and_its_checkpoint_loads_back(corpus, tmp_path, capsys):
    import gpurnn
    assert cli.main(small(corpus, tmp_path, "--steps", "5", "--cell", "lstm",
                          "--layer-norm")) == 0
    model = gpurnn.load(tmp_path / "lm.npz").model
    assert model.layer_norm and "ln_c_weight" in model.params
    assert load_checkpoint(tmp_path / "lm.npz").config["train"]["layer_norm"] is True


def test_damaged_checkpoints_are_rejected_clearly(corpus, tmp_path, capsys):
    assert cli.main(small(corpus, tmp_path, "--steps", "3", "--quiet")) == 0
    good = (tmp_path / "lm.npz").read_bytes()
    for name, content in [("cut.npz", good[:len(good) // 2]), ("junk.npz", b"\x00" * 2000),
                          ("empty.npz", b"")]:
        (tmp_path / name).write_bytes(content)
        for argv in (["generate", str(tmp_path / name)],
                     ["train", "--resume", "--checkpoint", str(tmp_path / name)]):
            assert cli.main(argv) == 2
            err = capsys.readouterr().err.strip()
            assert name in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_sigint_saves_a_loadable_checkpoint_and_exits_130(corpus, tmp_path):
    argv = small(corpus, tmp_path, "--steps", "100000", "--log-every", "1",
                 "--eval-every", "1000", "--checkpoint-every", "0")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "gpurnn", *argv], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "lm.jsonl"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until it is training
        if metrics.exists() and sum(1 for _ in open(metrics)) > 5:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err  # as shells expect of Ctrl-C, after saving
    assert "stopped at step" in out and "--resume" in out
    saved = load_checkpoint(tmp_path / "lm.npz")
    assert 0 < saved.step < 100000
    assert all(numpy.isfinite(p).all() for p in saved.params.values())
    assert records(metrics)[-1]["event"] == "end" and records(metrics)[-1]["interrupted"]


def test_help_explains_every_flag(capsys):
    for command, flags in [
        ("train", ["--corpus", "--level", "--vocab-size", "--hidden", "--batch-size",
                   "--seq-len", "--truncate", "--steps", "--epochs", "--optimizer", "--lr",
                   "--clip", "--seed", "--device", "--checkpoint", "--checkpoint-every",
                   "--resume", "--metrics", "--config"]),
        ("generate", ["--num", "--temperature", "--top-k", "--prompt", "--seed",
                      "--min-length", "--show-unknown", "--device"]),
        ("gradcheck", ["--cell", "--layers", "--device"]),
        ("diagnose", ["--cell", "--layers", "--device", "--json", "--plot", "--no-save"]),
        ("plot", ["--output"]),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            cli.main([command, "--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        for flag in flags:
            assert f"  {flag}" in text, (command, flag)
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    assert "sgd,momentum,adagrad,rmsprop,adam,rprop" in text and "perplexity" in text


def test_plot(corpus, tmp_path, capsys, monkeypatch):
    assert cli.main(small(corpus, tmp_path, "--steps", "10", "--quiet")) == 0
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    assert cli.main(["plot", str(tmp_path / "lm.jsonl")]) == 2
    assert "pip install 'gpurnn[plot]'" in capsys.readouterr().err
    monkeypatch.undo()
    (tmp_path / "bad.jsonl").write_text('{"step": 1}\nnot json\n')
    assert cli.main(["plot", str(tmp_path / "bad.jsonl")]) == 2
    assert "bad.jsonl:2: not a JSON object" in capsys.readouterr().err
    pytest.importorskip("matplotlib")
    assert cli.main(["plot", str(tmp_path / "lm.jsonl"), "-o", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_train_lm_script_uses_the_tutorials_settings(corpus, tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import train_lm
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    assert train_lm.main(["--corpus", str(corpus), "--steps", "12", "--vocab-size", "40",
                          "--hidden", "8", "--eval-every", "4", "--quiet",
                          "--checkpoint", str(tmp_path / "t.npz")]) == 0
    train = load_checkpoint(tmp_path / "t.npz").config["train"]
    assert (train["optimizer"], train["lr"], train["truncate"], train["reduction"],
            train["schedule"], train["mode"], train["batch_size"]) == \
        ("sgd", 0.005, 4, "sum", "halve", "sentence", 1)
    assert train["steps"] == 12 and train["epochs"] is None


def _blas_threads_seen(monkeypatch, **env):
    from threadpoolctl import threadpool_info
    from gpurnn.tools import command
    for name in command._THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    seen = []
    monkeypatch.setattr(cli, "run_plot", lambda args: seen.append(
        {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}) or 0)
    status = cli.main(["plot", "x.jsonl"])
    return status, seen


def test_commands_run_with_one_blas_thread_unless_the_environment_says(monkeypatch, capsys):
    import os
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: one BLAS thread either way")
    assert _blas_threads_seen(monkeypatch) == (0, [{1}])
    assert _blas_threads_seen(monkeypatch, GPURNN_BLAS_THREADS="2") == (0, [{2}])
    status, seen = _blas_threads_seen(monkeypatch, OPENBLAS_NUM_THREADS="2")
    assert status == 0 and seen != [{1}]           # the user's setting is left alone
    assert _blas_threads_seen(monkeypatch, GPURNN_BLAS_THREADS="two") == (2, [])
    err = capsys.readouterr().err.strip()
    assert err == "gpurnn plot: error: GPURNN_BLAS_THREADS must be a positive integer, got 'two'"


@pytest.mark.parametrize("cell, layers", [("elman", 1), ("gru", 1), ("lstm", 2), ("elman", 2)])
def test_gradcheck_command_checks_every_cell(cell, layers, capsys):
    assert cli.main(["gradcheck", "--cell", cell, "--layers", str(layers), "--hidden", "3",
                     "--input-size", "5", "--batch-size", "2", "--seq-len", "4",
                     "--max-checks", "6", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "gradient check passed" in out
    assert {"elman": "ElmanRNN", "gru": "GRU", "lstm": "LSTM"}[cell] in out.splitlines()[0]
    if cell != "elman":
        assert "weight_hh" in out


def test_gradcheck_command_fails_on_a_wrong_gradient(monkeypatch, capsys):
    from gpurnn.engine.recurrences.gated import GRU
    real = GRU.loss_and_grads

    def wrong(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        if result.grads is not None:
            for grad in result.grads.values():
                grad *= 1.01
        return result
    monkeypatch.setattr(GRU, "loss_and_grads", wrong)
    assert cli.main(["gradcheck", "--cell", "gru", "--hidden", "3", "--input-size", "5",
                     "--batch-size", "2", "--seq-len", "4", "--max-checks", "4",
                     "--device", "cpu"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_gradcheck_refuses_an_activation_for_gated_cells(capsys):
    assert cli.main(["gradcheck", "--cell", "lstm", "--activation", "relu"]) == 2
    assert "elman cell only" in capsys.readouterr().err


def test_generate_warns_about_unknown_prompt_words(corpus, tmp_path, capsys):
    assert cli.main(small(corpus, tmp_path, "--steps", "5", "--quiet")) == 0
    capsys.readouterr()
    assert cli.main(["generate", str(tmp_path / "lm.npz"), "--prompt", "The zebra",
                     "--num", "2", "--seed", "0"]) == 0
    captured = capsys.readouterr()
    assert captured.err.strip() == ("gpurnn generate: warning: not in the model's vocabulary "
                                    "of 18 tokens, read as UNKNOWN_TOKEN: 'zebra'")
    assert all(line.startswith("the zebra") for line in captured.out.splitlines())
    assert "UNKNOWN_TOKEN" not in captured.out
    assert cli.main(["generate", str(tmp_path / "lm.npz"), "--prompt", "The zebra",
                     "--num", "2", "--seed", "0", "--show-unknown"]) == 0
    assert capsys.readouterr().out.startswith("the UNKNOWN_TOKEN")


def test_csv_column_flag(tmp_path, capsys):
    rows = ["title,text"] + [f"x,\"{s} sees {o}.\"" for s in ("The cat", "A dog")
                             for o in ("the fish", "a ball")] * 30
    (tmp_path / "c.csv").write_text("\n".join(rows) + "\n")
    base = ["train", "--corpus", str(tmp_path / "c.csv"), "--hidden", "4", "--batch-size", "2",
            "--seq-len", "4", "--steps", "2", "--samples", "0", "--quiet", "--device", "cpu",
            "--checkpoint", str(tmp_path / "c.npz")]
    assert cli.main(base) == 2
    assert "CSV has no column 'body'" in capsys.readouterr().err
    assert cli.main(base + ["--csv-column", "text"]) == 0
    assert "fish" in load_checkpoint(tmp_path / "c.npz").vocab


def test_diagnose_a_trained_checkpoint_writes_json_and_png_by_default(corpus, tmp_path,
                                                                     monkeypatch, capsys):
    assert cli.main(small(corpus, tmp_path, "--steps", "5", "--quiet", "--cell", "gru")) == 0
    monkeypatch.chdir(tmp_path)
    assert cli.main(["diagnose", str(tmp_path / "lm.npz"), "--seq-len", "10",
                     "--batch-size", "3", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "GRU(18, 12, 18" in out and "training text kept in the checkpoint" in out
    data = json.loads((tmp_path / "lm-diagnose.json").read_text())
    assert data["step"] == 5 and data["batch"] == 3 and len(data["by_lag"]) == 10
    picture = tmp_path / "lm-diagnose.png"
    if picture.exists():  # with matplotlib; without it the numbers are written all the same
        assert picture.read_bytes()[:4] == b"\x89PNG"
    else:
        assert "no picture" in out
    assert cli.main(["diagnose", "--no-save", "--hidden", "3", "--seq-len", "4",
                     "--batch-size", "2", "--device", "cpu", "--json", "x.json"]) == 0
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "diagnose.json").exists()
    assert cli.main(["diagnose", "--hidden", "3", "--json", "missing/d.json"]) == 2
    assert "folder missing" in capsys.readouterr().err


def test_scripts_fail_in_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_lm.py"), "--corpus",
                           str(tmp_path / "reddit-comments-2015-08.csv")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"train_lm.py: error: corpus path {tmp_path / 'reddit-comments-2015-08.csv'} does "
        f"not exist"]


def test_what_a_run_leaves_in_the_current_folder_changes_no_test(capsys):
    """``gpurnn train`` with its defaults writes gpurnn-lm.npz and .jsonl into the current
    folder; tests run from that folder (or any other) still pass, each in a fresh folder of
    its own (tests/conftest.py)."""
    here = Path.cwd()
    assert here != ROOT and not list(here.iterdir())        # a fresh, empty folder
    assert cli.main(["train", "--steps", "1", "--hidden", "4", "--vocab-size", "50",
                     "--samples", "0", "--eval-every", "1", "--quiet", "--device", "cpu"]) == 0
    assert (here / "gpurnn-lm.npz").is_file() and (here / "gpurnn-lm.jsonl").is_file()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--basetemp", str(here / "pytest-tmp"), "-k", "bad_input",
                           str(ROOT / "tests" / "tools" / "test_cli.py")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout
    assert load_checkpoint(here / "gpurnn-lm.npz").step == 1   # left as it was


def test_what_the_documented_commands_write_is_ignored_by_git():
    """After ``gpurnn train``, ``plot``, ``diagnose``, ``selftest --dry-run`` or a docs build in
    the checkout, git status stays clean; the GPU results a real selftest writes do not."""
    import shutil

    from gpurnn.tools import selftest
    from gpurnn.training.config import TrainConfig
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    checkpoint = Path(TrainConfig().checkpoint)
    written = [checkpoint, checkpoint.with_suffix(".jsonl"), checkpoint.with_suffix(".png"),
               Path(f".{checkpoint.name}.lock"), Path(f".{checkpoint.name}.ab12cd34.tmp"),
               Path(f"{checkpoint.stem}-diagnose.json"), Path(f"{checkpoint.stem}-diagnose.png"),
               selftest.DRY_RUN_OUTPUT / "selftest.json", selftest.DRY_RUN_OUTPUT / "sweep.png",
               Path("site") / "index.html"]
    kept = [selftest.DEFAULT_OUTPUT / "selftest.json", selftest.DEFAULT_OUTPUT / "sweep.png"]

    def ignored(path):
        return subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", "--no-index",
                               str(path)], capture_output=True).returncode == 0
    assert [str(p) for p in written if not ignored(p)] == []
    assert [str(p) for p in kept if ignored(p)] == []


@pytest.mark.parametrize("command", ["train", "generate", "gradcheck", "plot", "diagnose",
                                     "bench", "selftest"])
def test_help_is_plain_text_and_names_what_device_takes(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for mark in ("``", ":mod:", ":func:", ":class:", "**"):
        assert mark not in text, (command, mark)
    assert "--device N" not in text
    if "--device" in text:
        assert "--device DEVICE" in text
        assert command == "selftest" or all(
            name in " ".join(text.split()) for name in ("auto", "cpu", "cuda:N", "cpu-strict"))


def test_plan_prints_the_launch_plan_for_a_named_gpu(capsys):
    assert cli.main(["plan", "--cell", "lstm", "--hidden", "512", "--batch", "8",
                     "--seq-len", "1024", "--gpu", "h100"]) == 0
    out = capsys.readouterr().out
    assert "NVIDIA H100" in out and "8 block(s) of 128 steps" in out
    assert "lstm_persistent_forward: grid 128 × block 256 cooperative" in out
    assert "registers/thread" in out and "memory:" in out
    assert cli.main(["plan", "--cell", "lstm", "--hidden", "2048", "--batch", "8",
                     "--seq-len", "64", "--gpu", "a100", "--persistent", "on"]) == 0
    out = capsys.readouterr().out
    assert "forward: step" in out and "shared memory per block" in out


def test_plan_refuses_an_unknown_gpu_in_one_line(capsys):
    assert cli.main(["plan", "--hidden", "8", "--seq-len", "4", "--gpu", "v100"]) == 2
    err = capsys.readouterr().err
    assert "unknown GPU 'v100'" in err and len(err.strip().splitlines()) == 1


def test_the_launch_plan_in_the_gpu_docs_is_what_gpurnn_plan_prints(capsys):
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "gpu.md").read_text(encoding="utf-8")
    command = "gpurnn plan --cell lstm --hidden 512 --batch 8 --seq-len 1024 --gpu h100"
    shown = text.split(f"$ {command}\n", 1)[1].split("```", 1)[0]
    assert cli.main(command.split()[1:]) == 0
    assert capsys.readouterr().out == shown


@pytest.mark.parametrize("cell", ["mingru", "paragru"])
def test_time_flag_trains_a_diagonal_cell_by_scan_or_loop_alike(cell, corpus, tmp_path, capsys):
    import gpurnn
    params = {}
    for time in ("scan", "loop"):
        folder = tmp_path / time
        folder.mkdir()
        assert cli.main(small(corpus, folder, "--steps", "4", "--cell", cell, "--time",
                              time, "--dtype", "float64", "--samples", "0", "--quiet")) == 0
        params[time] = gpurnn.load(folder / "lm.npz").model.params
        assert load_checkpoint(folder / "lm.npz").config["train"]["time"] == time
    for name, value in params["scan"].items():   # the same training, to rounding
        numpy.testing.assert_allclose(value, params["loop"][name], rtol=1e-9, atol=1e-12)
    with pytest.raises(SystemExit):
        cli.main(small(corpus, tmp_path, "--time", "sideways"))
    assert "argument --time: invalid choice: 'sideways'" in capsys.readouterr().err
