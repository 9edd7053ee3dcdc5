"""Shared fixtures: every engine test body runs on NumPy, on cpu-strict (NumPy with CuPy's
rules, see gpurnn.engine.arrays.strict) and, where a GPU is present, on CuPy.

Every test runs in a fresh empty folder of its own (see :func:`in_a_fresh_folder`): what a
user's runs left in the checkout or in the folder pytest was started from (gpurnn-lm.npz,
results, lock files) cannot change a result, and whatever a test writes by a relative path
(the commands' defaults) lands there. Files of the checkout are found from ``__file__``."""
import os
from pathlib import Path

import numpy as np
import pytest

from gpurnn.engine.arrays import backend
from gpurnn.engine.models.parameters import layer_name

ROOT = Path(__file__).resolve().parents[1]   # the checkout: tests/ and gpurnn/ beside it
_NO_GPU = backend.cuda_unavailable_reason()

DEVICES = [
    "cpu",
    "cpu-strict",
    pytest.param("cuda", marks=pytest.mark.skipif(_NO_GPU is not None,
                                                  reason=f"no GPU: {_NO_GPU}")),
]


@pytest.fixture(autouse=True)
def in_a_fresh_folder(tmp_path_factory, monkeypatch):
    """The current folder of each test: new and empty, apart from ``tmp_path``. Child
    processes start there too and import this checkout's gpurnn (the checkout first on
    PYTHONPATH), installed or not."""
    folder = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(folder)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    return folder


@pytest.fixture(params=DEVICES)
def device(request):
    """The device a test body runs on: "cpu" and "cpu-strict" always, "cuda" where a GPU
    is usable."""
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def random_data(rng, I, O, batch, steps, *, tokens=True, output="softmax", masked=False):
    """Random inputs (token ids < I, or dense (batch, steps, I)), targets for ``output``
    (ids < O, or dense) and, with ``masked``, a right-padded mask whose first row is whole."""
    x = rng.integers(0, I, (batch, steps)) if tokens else rng.normal(size=(batch, steps, I))
    y = (rng.integers(0, O, (batch, steps)) if output == "softmax"
         else rng.normal(size=(batch, steps, O)))
    mask = None
    if masked:
        lengths = rng.integers(0, steps + 1, batch)
        lengths[0] = steps
        mask = (np.arange(steps)[None, :] < lengths[:, None]).astype(float)
    return x, y, mask


def split_params(model):
    """The model's parameters as the reference takes them: per-layer dicts and V, c, E."""
    layers = [{n: host(model.params[layer_name(n, l)]) for n in model._layer_names
               if layer_name(n, l) in model.params} for l in range(model.num_layers)]
    out = {k: host(model.params[k]) for k in ("V", "c", "E") if k in model.params}
    return layers, out


def per_layer(state, cell, layers):
    """A model-format state (h0 / last_hidden) as the reference's per-layer list."""
    if state is None:
        return None
    if cell == "lstm":
        h, c = (np.asarray(host(s)) for s in state)
        if layers == 1:
            h, c = h[None], c[None]
        return [(h[l], c[l]) for l in range(layers)]
    s = np.asarray(host(state))
    return [s] if layers == 1 else list(s)


def host(array):
    """A NumPy copy of a NumPy or CuPy array, for comparisons."""
    return backend.to_host(array)


def pytest_collection_modifyitems(session, config, items):
    """The CuPy contract test checks every call cpu-strict recorded in this session, so it
    runs after everything else."""
    last = [item for item in items if item.path.name == "test_cupy_contract.py"]
    items[:] = [item for item in items if item.path.name != "test_cupy_contract.py"] + last
