"""The ParaGRU (gpurnn.engine.recurrences.paragru) and Newton's method in time
(gpurnn.engine.sweeps.newton): its Jacobian against differences, Newton's iterations
against the loop, the cell against nn.GRU with diagonal recurrent blocks. The cell's
loop/Newton equality, gradients, masks, blocks and chunked state are in test_diagonal.py."""
import numpy as np
import pytest
from conftest import host

import gpurnn
from gpurnn import ParaGRU, Plan, make_model
from gpurnn.engine.sweeps import newton, scan


def layer(rng, hidden=6, inputs=5, scale=0.8, bias=True):
    """A ParaGRU layer's cell and float64 parameters, drawn at ``scale``."""
    model = ParaGRU(inputs, hidden, 3, bias=bias, dtype="float64", seed=1)
    params = {name: rng.normal(scale=scale, size=value.shape)
              for name, value in model.params.items() if name not in ("V", "c")}
    return model.cell, params


def loop_states(cell, params, pre, h0):
    states, h = [], h0
    for t in range(pre.shape[0]):
        h = cell.step(params, pre[t], h)
        states.append(h)
    return np.array(states)


def test_the_jacobian_is_the_derivative_of_the_step(rng):
    cell, params = layer(rng)
    pre = rng.normal(size=(4, 2, 18))
    hprev = rng.normal(size=(4, 2, 6))
    F, J, r, K = (np.array(a) for a in cell.linearise(params, pre, hprev))
    assert np.allclose(F, cell.step(params, pre, hprev), rtol=0, atol=1e-15)
    e = 1e-6
    plus = np.array(cell.linearise(params, pre, hprev + e)[0])
    minus = np.array(cell.linearise(params, pre, hprev - e)[0])
    assert np.abs((plus - minus) / (2 * e) - J).max() <= 1e-9       # ∂h_t/∂h_{t−1}, diagonal


@pytest.mark.parametrize("steps", [1, 2, 7, 300, 3000])
def test_newton_reaches_the_loop_to_rounding_in_a_few_iterations(steps, rng):
    """Quadratic convergence from the guess h0: a handful of iterations at any length, the
    same from nn.GRU's initialisation."""
    cell, params = layer(rng)
    pre = rng.normal(size=(steps, 3, 18))
    h0 = rng.normal(size=(3, 6))
    expected = loop_states(cell, params, pre, h0)
    states, iterations, change, converged = newton.solve(
        lambda hprev: cell.linearise(params, pre, hprev)[:2], h0, steps, bound=max(1, abs(h0).max()))
    assert converged and np.abs(states - expected).max() <= 1e-14
    # the weights' scale 0.8 gives |a| up to 2.4: the first linearisations overshoot
    assert iterations <= min(steps, 12)
    assert change <= 1e-14 or iterations == steps                  # T iterations: exact


def test_any_jacobian_reaches_the_loop_in_at_most_t_iterations(rng):
    """With J = 0 (a fixed-point sweep) iteration k makes the first k states exact: the
    T-iteration bound that holds whatever J a caller gives."""
    cell, params = layer(rng)
    steps = 12
    pre = rng.normal(size=(steps, 2, 18))
    h0 = rng.normal(size=(2, 6))
    expected = loop_states(cell, params, pre, h0)

    def no_jacobian(hprev):
        F = cell.linearise(params, pre, hprev)[0]
        return F, np.zeros_like(F)

    for k in range(1, steps + 1):
        states, iterations, _, converged = newton.solve(no_jacobian, h0, steps,
                                                        max_iterations=k, tol=1e-300)
        assert iterations == k and converged == (k == steps)
        assert np.abs(states[:k] - expected[:k]).max() <= 1e-15
    assert np.abs(states - expected).max() <= 1e-15


def test_a_tolerance_stops_early_and_the_iterations_are_recorded(rng):
    model = ParaGRU(5, 8, 5, dtype="float64", seed=2, newton_tol=1e-4)
    x = rng.integers(0, 5, (2, 200))
    model.plan = Plan(time="loop")
    exact = host(model.forward(x)[1])
    model.plan = Plan(time="scan", block_steps=100)
    loose = host(model.forward(x)[1])
    loose_counts = list(model.newton_log.iterations)
    assert loose_counts and max(loose_counts) <= 4 and model.newton_log.fallbacks == 0
    assert np.abs(loose - exact).max() <= 1e-4       # (quadratic: far inside, in fact)
    tight = ParaGRU(5, 8, 5, dtype="float64", seed=2)
    tight.plan = Plan(time="scan", block_steps=100)
    assert np.abs(host(tight.forward(x)[1]) - exact).max() <= 1e-13
    counts = list(tight.newton_log.iterations)
    assert counts and max(counts) <= 6
    assert min(counts) > max(loose_counts)
    capped = ParaGRU(5, 8, 5, dtype="float64", seed=2, newton_max_iterations=1)
    capped.plan = Plan(time="scan")
    assert np.abs(host(capped.forward(x)[1]) - exact).max() <= 1e-15  # by the loop
    assert list(capped.newton_log.iterations) == [1] and capped.newton_log.fallbacks == 1
    assert "1 fallbacks" in repr(capped.newton_log)
    capped.newton_log.clear()
    assert not capped.newton_log.iterations and capped.newton_log.fallbacks == 0


def test_auto_solves_by_newton_on_a_gpu_and_loops_on_the_host():
    cell = gpurnn.ParaGRUCell()
    cell.plan = Plan()
    assert not cell.uses_newton(10**4, np.zeros((1, 8, 64)))
    strict = gpurnn.get_device("cpu-strict").xp.zeros((1, 8, 64))
    assert cell.uses_newton(scan.AUTO_MIN_STEPS_GPU, strict)
    assert not cell.uses_newton(scan.AUTO_MIN_STEPS_GPU - 1, strict)
    cell.plan = Plan(time="scan")
    assert cell.uses_newton(2, np.zeros((1, 8, 64))) and not cell.uses_newton(1, np.zeros(1))


def test_the_paragru_is_a_gru_with_diagonal_recurrent_blocks(rng):
    """nn.GRU with weight_hh = [diag(a_r); diag(a_z); diag(a_n)]: the same states, and the
    same gradients of every parameter it has (weight_hh's diagonals)."""
    torch = pytest.importorskip("torch")
    I, H, B, T = 4, 5, 3, 30
    model = ParaGRU(I, H, 2, dtype="float64", seed=3, output="identity")
    model.plan = Plan(time="scan")
    x = rng.normal(size=(B, T, I))
    y = rng.normal(size=(B, T, 2))
    result = model.loss_and_grads(x, y, reduction="sum")
    gru = torch.nn.GRU(I, H, batch_first=True, dtype=torch.float64)
    linear = torch.nn.Linear(H, 2, dtype=torch.float64)
    p = {name: torch.tensor(host(value)) for name, value in model.params.items()}
    with torch.no_grad():
        gru.weight_ih_l0.copy_(p["weight_ih"])
        gru.bias_ih_l0.copy_(p["bias_ih"])
        gru.bias_hh_l0.copy_(p["bias_hh"])
        gru.weight_hh_l0.copy_(torch.cat([torch.diag(a) for a in p["weight_hh"].split(H)]))
        linear.weight.copy_(p["V"])
        linear.bias.copy_(p["c"])
    out, last = gru(torch.tensor(x))
    loss = 0.5 * ((linear(out) - torch.tensor(y)) ** 2).sum()
    loss.backward()
    assert abs(result.loss - loss.item()) <= 1e-12 * abs(loss.item())
    np.testing.assert_allclose(host(result.last_hidden), last[0].detach().numpy(), rtol=1e-12)
    diagonal = torch.cat([torch.diagonal(g) for g in gru.weight_hh_l0.grad.split(H)])
    for name, expected in (("weight_ih", gru.weight_ih_l0.grad), ("bias_ih", gru.bias_ih_l0.grad),
                           ("bias_hh", gru.bias_hh_l0.grad), ("weight_hh", diagonal)):
        np.testing.assert_allclose(host(result.grads[name]), expected.numpy(), rtol=1e-11,
                                   atol=1e-13, err_msg=name)


def test_parameters_config_and_refusals():
    model = make_model("paragru", 7, 4, 5, num_layers=2, newton_tol=1e-6)
    assert set(model.params) == {"weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_ih_l1",
                                 "weight_hh_l1", "bias_ih_l1", "bias_hh_l1", "V", "c"}
    assert model.params["weight_hh"].shape == (12,) and model.params["weight_ih_l1"].shape == (12, 4)
    assert np.abs(host(model.params["weight_hh"])).max() <= 0.5      # nn.GRU's ±1/√H
    assert gpurnn.model_spec(model)["newton_tol"] == 1e-6
    assert set(ParaGRU(7, 4, 5, bias=False).params) == {"weight_ih", "weight_hh", "V"}
    for kw, message in ((dict(dropout_state=0.2), "diagonal"), (dict(weight_drop=0.2), "diagonal"),
                        (dict(newton_tol=0), "newton_tol"),
                        (dict(newton_max_iterations=0), "newton_max_iterations")):
        with pytest.raises(ValueError, match=message):
            make_model("paragru", 6, 4, 5, **kw)
    with pytest.raises(ValueError, match="--newton-tol"):
        gpurnn.TrainConfig(cell="gru", newton_tol=1e-6).validate()


def test_a_long_block_is_solved_in_pieces_each_from_the_last_state(monkeypatch, rng):
    """model.forward runs a sequence as one block: Newton takes it NEWTON_STEPS at a time
    (5 pieces here, the last one short), equal to the loop, and a piece that does not
    converge runs by the loop on its own."""
    from gpurnn.engine.recurrences import paragru
    monkeypatch.setattr(paragru, "NEWTON_STEPS", 7)
    model = ParaGRU(5, 6, 5, dtype="float64", seed=4)
    x = rng.integers(0, 5, (3, 30))
    model.plan = Plan(time="loop")
    exact = host(model.forward(x)[1])
    model.plan = Plan(time="scan")
    assert np.abs(host(model.forward(x)[1]) - exact).max() <= 1e-14
    assert len(model.newton_log.iterations) == 5 and model.newton_log.fallbacks == 0
    capped = ParaGRU(5, 6, 5, dtype="float64", seed=4, newton_max_iterations=3)
    capped.plan = Plan(time="scan")
    assert np.abs(host(capped.forward(x)[1]) - exact).max() <= 1e-14
    log = capped.newton_log
    assert len(log.iterations) == 5 and log.fallbacks == 4          # the 2-step piece converges


def test_an_overflowed_guess_is_never_converged_and_the_bound_prevents_it():
    """float32, weights of scale 0.8 and h0 ~ N(0, 1) at T = 3000: the first linearisation
    overflows to inf. Without ``bound`` the solve must not call that converged (its change
    is inf, and so is the largest state it would be measured against); with the states'
    bound every guess stays finite and Newton reaches the loop."""
    rng = np.random.default_rng(1)
    cell, params = layer(rng)
    steps = 3000
    pre = rng.normal(size=(steps, 3, 18)).astype(np.float32)
    h0 = rng.normal(size=(3, 6)).astype(np.float32)
    params = {name: value.astype(np.float32) for name, value in params.items()}
    expected = loop_states(cell, params, pre, h0)

    def linearise(hprev):
        return cell.linearise(params, pre, hprev)[:2]

    with np.errstate(all="ignore"):
        free = newton.solve(linearise, h0, steps, max_iterations=20)
    assert not np.isfinite(free.states).all() and not free.converged
    bounded = newton.solve(linearise, h0, steps, max_iterations=20,
                           bound=max(1.0, float(np.abs(h0).max())))
    assert bounded.converged and np.abs(bounded.states - expected).max() <= 1e-6
