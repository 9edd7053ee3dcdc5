"""The trainer, checkpoints, generation, evaluation and the data-parallel buffers on every
device: NumPy, cpu-strict (NumPy with CuPy's rules) and, where a GPU is present, CuPy."""
import numpy
import pytest
from conftest import host

from gpurnn.engine.arrays import backend
from gpurnn.training import distributed
from gpurnn.training.checkpoint import load_checkpoint
from gpurnn.training.config import TrainConfig
from gpurnn.training.generate import load_language_model, sample
from gpurnn.training.train import Trainer

import test_distributed as D
from test_distributed import mpiexec  # noqa: F401 - the fixture (skips without MPI)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    rng = numpy.random.default_rng(0)
    text = " ".join(f"{rng.choice(['The cat', 'A dog'])} {rng.choice(['sees', 'likes'])} "
                    f"{rng.choice(['the fish', 'a ball'])}." for _ in range(120))
    (folder / "corpus.txt").write_text(text)
    return folder / "corpus.txt"


def train(corpus, folder, device, **changes):
    values = dict(corpus=str(corpus), vocab_size=30, hidden=6, batch_size=3, seq_len=5,
                  steps=6, eval_every=3, checkpoint_every=2, samples=2, quiet=True,
                  device=device, dtype="float64", checkpoint=str(folder / "lm.npz"), clip=1.0)
    values.update(changes)
    return Trainer(TrainConfig(**values), comm=distributed.SingleProcess()).run()


@pytest.mark.parametrize("changes", [
    dict(cell="elman", optimizer="adam"),
    dict(cell="lstm", layers=2, optimizer="adagrad", mode="sentence", truncate=2),
    dict(cell="gru", optimizer="momentum", reduction="sum"),
], ids=["elman-stream", "lstm-sentence", "gru-sum"])
def test_training_resuming_and_sampling_agree_with_numpy(corpus, tmp_path, device, changes):
    """A run stopped and resumed on ``device`` ends where an uninterrupted NumPy run does
    (to the last bit on cpu-strict, which computes with NumPy), and samples alike. (No
    sign-based optimizer here: on CuPy, rounding-level gradients may change sign.)"""
    (tmp_path / "cpu").mkdir(), (tmp_path / "dev").mkdir()
    expected = train(corpus, tmp_path / "cpu", "cpu", **changes)
    train(corpus, tmp_path / "dev", device, **changes, steps=3)
    result = train(corpus, tmp_path / "dev", device, **changes, resume=True)
    a, b = load_checkpoint(tmp_path / "dev" / "lm.npz"), load_checkpoint(tmp_path / "cpu" /
                                                                          "lm.npz")
    exact = device != "cuda"
    for name, value in b.params.items():
        numpy.testing.assert_allclose(a.params[name], value, rtol=0 if exact else 1e-9,
                                      atol=0 if exact else 1e-12, err_msg=name)
    for slot, per_param in b.optimizer_state["slots"].items():
        for name, value in per_param.items():
            numpy.testing.assert_allclose(a.optimizer_state["slots"][slot][name], value,
                                          rtol=0 if exact else 1e-9, atol=0 if exact else 1e-12)
    if exact:
        assert result.valid_history == expected.valid_history
        assert result.samples == expected.samples
    lm = load_language_model(tmp_path / "dev" / "lm.npz", device=device)
    assert backend.device_of(lm.model.V) == backend.get_device(device)
    drawn = sample(lm.model, lm.vocab, num=3, seed=5, prompt="the cat")
    assert all(sentence.startswith("the cat") for sentence in drawn)
    if exact:
        cpu_lm = load_language_model(tmp_path / "cpu" / "lm.npz")
        assert drawn == sample(cpu_lm.model, cpu_lm.vocab, num=3, seed=5, prompt="the cat")


def test_data_parallel_buffers_on_the_device(device, rng):
    """FlatGradients (packing, zeroing, the extra slots) and the parameter hash on device
    arrays; the collective itself is the identity in one process."""
    params = {name: backend.to_device(rng.normal(size=shape), device)
              for name, shape in (("weight_hh", (3, 3)), ("bias_ih", (3,)))}
    flat = distributed.FlatGradients(params, extra=2)
    assert backend.device_of(flat.buffer) == backend.get_device(device)
    grads = {name: backend.to_device(rng.normal(size=value.shape), device)
             for name, value in params.items()}
    packed = flat.pack(grads)
    flat.set_extra([2.5, 7.0])
    distributed.SingleProcess().allreduce_(flat.buffer)
    assert flat.get_extra() == [2.5, 7.0]
    for name in grads:
        numpy.testing.assert_array_equal(host(packed[name]), host(grads[name]))
    flat.zero()
    assert not host(flat.values).any()
    on_cpu = {name: backend.to_host(value) for name, value in params.items()}
    assert distributed.params_digest(params) == distributed.params_digest(on_cpu)


def test_two_processes_on_cpu_strict_equal_one_with_twice_the_batch(mpiexec, tmp_path):
    """The data-parallel path short of NCCL on cpu-strict: two MPI ranks sum their
    gradients through host copies and end where one process with the global batch does."""
    D.write_corpus(tmp_path)
    (tmp_path / "two").mkdir(), (tmp_path / "one").mkdir()
    changes = dict(mode="stream", dtype="float64", optimizer="sgd", lr=0.5, steps=12)
    argv = D.GPURNN + D.flags(D.settings(tmp_path, **changes, device="cpu-strict",
                                         checkpoint=str(tmp_path / "two" / "lm.npz")))
    done = D.launch(mpiexec, argv, argv)
    assert done.returncode == 0, done.stderr
    a = load_checkpoint(tmp_path / "two" / "lm.npz")
    b = D.trained_alone(tmp_path, **changes, checkpoint=str(tmp_path / "one" / "lm.npz"))
    for name in b.params:
        numpy.testing.assert_allclose(a.params[name], b.params[name], rtol=1e-12,
                                      atol=1e-12 * numpy.abs(b.params[name]).max())
