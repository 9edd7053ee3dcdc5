"""gpurnn.save / gpurnn.load: every model, its optimizer, and files shared with the command."""
import importlib
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

import gpurnn
from gpurnn.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from gpurnn.engine.models.parameters import elman_aliases
from gpurnn.training.generate import load_language_model

from conftest import host

MODELS = {
    "elman": lambda d: gpurnn.ElmanRNN(7, 5, 7, device=d, dtype="float64", seed=1),
    "elman-relu-nobias": lambda d: gpurnn.ElmanRNN(7, 5, 7, activation="relu", bias=False,
                                                   device=d, dtype="float64"),
    "stacked-embedded": lambda d: gpurnn.StackedElmanRNN(7, 5, 7, num_layers=2,
                                                         embedding_size=3, device=d,
                                                         dtype="float64"),
    "gru": lambda d: gpurnn.GRU(7, 5, 7, num_layers=2, device=d, dtype="float64", seed=2),
    "lstm": lambda d: gpurnn.LSTM(7, 5, 7, embedding_size=4, device=d, dtype="float64"),
}


def _trained(make, device, optimizer):
    model = make(device)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 7, (3, 6))
    for _ in range(3):
        optimizer.step(model.params, model.loss_and_grads(x, np.roll(x, -1, 1)).grads)
    return model, x


@pytest.mark.parametrize("name", MODELS)
def test_round_trip_keeps_model_optimizer_and_outputs(name, device, tmp_path):
    model, x = _trained(MODELS[name], device, gpurnn.Adam(lr=0.01))
    optimizer = gpurnn.Adam(lr=0.01)
    optimizer.step(model.params, model.loss_and_grads(x, x).grads)
    path = gpurnn.save(tmp_path / "m.npz", model, optimizer, note="hello", table=np.arange(3))
    loaded = gpurnn.load(path, device=device)
    assert type(loaded.model) is type(model) and loaded.model.config == model.config
    assert loaded.step == 1 and loaded.vocab is None
    assert loaded.extra["note"] == "hello" and list(loaded.extra["table"]) == [0, 1, 2]
    for key, value in model.params.items():
        assert np.array_equal(host(loaded.model.params[key]), host(value)), key
    out, state = model(x)
    out2, state2 = loaded.model(x)
    assert np.array_equal(host(out), host(out2))
    # the optimizer continues exactly: one more step on both gives the same parameters
    grads = model.loss_and_grads(x, x).grads
    optimizer.step(model.params, grads)
    loaded.optimizer.step(loaded.model.params, loaded.model.loss_and_grads(x, x).grads)
    assert loaded.optimizer.t == optimizer.t == 2
    for key, value in model.params.items():
        assert np.array_equal(host(loaded.model.params[key]), host(value)), key


def test_linear_rnn_and_dtype_cast(tmp_path):
    model = gpurnn.LinearRNN(0.25, 1.5)
    loaded = gpurnn.load(gpurnn.save(tmp_path / "lin.npz", model), dtype="float32")
    assert isinstance(loaded.model, gpurnn.LinearRNN) and loaded.optimizer is None
    assert loaded.model.dtype == np.float32 and float(loaded.model.wRec) == 1.5


def _train_cli(tmp_path, name="lm.npz"):
    text = " ".join(["the cat sees the dog .", "a dog likes a ball ."] * 60)
    (tmp_path / "corpus.txt").write_text(text)
    checkpoint = tmp_path / name
    subprocess.run([sys.executable, "-m", "gpurnn", "train", "--corpus",
                    str(tmp_path / "corpus.txt"), "--vocab-size", "30", "--hidden", "8",
                    "--batch-size", "4", "--seq-len", "8", "--steps", "6", "--samples", "0",
                    "--device", "cpu", "--quiet", "--checkpoint", str(checkpoint)],
                   check=True, cwd=tmp_path, capture_output=True)
    return checkpoint


def test_load_reads_what_gpurnn_train_wrote_and_generate_reads_what_save_wrote(tmp_path):
    checkpoint = _train_cli(tmp_path)
    loaded = gpurnn.load(checkpoint)
    assert loaded.step == 6 and isinstance(loaded.optimizer, gpurnn.Optimizer)
    assert loaded.optimizer.t == 6 and loaded.config["train"]["hidden"] == 8
    assert "the" in loaded.vocab.to_list() and "hidden" in loaded.extra
    # the reverse: a file of gpurnn.save, with the vocabulary, samples in `gpurnn generate`
    mine = gpurnn.save(tmp_path / "mine.npz", loaded.model, vocab=loaded.vocab)
    lm = load_language_model(mine)
    assert lm.level == "word" and lm.vocab.to_list() == loaded.vocab.to_list()
    run = subprocess.run([sys.executable, "-m", "gpurnn", "generate", str(mine), "--num", "2",
                          "--seed", "1"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert len([line for line in run.stdout.splitlines() if line.strip()]) >= 2
    assert gpurnn.sample(lm.model, lm.vocab, num=2, seed=1) == \
        gpurnn.sample(loaded.model, loaded.vocab, num=2, seed=1)


def test_a_file_without_vocabulary_is_refused_by_generate(tmp_path):
    path = gpurnn.save(tmp_path / "m.npz", MODELS["elman"]("cpu"))
    with pytest.raises(CheckpointError, match="not a usable language-model checkpoint"):
        load_language_model(path)


def _rewrite(path, **changes):
    saved = load_checkpoint(path)
    fields = dict(params=saved.params, optimizer_state=saved.optimizer_state,
                  vocab=saved.vocab, config=saved.config, rng_state=saved.rng_state,
                  step=saved.step, extra=saved.extra)
    fields.update(changes)
    save_checkpoint(path, **fields)


def test_load_refuses_what_does_not_fit(tmp_path):
    model = MODELS["gru"]("cpu")
    path = gpurnn.save(tmp_path / "m.npz", model, gpurnn.Adam())
    params = dict(load_checkpoint(path).params)
    _rewrite(path, params={**params, "weight_hh": np.zeros((3, 3))})
    with pytest.raises(CheckpointError, match="weight_hh is missing or has the wrong shape"):
        gpurnn.load(path)
    _rewrite(path, params={**params, "stray": np.zeros(2)})
    with pytest.raises(CheckpointError, match="stray are not the model's"):
        gpurnn.load(path)
    _rewrite(path, params=params, config={"model": {**model_spec_of(model), "cell": "tree"}})
    with pytest.raises(CheckpointError, match="unknown cell 'tree'"):
        gpurnn.load(path)
    _rewrite(path, config={"model": model_spec_of(model)},
             optimizer_state={"name": "adam", "t": 1, "hyper": {"lr": -1.0}, "slots": {}})
    with pytest.raises(CheckpointError, match="optimizer state is not usable"):
        gpurnn.load(path)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a gpurnn checkpoint"):
        gpurnn.load(tmp_path / "junk.npz")


def model_spec_of(model):
    return gpurnn.model_spec(model)


def test_save_never_replaces_a_file_that_is_not_a_checkpoint(tmp_path):
    precious = tmp_path / "notes.npz"
    precious.write_text("my notes")
    with pytest.raises(FileExistsError, match="not a gpurnn checkpoint"):
        gpurnn.save(precious, MODELS["elman"]("cpu"))
    assert precious.read_text() == "my notes"
    first = gpurnn.save(tmp_path / "m.npz", MODELS["elman"]("cpu"))
    gpurnn.save(first, MODELS["lstm"]("cpu"))                   # a checkpoint is replaced
    assert isinstance(gpurnn.load(first).model, gpurnn.LSTM)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz", "notes.npz"]


def test_nan_is_never_saved(tmp_path):
    model = MODELS["elman"]("cpu")
    model.params["weight_hh"][0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        gpurnn.save(tmp_path / "m.npz", model)
    assert not (tmp_path / "m.npz").exists()
    with pytest.raises(TypeError, match="gpurnn optimizer"):
        gpurnn.save(tmp_path / "m.npz", MODELS["elman"]("cpu"), optimizer="adam")


def test_old_module_paths_warn_and_name_the_new_place():
    code = ("import warnings; warnings.simplefilter('error')\n"
            "try:\n    import gpurnn.optim\nexcept FutureWarning as w:\n    print(w)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert "gpurnn.optim moved to gpurnn.training.optim" in out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from gpurnn.optim import Adam
        old_generate = importlib.import_module("gpurnn.generate")
    assert Adam is gpurnn.Adam and old_generate.sample is gpurnn.sample
    assert gpurnn.training.optim.__spec__.name == "gpurnn.training.optim"
    with pytest.raises(ModuleNotFoundError, match="from gpurnn import TrainConfig, train"):
        importlib.import_module("gpurnn.train")
    assert callable(gpurnn.train) and callable(gpurnn.gradcheck)


def test_top_level_names_are_where_the_docs_say():
    from gpurnn import TrainConfig, train, sample, save, load, Vocabulary  # noqa: F401
    for name in ("SGD", "Momentum", "Adagrad", "RMSprop", "Adam", "Rprop"):
        assert issubclass(getattr(gpurnn, name), gpurnn.Optimizer)
    assert json.loads(json.dumps(gpurnn.__all__)) == list(gpurnn.__all__)
    assert all(hasattr(gpurnn, name) for name in gpurnn.__all__)


def test_a_version_1_checkpoint_loads_with_the_elman_names_moved(tmp_path, monkeypatch):
    from gpurnn.training import checkpoint
    model = gpurnn.StackedElmanRNN(6, 4, 6, num_layers=2, dtype="float64", seed=3)
    optimizer = gpurnn.Adam()
    optimizer.step(model.params, model.loss_and_grads([[1, 2, 3]], [[2, 3, 4]]).grads)
    old = {new: seed for seed, new in elman_aliases(2).items()}   # weight_ih_l1 -> U_l1

    def to_v1(arrays):
        return {old.get(name, name): value for name, value in arrays.items()}
    state = optimizer.state_dict()
    state["slots"] = {slot: to_v1(arrays) for slot, arrays in state["slots"].items()}
    monkeypatch.setattr(checkpoint, "FORMAT_VERSION", 1)
    save_checkpoint(tmp_path / "v1.npz", params=to_v1(model.params), optimizer_state=state,
                    vocab=[], config={"model": gpurnn.model_spec(model)}, rng_state=None,
                    step=1)
    monkeypatch.undo()
    loaded = gpurnn.load(tmp_path / "v1.npz")
    assert set(loaded.model.params) == set(model.params)
    assert np.array_equal(loaded.model.U_l1, model.params["weight_ih_l1"])
    assert set(loaded.optimizer.state_dict()["slots"]["m"]) == set(model.params)


def test_the_seeds_names_are_aliases_of_one_array():
    model = gpurnn.ElmanRNN(5, 3, 5)
    assert model.U is model.params["weight_ih"] and model.b is model.params["bias_ih"]
    model.W = np.eye(3)
    assert np.array_equal(model.params["weight_hh"], np.eye(3))
    stack = gpurnn.StackedElmanRNN(5, 3, 5, num_layers=2)
    assert stack.W_l1 is stack.params["weight_hh_l1"]
    with pytest.raises(AttributeError):
        gpurnn.GRU(5, 3, 5).U


def test_every_moved_module_path_imports_its_new_module():
    """Every old path in the table (0.1's flat modules, the engine before its rooms) gives the
    module at its new place, and the new place exists."""
    from gpurnn import _moved
    assert "gpurnn.engine.gated" in _moved.MOVED and "gpurnn.engine.kernels" in _moved.MOVED
    for old, new in _moved.MOVED.items():
        target = importlib.import_module(new)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            alias = importlib.import_module(old)
        public = [name for name in dir(target) if not name.startswith("_")][:3]
        assert all(getattr(alias, name) is getattr(target, name) for name in public), old
