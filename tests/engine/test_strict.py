"""cpu-strict: CuPy's refusals on NumPy arrays, the transfer guard, and the time loops shown
to make no hidden synchronisation."""
import numpy as np
import pytest
from conftest import host

import gpurnn
from gpurnn import make_model
from gpurnn.engine.arrays import backend
from gpurnn.engine.sweeps import bptt
from gpurnn.engine.recurrences.cells import Cell
from gpurnn.engine.arrays.strict import TransferGuardError, transfer_guard

xp = backend.get_device("cpu-strict").xp


@pytest.fixture
def a():
    return backend.to_device(np.arange(6.0).reshape(2, 3), "cpu-strict")


# --- the rules copied from CuPy, each planted once ------------------------------------------
def test_implicit_conversion_to_numpy_raises_as_cupy(a):
    for convert in (np.asarray, np.array, np.ascontiguousarray,
                    lambda v: np.zeros(6).reshape(2, 3) + np.asarray(v)):
        with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not "
                                            "allowed"):
            convert(a)
    assert np.array_equal(backend.to_host(a), np.arange(6.0).reshape(2, 3))   # explicit: fine
    assert np.array_equal(a.get(), backend.to_host(a))


def test_host_arrays_mixed_into_device_work_raise(a):
    host_array = np.ones(3)
    for mix in (lambda: a + host_array, lambda: host_array * a, lambda: xp.tanh(host_array),
                lambda: np.maximum(a, host_array), lambda: xp.matmul(a.T, np.ones((2, 2))),
                lambda: xp.concatenate([a, np.ones((1, 3))]), lambda: a.dot(np.ones(3)),
                lambda: xp.tanh(a, out=np.empty((2, 3)))):
        with pytest.raises(TypeError, match="NumPy array|cupy.ndarray"):
            mix()
    # Scalars, NumPy scalars and 0-d device arrays are fine, as on CuPy.
    assert host(a * 2.0 + np.float64(1) - a.sum())[0, 0] == 1 - 15


def test_assigning_a_host_array_into_a_device_array_raises(a):
    with pytest.raises(ValueError, match="host_array is not allowed"):
        a[...] = np.ones((2, 3))
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray"):
        a.fill(np.ones(3))
    with pytest.raises(TypeError, match="Implicit conversion"):     # and the other way round
        np.zeros((2, 3))[...] = a
    a[0] = xp.asarray(np.zeros(3))                                    # moved first: fine
    a[1, 2] = 7.0
    assert host(a).tolist() == [[0, 0, 0], [3, 4, 7]]


def test_ufunc_methods_and_keywords_are_cupys(a):
    assert host(xp.add.reduce(a, axis=0)).tolist() == [3, 5, 7]
    assert host(np.multiply.accumulate(a, axis=1))[1, 2] == 60
    for method in (lambda: xp.maximum.reduce(a), lambda: np.minimum.accumulate(a),
                   lambda: xp.multiply.reduceat(a, xp.asarray(np.array([0])))):
        with pytest.raises(NotImplementedError, match="not supported by CuPy"):
            method()
    with pytest.raises(TypeError, match="does not take the keyword"):
        xp.tanh(a, where=a > 1)
    with pytest.raises(TypeError, match="mode"):
        xp.take(a, xp.asarray(np.array([1])), axis=0, mode="clip")
    assert host(xp.take(a, xp.asarray(np.array([1])), axis=0)).tolist() == [[3, 4, 5]]


def test_results_are_device_arrays_even_for_single_values(a):
    for value in (a.sum(), a[1, 2], np.sum(a), xp.vdot(a.ravel(), a.ravel()), a.max(axis=None)):
        assert backend.is_device_array(value) and value.shape == ()
    assert backend.get_array_module(a.sum()) is xp
    out = xp.empty_like(a)
    assert xp.tanh(a, out=out) is out
    before = a
    a += 1
    assert a is before                                               # in place, same object


# --- the transfer guard ------------------------------------------------------------------
def test_transfer_guard_levels(a):
    host_index = np.array([1, 0])
    implicit = [lambda: float(a.sum()), lambda: int(a[0, 0]), lambda: bool(a.any()),
                lambda: a.sum().item(), lambda: a.tolist(), lambda: a[host_index],
                lambda: a[a > 2], lambda: xp.flatnonzero(a), lambda: f"{a.sum():.1f}"]
    for make in implicit:
        make()                                                       # "allow": as CuPy does
        with transfer_guard("log") as guard:
            make()
        assert len(guard.events) == 1, guard.events
        assert "test_strict.py" in guard.events[0]                   # where the user did it
        with transfer_guard("disallow"), pytest.raises(TransferGuardError):
            make()
    with transfer_guard("disallow") as guard:                        # explicit: always allowed
        moved = backend.to_device(backend.to_host(a), "cpu-strict")
        a[xp.asarray(host_index)] = moved[:2]
    assert len(guard.explicit) == 3 and not guard.events
    with pytest.raises(ValueError, match="unknown transfer guard level"):
        with transfer_guard("warn"):
            pass


class PlantedCell(Cell):
    """A user's tanh cell whose step reads its state on the host: correct on NumPy, a
    TypeError on CuPy."""

    def __init__(self, leak):
        self.leak = leak

    def step(self, params, x_t, s_prev):
        if self.leak:
            s_prev = np.asarray(s_prev)                              # the planted fault
        return gpurnn.engine.arrays.backend.get_array_module(x_t).tanh(x_t + s_prev @ params["weight_hh"].T)


@pytest.mark.parametrize("leak", [False, True])
@pytest.mark.parametrize("device", ["cpu", "cpu-strict"])
def test_a_custom_cell_reading_its_state_on_the_host_fails_on_cpu_strict(device, leak, rng):
    W = backend.to_device(rng.normal(size=(4, 4)), device)
    x = backend.to_device(rng.normal(size=(5, 2, 4)), device)
    h0 = backend.to_device(np.zeros((2, 4)), device)
    if leak and device == "cpu-strict":
        with pytest.raises(TypeError, match="Implicit conversion to a NumPy array"):
            bptt.forward(PlantedCell(leak), {"weight_hh": W}, x, h0, 5)
        return
    _, states = bptt.forward(PlantedCell(leak), {"weight_hh": W}, x, h0, 5)
    assert host(states).shape == (5, 2, 4)


# --- the time loops make no hidden synchronisation --------------------------------------------
class UserTanh(Cell):
    """A user cell on the default per-step loops (the protocol's three methods only)."""

    def step(self, params, x_t, s_prev):
        xp_ = backend.get_array_module(s_prev)
        return xp_.tanh(x_t + s_prev @ params["weight_hh"].T)

    def vjp_state(self, params, x_t, s_prev, s_t, g):
        return (g * (1 - s_t ** 2)) @ params["weight_hh"]

    def vjp_params(self, params, x_t, s_prev, s_t, g):
        e = g * (1 - s_t ** 2)
        return {"weight_hh": e.reshape(-1, e.shape[-1]).T @ s_prev}


LOOP_MODELS = [("elman", 1, None, act) for act in ("tanh", "relu", "sigmoid", "identity")] + [
    ("gru", 1, None, "tanh"), ("lstm", 1, None, "tanh"), ("elman", 2, 3, "tanh"),
    ("gru", 2, 3, "tanh"), ("lstm", 3, None, "tanh")]


def _loop_case(cell, layers, embedding, activation, rng, steps=9, batch=3):
    model = make_model(cell, 6, 4, 5, num_layers=layers, embedding_size=embedding,
                       activation=activation, dtype="float64", device="cpu-strict", seed=3)
    x_tm = backend.to_device(rng.integers(0, 6, (steps, batch)), "cpu-strict")
    h0 = model._initial_state(None, batch)
    return model.cell, model.params, x_tm, h0


@pytest.mark.parametrize("truncate", [None, 2])
@pytest.mark.parametrize("cell, layers, embedding, activation", LOOP_MODELS)
def test_time_loops_make_no_hidden_synchronisation(cell, layers, embedding, activation,
                                                   truncate, rng):
    """Forward and backward sweeps, full and windowed, for every cell: under a guard that
    refuses every implicit transfer, and with no explicit one either."""
    cell, params, x_tm, h0 = _loop_case(cell, layers, embedding, activation, rng)
    with transfer_guard("disallow") as guard:
        xin, states = bptt.forward(cell, params, x_tm, h0, x_tm.shape[0])
    dstates = xp.asarray(rng.normal(size=states.shape))
    with transfer_guard("disallow") as guard_back:
        bptt.backward(cell, params, x_tm, xin, h0, states, dstates, truncate)
    assert guard.explicit == guard_back.explicit == []


@pytest.mark.parametrize("truncate", [None, 1])
def test_the_default_per_step_loops_make_no_hidden_synchronisation(truncate, rng):
    params = {"weight_hh": xp.asarray(rng.normal(size=(4, 4)))}
    x = xp.asarray(rng.normal(size=(6, 2, 4)))
    h0 = xp.asarray(np.zeros((2, 4)))
    with transfer_guard("disallow") as guard:
        xin, states = bptt.forward(UserTanh(), params, x, h0, 6)
        bptt.backward(UserTanh(), params, x, xin, h0, states, xp.ones_like(states), truncate)
    assert guard.explicit == []


class SyncingCell(UserTanh):
    """UserTanh with a per-step read of a device value, the fault the guard is for."""

    def step(self, params, x_t, s_prev):
        if float(abs(s_prev).max()) > 1e6:                           # the planted sync
            raise FloatingPointError("diverged")
        return super().step(params, x_t, s_prev)


def test_the_guard_catches_a_planted_per_step_synchronisation(rng):
    params = {"weight_hh": xp.asarray(rng.normal(size=(4, 4)))}
    x = xp.asarray(rng.normal(size=(6, 2, 4)))
    h0 = xp.asarray(np.zeros((2, 4)))
    with transfer_guard("disallow"), pytest.raises(TransferGuardError, match="float()"):
        bptt.forward(SyncingCell(), params, x, h0, 6)
    with transfer_guard("log") as guard:
        bptt.forward(SyncingCell(), params, x, h0, 6)
    assert len(guard.events) == 6                                    # one per step


@pytest.mark.parametrize("cell", ["elman", "gru", "lstm"])
def test_a_training_step_synchronises_a_fixed_number_of_times(cell, rng):
    """Validation, the loss and the gradient norm read values back; none of it grows with
    the number of steps, so none of it is in the time loops."""
    from gpurnn.training.optim import clip_grad_norm, make_optimizer

    counts = []
    for steps in (3, 12):
        model = make_model(cell, 7, 4, 7, num_layers=2, embedding_size=3, device="cpu-strict")
        optimizer = make_optimizer("adam")
        x = rng.integers(0, 7, (3, steps))
        mask = np.ones((3, steps))
        mask[1, steps // 2:] = 0
        with transfer_guard("log") as guard:
            out = model.loss_and_grads(x, x, truncate=2, mask=mask, reduction="sum")
            clip_grad_norm(out.grads, 1.0)
            optimizer.step(model.params, out.grads)
        counts.append(len(guard.events))
    assert counts[0] == counts[1] <= 7, guard.events


# --- the shim's side ---------------------------------------------------------------------------
def test_the_shim_knows_cpu_strict(rng):
    import copy
    import pickle

    device = backend.get_device(" CPU-Strict ")
    assert str(device) == "cpu-strict" and device.xp is xp and backend.get_device(device) is device
    with pytest.raises(ValueError, match="takes no index"):
        backend.get_device("cpu-strict:1")
    host_array = rng.normal(size=(2, 3))
    a = backend.to_device(host_array, device, dtype="float32")
    host_array[0, 0] = 99.0                                          # a copy, not a view
    assert backend.is_device_array(a) and not backend.is_device_array(host_array)
    assert backend.device_of(a) == device and a.dtype == np.float32 and host(a)[0, 0] != 99
    assert backend.to_device(a, device) is a                         # already there
    assert type(backend.to_device(a, "cpu")) is np.ndarray
    assert backend.get_array_module(None, 1.0, host_array, a) is xp
    for twin in (copy.deepcopy(a), pickle.loads(pickle.dumps(a))):
        assert backend.is_device_array(twin) and np.array_equal(host(twin), host(a))
    backend.synchronize(device)


def test_the_default_level_comes_from_the_environment(monkeypatch, a):
    import threading

    float(a.sum())                             # this thread's guards exist: level "allow"
    monkeypatch.setenv("GPURNN_TRANSFER_GUARD", "disallow")
    caught = []

    def work():                                # a new thread reads the default afresh
        try:
            float(a.sum())
        except TransferGuardError as error:
            caught.append(error)
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert len(caught) == 1
    float(a.sum())                             # and stay so
