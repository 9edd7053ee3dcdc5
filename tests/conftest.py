"""Shared fixtures: every engine test body runs on NumPy, on cpu-strict (NumPy with CuPy's
rules, see gpurnn.engine.strict) and, where a GPU is present, on CuPy."""
import numpy as np
import pytest

from gpurnn.engine import backend

_NO_GPU = backend.cuda_unavailable_reason()

DEVICES = [
    "cpu",
    "cpu-strict",
    pytest.param("cuda", marks=pytest.mark.skipif(_NO_GPU is not None,
                                                  reason=f"no GPU: {_NO_GPU}")),
]


@pytest.fixture(params=DEVICES)
def device(request):
    """The device a test body runs on: "cpu" and "cpu-strict" always, "cuda" where a GPU
    is usable."""
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def host(array):
    """A NumPy copy of a NumPy or CuPy array, for comparisons."""
    return backend.to_host(array)


def pytest_collection_modifyitems(session, config, items):
    """The CuPy contract test checks every call cpu-strict recorded in this session, so it
    runs after everything else."""
    last = [item for item in items if item.path.name == "test_cupy_contract.py"]
    items[:] = [item for item in items if item.path.name != "test_cupy_contract.py"] + last
