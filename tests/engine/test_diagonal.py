"""minGRU, minLSTM, the real-diagonal LRU and the ParaGRU against plain loops written from
their papers, and the parallel scan over time (gpurnn.engine.sweeps.scan; the ParaGRU's
Newton iterations of scans) against the step-by-step loop."""
import numpy as np
import pytest
from conftest import host, random_data, split_params

import gpurnn
from gpurnn import LRU, MinGRU, MinLSTM, ParaGRU, Plan, gradcheck, make_model, model_spec
from gpurnn.engine.sweeps import bptt, scan
from gpurnn.engine.layers.stack import layer_name
from gpurnn.reference import diagonal as R

TIGHT = 1e-12
MODELS = {"mingru": MinGRU, "minlstm": MinLSTM, "lru": LRU, "paragru": ParaGRU}
CELLS = tuple(MODELS)
TIMES = ("loop", "scan")


def rel_error(actual, expected):
    actual, expected = host(actual), np.asarray(host(expected))
    return np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-300)


def make_case(rng, device, cell, *, time="scan", tokens=True, output="softmax", bias=True,
              layers=1, embedding=None, batch=3, steps=9, sizes=(6, 4, 5), masked=False,
              with_h0=False, scale=0.6, block_steps=None):
    I, H, O = sizes
    model = MODELS[cell](I, H, O, num_layers=layers, embedding_size=embedding, output=output,
                         bias=bias, dtype="float64", device=device, seed=int(rng.integers(99)))
    for name in model.params:
        if "nu_log" in name:                                         # λ in (0.3, 0.95)
            setattr(model, name, np.log(-np.log(rng.uniform(0.3, 0.95, H))))
        else:
            setattr(model, name, rng.normal(scale=scale, size=model.params[name].shape))
    model.plan = Plan(time=time, block_steps=block_steps)
    x, y, mask = random_data(rng, I, O, batch, steps, tokens=tokens, output=output,
                             masked=masked)
    h0 = None
    if with_h0:
        h0 = rng.normal(size=(batch, H) if layers == 1 else (layers, batch, H))
    return model, x, y, mask, h0


def reference(model, x, y, mask=None, h0=None, truncate=None):
    layers, out = split_params(model)
    if h0 is not None:
        h0 = [np.asarray(h0)] if model.num_layers == 1 else list(np.asarray(h0))
    return R.batch_bptt(model.cell_type, layers, out, x, y, output=model.output,
                        truncate=truncate, h0=h0, mask=mask)


def assert_matches_reference(model, x, y, mask=None, h0=None, truncate=None, tol=TIGHT):
    result = model.loss_and_grads(x, y, truncate=truncate, mask=mask, h0=h0, reduction="sum")
    loss, layer_grads, out_grads, last = reference(model, x, y, mask, h0, truncate)
    assert abs(result.loss - loss) <= tol * abs(loss)
    expected = dict(out_grads)
    for l, grads in enumerate(layer_grads):
        expected.update({layer_name(n, l): g for n, g in grads.items()})
    assert set(result.grads) == set(expected) == set(model.params)
    for name, value in expected.items():
        assert rel_error(result.grads[name], value) <= tol, name
    got = [result.last_hidden] if model.num_layers == 1 else list(result.last_hidden)
    for g, e in zip(got, last):
        assert rel_error(g, e) <= tol
    return result


def random_configs(count, seed=27):
    rng = np.random.default_rng(seed)
    for k in range(count):
        steps = int(rng.integers(1, 40))
        tokens = bool(rng.integers(2))
        yield dict(cell=CELLS[k % len(CELLS)], time=TIMES[(k // len(CELLS)) % 2], tokens=tokens,
                   output=str(rng.choice(["softmax", "identity", "sigmoid", "tanh"])),
                   bias=bool(rng.integers(2)), layers=int(rng.choice([1, 1, 2, 3])),
                   embedding=int(rng.integers(2, 5)) if tokens and rng.integers(2) else None,
                   batch=int(rng.integers(1, 5)), steps=steps, masked=bool(rng.integers(2)),
                   with_h0=bool(rng.integers(2)),
                   block_steps=[None, int(rng.integers(1, 12))][int(rng.integers(2))],
                   truncate=[None, None, int(rng.integers(0, steps + 3))][int(rng.integers(3))])


@pytest.mark.parametrize("config", list(random_configs(24)), ids=lambda c: (
    f"{c['cell']}-{c['time']}-L{c['layers']}-T{c['steps']}-blk{c['block_steps']}"
    f"-k{c['truncate']}{'-mask' if c['masked'] else ''}{'-h0' if c['with_h0'] else ''}"))
def test_engine_equals_reference_on_random_configs(config, device):
    """Loop and scan, blocks of every length (the carry crosses block borders), stacks,
    embeddings, masks, initial states, windowed truncation: all equal the plain loops."""
    config = dict(config)
    truncate = config.pop("truncate")
    rng = np.random.default_rng(config["steps"] * 31 + config["batch"])
    model, x, y, mask, h0 = make_case(rng, device, **config)
    assert_matches_reference(model, x, y, mask, h0, truncate)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers, embedding", [(1, None), (2, 3)])
def test_scan_equals_loop_to_rounding(cell, layers, embedding, device, rng):
    """float64, long enough for many scan levels and blocks: scan = loop ≤ 1e-12 (states,
    loss, every gradient), and the per-step stack path gives the same."""
    model, x, y, mask, h0 = make_case(rng, device, cell, layers=layers, embedding=embedding,
                                      steps=300, batch=2, masked=True, with_h0=True,
                                      block_steps=64)
    scanned = model.loss_and_grads(x, y, mask=mask, h0=h0, reduction="sum")
    model.plan = model.plan.replace(time="loop")
    looped = model.loss_and_grads(x, y, mask=mask, h0=h0, reduction="sum")
    assert scanned.loss == pytest.approx(looped.loss, rel=TIGHT)
    for name in looped.grads:
        assert rel_error(scanned.grads[name], looped.grads[name]) <= TIGHT, name
    assert rel_error(scanned.last_hidden, looped.last_hidden) <= TIGHT


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("output", ["softmax", "sigmoid"])
def test_gradients_match_central_differences(cell, output, device, rng):
    for time in TIMES:
        model, x, y, mask, h0 = make_case(rng, device, cell, time=time, output=output,
                                          layers=2, embedding=3, masked=True, with_h0=True,
                                          batch=2, steps=5, sizes=(5, 3, 3))
        result = gradcheck(model, x, y, mask=mask, h0=h0, max_checks=None)
        assert result.ok, result.table()
        assert set(result.errors) == set(model.params)


@pytest.mark.parametrize("cell", CELLS)
def test_dense_inputs_without_bias_match_central_differences(cell, device, rng):
    model, x, y, _, _ = make_case(rng, device, cell, tokens=False, output="identity",
                                  bias=False, batch=2, steps=6, sizes=(3, 3, 2))
    result = gradcheck(model, x, y, max_checks=None, reduction="mean")
    assert result.ok, result.table()


@pytest.mark.parametrize("cell", CELLS)
def test_chunked_state_continues_exactly(cell, device, rng):
    """A stream in chunks by scan: the states continue those of the whole sequence, each
    chunk's gradients are the reference's from the carried state."""
    model, x, y, _, _ = make_case(rng, device, cell, layers=2, batch=2, steps=24)
    whole = host(model.forward(x)[1])
    state = None
    for start in range(0, 24, 8):
        xs, ys = x[:, start:start + 8], y[:, start:start + 8]
        assert rel_error(model.forward(xs, h0=state)[1], whole[:, start:start + 8]) <= TIGHT
        state = assert_matches_reference(model, xs, ys, h0=None if state is None else
                                         host(state)).last_hidden
    assert rel_error(host(state)[-1], whole[:, -1]) <= TIGHT


@pytest.mark.parametrize("cell", CELLS)
def test_memory_budget_gives_the_same_gradients(cell, device, rng):
    model, x, y, _, _ = make_case(rng, device, cell, layers=2, batch=2, steps=64, sizes=(6, 8, 5))
    free = model.loss_and_grads(x, y, reduction="sum")
    schedule = model.schedule(x, y, memory_budget="40KB")
    assert schedule.forwards > schedule.blocks                       # it recomputes
    budget = model.loss_and_grads(x, y, reduction="sum", memory_budget="40KB")
    for name in free.grads:
        assert rel_error(budget.grads[name], free.grads[name]) <= TIGHT


def test_bidirectional_diagonal_stack_scan_equals_loop(device, rng):
    model = MinGRU(5, 3, 4, num_layers=2, bidirectional=True, dtype="float64", device=device)
    x, y = rng.integers(0, 5, (2, 70)), rng.integers(0, 4, (2, 70))
    mask = np.ones((2, 70))
    mask[1, 50:] = 0
    model.plan = Plan(time="scan")
    a = model.loss_and_grads(x, y, mask=mask, reduction="sum")
    model.plan = Plan(time="loop")
    b = model.loss_and_grads(x, y, mask=mask, reduction="sum")
    for name in a.grads:
        assert rel_error(a.grads[name], b.grads[name]) <= TIGHT


# --------------------------------------------------------------------- the scan itself

@pytest.mark.parametrize("method", scan.METHODS)
@pytest.mark.parametrize("steps", [1, 2, 3, 5, 8, 33, 256, 1000])
def test_scans_equal_the_loop_within_the_rounding_bound(method, steps, device, rng):
    """Forward and adjoint, constant and varying transitions, against the loop, within the
    bound of gpurnn.engine.sweeps.scan (which the tests also hold ≤ 1e-12 relative here)."""
    xp = gpurnn.get_device(device).xp
    a = xp.asarray(rng.uniform(-1, 1, (steps, 3, 4)))
    b = xp.asarray(rng.normal(size=(steps, 3, 4)))
    h0 = xp.asarray(rng.normal(size=(3, 4)))
    loop = scan.linear_loop(a, b, h0)
    got = scan.linear_scan(a, b, h0, method)
    bound = host(scan.rounding_bound(a, b, h0, np.finfo(np.float64).eps / 2))
    assert (np.abs(host(got) - host(loop)) <= bound).all()
    assert rel_error(got, loop) <= TIGHT
    carry = xp.asarray(rng.normal(size=(3, 4)))
    for c in (None, carry):
        G, before = scan.reverse_loop(a, b, c)
        G2, before2 = scan.reverse_scan(a, b, c, method)
        assert rel_error(G2, G) <= TIGHT and rel_error(before2, before) <= TIGHT
    lam = xp.asarray(rng.uniform(0.5, 1, 4))                         # constant, broadcast
    assert rel_error(scan.linear_scan(lam, b, h0, method), scan.linear_loop(lam, b, h0)) <= TIGHT


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 16])
@pytest.mark.parametrize("steps", [4, 7, 16, 17, 50, 300])
def test_chunked_scan_equals_the_loop_for_every_chunk(chunk, steps, device, rng):
    """The chunked scan with chunks of 1 … 16 steps (few and many chunks, with and without a
    tail), forward and adjoint, within the rounding bound."""
    xp = gpurnn.get_device(device).xp
    a = xp.asarray(rng.uniform(-1, 1, (steps, 2, 3)))
    b = xp.asarray(rng.normal(size=(steps, 2, 3)))
    h0 = xp.asarray(rng.normal(size=(2, 3)))
    loop = scan.linear_loop(a, b, h0)
    got = scan.linear_scan(a, b, h0, "chunked", chunk=chunk)
    assert (np.abs(host(got) - host(loop))
            <= host(scan.rounding_bound(a, b, h0, np.finfo(np.float64).eps / 2, chunk))).all()
    carry = xp.asarray(rng.normal(size=(2, 3)))
    G, before = scan.reverse_loop(a, b, carry)
    G2, before2 = scan.reverse_scan(a, b, carry, "chunked", chunk=chunk)
    assert rel_error(G2, G) <= TIGHT and rel_error(before2, before) <= TIGHT


def test_scan_depth_is_logarithmic():
    assert scan.scan_depth(1) == 0 and scan.scan_depth(2) == 2
    assert scan.scan_depth(10**4) == 2 * 14 and scan.scan_depth(10**4, "hillis_steele") == 14
    # chunked: 2 (C − 1) + Blelloch over the n chunks + 2 + the tail, C = 128 at T = 10^4
    n = (10**4 - 1) // 128
    assert scan.scan_depth(10**4, "chunked") == 2 * 127 + scan.scan_depth(n) + 2 + (10**4 - 1 - 128 * n)
    assert scan.default_method(np.zeros(1)) == "chunked"
    assert scan.default_method(gpurnn.get_device("cpu-strict").xp.zeros(1)) == "blelloch"


def test_sweep_block_hook_equals_the_per_step_sweep(rng):
    """The engine's whole-block hook and its per-step sweep give the same deltas and carry."""
    cell = gpurnn.MinLSTMCell()
    model = MinLSTM(4, 3, 2, dtype="float64")
    params = model.params
    x = rng.integers(0, 4, (20, 2))
    cell.plan = Plan(time="scan")
    xin, states = bptt.forward(cell, params, x, np.zeros((2, 3)), 20)
    back = cell.backward_stepper(params, xin, np.zeros((2, 3)), states)
    assert hasattr(back, "sweep_block")
    d = rng.normal(size=(20, 2, 3))
    carry = rng.normal(size=(2, 3))
    ws = gpurnn.engine.arrays.workspace.Workspace()
    fast, c1 = bptt._sweep_block(back, d, None, ws, 0, carry.copy())
    fast, c1 = host(fast).copy(), host(c1).copy()
    del back.sweep_block
    slow, c2 = bptt._sweep_block(back, d, None, gpurnn.engine.arrays.workspace.Workspace(), 0,
                                 carry.copy())
    assert rel_error(fast, slow) <= TIGHT and rel_error(c1, c2) <= TIGHT


def test_auto_picks_the_scan_for_long_blocks_only():
    like = np.zeros((1, 8, 64))
    assert not scan.uses_scan("auto", scan.AUTO_MIN_STEPS - 1, like)
    assert scan.uses_scan("auto", scan.AUTO_MIN_STEPS, like)
    assert not scan.uses_scan("auto", 10**4, np.zeros((1, 8, 4096)))
    assert scan.uses_scan("scan", 2, like) and not scan.uses_scan("loop", 10**4, like)
    with pytest.raises(ValueError, match="unknown time"):
        Plan(time="parallel")


# --------------------------------------------------------------------- models, factory

def test_parameter_names_shapes_and_initialisation():
    assert set(MinGRU(7, 4, 5).params) == {"weight_ih", "bias_ih", "V", "c"}
    assert MinGRU(7, 4, 5).params["weight_ih"].shape == (8, 7)
    m = MinLSTM(7, 4, 5, num_layers=2, embedding_size=3)
    assert m.params["weight_ih"].shape == (12, 3) and m.params["weight_ih_l1"].shape == (12, 4)
    lru = LRU(7, 16, 5, dtype="float64", r_min=0.5, r_max=0.9)
    assert set(lru.params) == {"weight_ih", "nu_log", "gamma_log", "V", "c"}
    lam = np.exp(-np.exp(host(lru.params["nu_log"])))
    assert ((lam >= 0.5 - 1e-9) & (lam <= 0.9 + 1e-9)).all()
    assert np.allclose(np.exp(host(lru.params["gamma_log"])), np.sqrt(1 - lam ** 2))


@pytest.mark.parametrize("cell", CELLS)
def test_make_model_and_spec_round_trip(cell):
    model = make_model(cell, 6, 4, 5, num_layers=2, embedding_size=3, dtype="float64", seed=2)
    assert type(model) is MODELS[cell] and model.cell_type == cell
    again = make_model(**model_spec(model), seed=2)
    for name in model.params:
        assert np.array_equal(host(model.params[name]), host(again.params[name]))


@pytest.mark.parametrize("kw, message", [
    (dict(dropout_state=0.2), "no recurrent weight"),
    (dict(weight_drop=0.2), "no recurrent weight"),
    (dict(layer_norm=True), "layer_norm"),
    (dict(proj_size=2), "proj_size"),
])
def test_refusals(kw, message):
    with pytest.raises(ValueError, match=message):
        make_model("mingru", 6, 4, 5, **kw)


def test_other_dropout_kinds_train_and_check(rng):
    model = MinGRU(6, 4, 5, num_layers=2, embedding_size=3, dropout=0.3, dropout_output=0.2,
                   dtype="float64", seed=1)
    x, y = rng.integers(0, 6, (2, 7)), rng.integers(0, 5, (2, 7))
    with model.fixed_dropout():
        result = gradcheck(model, x, y, max_checks=None)
    assert result.ok, result.table()
