"""Bad input gets a ValueError/TypeError that names the argument and what was expected."""
import numpy as np
import pytest

from gpurnn import ElmanRNN, LinearRNN

from gpurnn.engine.arrays import backend

X = np.array([[0, 1, 2], [3, 4, 0]])


@pytest.fixture
def lm():
    return ElmanRNN(5, 4, 5, dtype="float64")


@pytest.fixture
def regressor():
    return ElmanRNN(3, 4, 2, output="identity", dtype="float64")


@pytest.mark.parametrize("inputs, error, words", [
    ([[0, 5, 1]], ValueError, "token ids in [0, 5)"),
    ([[0, -1, 1]], ValueError, "token ids in [0, 5)"),
    ([[0.0, 1.0, 2.0]], TypeError, "must be integers"),
    ([[True, False]], TypeError, "booleans"),
    ([0, 1, 2], ValueError, "rank 2"),
    (np.zeros((1, 2, 3, 4)), ValueError, "rank 2"),
    (np.zeros((0, 3), dtype=int), ValueError, "at least one"),
    (np.zeros((2, 3, 4)), ValueError, "input_size=5"),
    (np.full((1, 2, 5), np.nan), ValueError, "NaN or Inf"),
    ("abc", TypeError, "inputs"),
])
def test_bad_inputs(lm, inputs, error, words):
    with pytest.raises(error, match="inputs") as info:
        lm.loss_and_grads(inputs, [[0, 1, 2]], reduction="sum")
    assert words in str(info.value)


@pytest.mark.parametrize("targets, error, words", [
    ([[0, 1, 5], [0, 0, 0]], ValueError, "class ids in [0, 5)"),
    ([[0, 1], [0, 0]], ValueError, "shape (batch, time) = (2, 3)"),
    ([[0.0, 1.0, 2.0], [0.0, 0.0, 0.0]], TypeError, "integer class ids"),
])
def test_bad_class_targets(lm, targets, error, words):
    with pytest.raises(error, match="targets") as info:
        lm.loss_and_grads(X, targets, reduction="sum")
    assert words in str(info.value)


def test_bad_float_targets(regressor):
    x = np.zeros((2, 3, 3))
    with pytest.raises(ValueError, match=r"targets .*\(2, 3, 2\)"):
        regressor.loss_and_grads(x, np.zeros((2, 3)), reduction="sum")
    with pytest.raises(ValueError, match="targets contains NaN"):
        regressor.loss_and_grads(x, np.full((2, 3, 2), np.inf), reduction="sum")


@pytest.mark.parametrize("mask, words", [
    (np.ones((2, 2)), "shape (batch, time) = (2, 3)"),
    (np.array([[1, 0.5, 0], [1, 1, 1]]), "only 0 and 1"),
    (np.array([[1, 0, 1], [1, 1, 1]]), "right-padded"),
])
def test_bad_mask(lm, mask, words):
    with pytest.raises(ValueError, match="mask") as info:
        lm.loss_and_grads(X, X, mask=mask, reduction="sum")
    assert words in str(info.value)


@pytest.mark.parametrize("h0, error, words", [
    (np.zeros((2, 3)), ValueError, "shape (batch, hidden) = (2, 4)"),
    (np.zeros(4), ValueError, "shape (batch, hidden)"),
    (np.full((2, 4), np.nan), ValueError, "NaN or Inf"),
    (np.array([["a"] * 4] * 2), TypeError, "numbers"),
])
def test_bad_h0(lm, h0, error, words):
    with pytest.raises(error, match="h0") as info:
        lm.loss_and_grads(X, X, h0=h0, reduction="sum")
    assert words in str(info.value)


@pytest.mark.parametrize("truncate, error", [(-1, ValueError), (1.5, TypeError),
                                             (True, TypeError), ("2", TypeError)])
def test_bad_truncate(lm, truncate, error):
    with pytest.raises(error, match="truncate must be None or an int >= 0"):
        lm.loss_and_grads(X, X, truncate=truncate, reduction="sum")


def test_bad_reduction(lm):
    with pytest.raises(ValueError, match="reduction 'avg'; expected 'sum' or 'mean'"):
        lm.loss_and_grads(X, X, reduction="avg")


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(activation="softsign"), ValueError, "activation 'softsign'; expected one of tanh"),
    (dict(output="relu"), ValueError, "output 'relu'; expected one of softmax"),
    (dict(dtype="float16"), ValueError, "dtype float16 is not supported: parameters and "
                                         "arithmetic are float32 or float64; use dtype='float32'"),
    (dict(dtype="int32"), ValueError, "dtype"),
    (dict(device="tpu"), ValueError,
     "device 'tpu'; expected 'cpu', 'cuda', 'cuda:N', 'auto' or 'cpu-strict'"),
    (dict(device="cpu:1"), ValueError, "takes no index"),
    (dict(device=0), TypeError, "device must be a string"),
    (dict(bias=1), TypeError, "bias must be True or False"),
])
def test_bad_constructor_arguments(kwargs, error, words):
    with pytest.raises(error) as info:
        ElmanRNN(5, 4, 5, **kwargs)
    assert words in str(info.value)


@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_bad_sizes(size):
    with pytest.raises((ValueError, TypeError), match="hidden_size must be a positive int"):
        ElmanRNN(5, size, 5)


def test_parameter_assignment(lm):
    lm.W = np.eye(4)
    assert lm.params["weight_hh"].dtype == np.float64 and np.array_equal(lm.W, np.eye(4))
    with pytest.raises(ValueError, match=r"W \(weight_hh\) must have shape \(4, 4\), got \(3, 3\)"):
        lm.W = np.eye(3)
    with pytest.raises(ValueError, match=r"U \(weight_ih\) contains NaN"):
        lm.U = np.full((4, 5), np.nan)
    no_bias = ElmanRNN(5, 4, 5, bias=False)
    assert set(no_bias.params) == {"weight_ih", "weight_hh", "V"}
    with pytest.raises(AttributeError, match="bias=False"):
        no_bias.b = np.zeros(4)


def test_initialisation_is_the_tutorials(lm):
    big = ElmanRNN(400, 100, 300, seed=3)
    assert np.abs(big.U).max() <= 1 / np.sqrt(400) and np.abs(big.U).max() > 0.9 / np.sqrt(400)
    assert np.abs(big.W).max() <= 1 / np.sqrt(100) and np.abs(big.V).max() <= 1 / np.sqrt(100)
    assert not big.b.any() and not big.c.any()
    assert big.U.dtype == np.float32
    same = ElmanRNN(400, 100, 300, seed=3)
    assert np.array_equal(big.W, same.W)


def test_devices():
    assert backend.get_device("auto").kind in ("cpu", "cuda")
    assert str(backend.get_device("cpu")) == "cpu"
    if not backend.cuda_available():
        assert backend.get_device("auto").kind == "cpu"
        words = (r"device 'cuda' cannot be used: .*; use device 'cpu' \(--device cpu\), or "
                 r"install the CuPy wheel that matches the CUDA driver")
        with pytest.raises(RuntimeError, match=words):
            ElmanRNN(5, 4, 5, device="cuda")
        with pytest.raises(RuntimeError, match=words):
            backend.get_device("cuda:1")


def test_linear_rnn_bad_input():
    model = LinearRNN()
    with pytest.raises(ValueError, match=r"X must have shape \(samples, time\)"):
        model.loss_and_grads(np.zeros(3), np.zeros(3), reduction="sum")
    with pytest.raises(ValueError, match=r"targets must have shape \(samples,\) = \(2,\)"):
        model.loss_and_grads(np.zeros((2, 3)), np.zeros(3), reduction="sum")


# --- the execution plan -------------------------------------------------------------------

def test_plan_parses_byte_sizes_and_refuses_bad_values():
    from gpurnn.engine.plan import Plan, parse_bytes

    assert parse_bytes("64MB") == 64_000_000
    assert parse_bytes("1.5 GiB") == 3 * 2**29
    assert parse_bytes(4096) == 4096
    assert Plan(memory_budget="2KiB").memory_budget == 2048
    assert Plan().replace(kernels=None, memory_budget="1kb") == Plan(memory_budget=1000)
    for bad, error in [("64 parsecs", ValueError), (0, ValueError), ("-3MB", ValueError),
                       (True, TypeError), (1.5, TypeError)]:
        with pytest.raises(error, match="memory_budget"):
            parse_bytes(bad)
    with pytest.raises(ValueError, match="unknown kernels 'fast'"):
        Plan(kernels="fast")


def test_models_carry_a_plan_and_copies_keep_it():
    import gpurnn
    from gpurnn.engine.plan import Plan

    model = gpurnn.GRU(5, 4, 5)
    assert model.plan == Plan()
    model.plan = Plan(memory_budget="1MB")
    assert model.copy(dtype="float64").plan.memory_budget == 1_000_000
