"""BPTT in a memory budget: the schedules, and gradients bit-identical to keeping everything."""
import tracemalloc

import numpy as np
import pytest
from conftest import host

import gpurnn
from gpurnn import Cell, reference
from gpurnn.engine.sweeps import recompute
from gpurnn.engine.models.factory import make_model
from gpurnn.engine.plan import Plan
from test_engine import assert_matches_reference, make_case, random_configs


# --------------------------------------------------------------------- the schedules

def test_closed_form_is_gruslys_programme():
    table = recompute.min_forwards_table(40, 6)
    for m in range(7):
        assert np.array_equal(recompute.min_forwards(np.arange(41), m), table[:, m]), m


def simulate(schedule):
    """Run the actions on bookkeeping only; returns (forwards, most checkpoints held)."""
    saved, cursor, caches, work = {0}, 0, set(), None
    backs, forwards, first, most = [], 0, 0, 0
    for action in recompute.actions(schedule):
        kind = action[0]
        if kind == "load":
            assert action[1] in saved
            cursor = action[1]
        elif kind == "advance":
            assert cursor == action[1]
            if action[1] == first:
                first += 1
            assert action[1] < first                    # first forwards in order
            forwards, cursor = forwards + 1, action[1] + 1
            if action[2] == "work":
                work = action[1]
            elif action[2] == "keep":
                caches.add(action[1])
        elif kind == "save":
            assert cursor == action[1]
            saved.add(action[1])
            most = max(most, len(saved) - 1)
        elif kind == "free":
            saved.remove(action[1])
        else:
            assert action[1] == work or action[1] in caches, action
            work = None if action[1] == work else work
            caches.discard(action[1])
            backs.append(action[1])
    assert backs == list(reversed(range(schedule.blocks)))
    return forwards, most


@pytest.mark.parametrize("blocks", [1, 2, 7, 23])
def test_actions_reverse_every_block_within_the_slots(blocks):
    for kept in range(blocks):
        for slots in range(5):
            schedule = recompute.Schedule(blocks, 1, kept, slots, "test", 0)
            forwards, most = simulate(schedule)
            assert most <= slots
            prefix = blocks - kept
            assert forwards == kept + recompute.min_forwards(prefix, slots)


def test_schedule_fits_the_budget_and_says_what_one_block_needs():
    footprint = recompute.Footprint(forward=1000, backward=500, checkpoint=10, fixed=100)
    keep = recompute.make_schedule(100, 10, None, footprint)
    assert keep.policy == "keep" and keep.forwards == 10
    fits = recompute.make_schedule(100, 10, footprint.need(10, 0), footprint)
    assert fits.policy == "fits" and fits.forwards == 10
    chen = recompute.make_schedule(100, 10, footprint.need(3, 7), footprint)
    assert (chen.policy, chen.kept, chen.slots) == ("checkpoints", 2, 7)
    assert chen.forwards == 10 + 7 and chen.bytes <= footprint.need(3, 7)
    nested = recompute.make_schedule(100, 10, footprint.need(1, 3), footprint)
    assert (nested.policy, nested.slots) == ("nested", 3)
    assert nested.forwards == recompute.min_forwards(10, 3) > 10 + 9
    every = recompute.make_schedule(100, 10, None, footprint, every=True)
    assert (every.policy, every.slots, every.forwards) == ("every", 9, 19)
    with pytest.raises(ValueError, match=r"below what one block of 10 steps needs: at least "
                                         r"1,600 bytes"):
        recompute.make_schedule(100, 10, 1599, footprint)


def test_plan_memory_fields():
    assert Plan(checkpoint_every="sqrt").checkpoint_every == "sqrt"
    assert Plan(memory_budget="1MB").replace(checkpoint_every=8) == Plan(checkpoint_every=8)
    assert Plan(checkpoint_every=8).replace(memory_budget=10) == Plan(memory_budget=10)
    for bad in (0, -3, 2.5, True, "often"):
        with pytest.raises(ValueError, match="checkpoint_every"):
            Plan(checkpoint_every=bad)
    with pytest.raises(ValueError, match="block_steps"):
        Plan(block_steps="sqrt")
    with pytest.raises(ValueError, match="not both"):
        Plan(memory_budget=10, checkpoint_every=3)
    assert recompute.block_steps(16, 10**5) == 64
    assert recompute.block_steps(3, 50, every="sqrt") == 8 == recompute.chen_interval(50)


# --------------------------------------------------------------------- exact gradients

def random_case(rng, cell, layers, embedding, dtype, truncate, masked, output, dense,
                device="cpu"):
    I, H, O = int(rng.integers(3, 8)), int(rng.integers(2, 6)), int(rng.integers(2, 6))
    B, T = int(rng.integers(1, 5)), int(rng.integers(20, 45))
    kw = dict(num_layers=layers, output=output, dtype=dtype, seed=int(rng.integers(1000)),
              bias=bool(rng.integers(2)), device=device)
    if embedding:
        kw["embedding_size"] = int(rng.integers(2, 5))
    model = make_model(cell, I, H, O, **kw)
    x = rng.normal(size=(B, T, I)) if dense else rng.integers(0, I, (B, T))
    y = rng.integers(0, O, (B, T)) if output == "softmax" else rng.normal(size=(B, T, O))
    mask = None
    if masked:
        lengths = rng.integers(0, T + 1, B)
        mask = (np.arange(T)[None] < lengths[:, None]).astype(float)
    model.plan = Plan(block_steps=int(rng.integers(1, 6)))
    return model, x, y, mask


def budgets(model, x, y, truncate, mask, h0):
    """Budgets that reach every policy: everything fits, a checkpoint at every boundary
    with some caches kept, nested checkpoints with 2, 1 and no slot."""
    fp = model.schedule(x, y, truncate=truncate, mask=mask, h0=h0).footprint
    n = -(-x.shape[1] // model.plan.block_steps)
    return [fp.need(n, 0), fp.need(1 + n // 3, n - 1 - n // 3), fp.need(1, n - 1),
            fp.need(1, 2), fp.need(1, 1), fp.need(1, 0)]


def assert_identical(result, expected, exact=True):
    """Equal to the last bit; or, with ``exact`` False (CuPy, whose scatter-adds for token
    ids and softmax targets add with atomics in no fixed order), to rounding."""
    def same(a, b):
        a, b = host(a), host(b)
        if exact:
            return np.array_equal(a, b)
        return np.allclose(a, b, rtol=1e-5 if a.dtype == np.float32 else 1e-12, atol=0)
    assert same(np.float64(result.loss), np.float64(expected.loss))
    assert set(result.grads) == set(expected.grads)
    for name in expected.grads:
        assert same(result.grads[name], expected.grads[name]), name
    pairs = zip(*(r.last_hidden if isinstance(r.last_hidden, tuple) else (r.last_hidden,)
                  for r in (result, expected)))
    for a, b in pairs:
        assert same(a, b)


CASES = [(cell, layers, embedding) for cell in ("elman", "gru", "lstm")
         for layers, embedding in ((1, False), (2, False), (2, True))]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("truncation", ["full", "window", "chunked"])
@pytest.mark.parametrize("cell,layers,embedding", CASES)
def test_budget_gradients_are_those_of_keeping_everything(cell, layers, embedding, truncation,
                                                          dtype, device):
    rng = np.random.default_rng(abs(hash((cell, layers, embedding, truncation, dtype))) % 2**32)
    masked = bool(rng.integers(2))
    output = "softmax" if embedding or rng.integers(2) else "tanh"
    dense = not embedding and bool(rng.integers(2))
    truncate = int(rng.integers(0, 6)) if truncation == "window" else None
    model, x, y, mask = random_case(rng, cell, layers, embedding, dtype, truncate, masked,
                                    output, dense, device)
    exact = device == "cpu"
    h0 = None
    if truncation == "chunked":                  # h0 from the previous chunk of the stream
        h0 = model.loss_and_grads(x, y, mask=mask, reduction="sum").last_hidden
    expected = model.loss_and_grads(x, y, truncate=truncate, mask=mask, h0=h0, reduction="sum")
    seen = set()
    for budget in budgets(model, x, y, truncate, mask, h0):
        schedule = model.schedule(x, y, truncate=truncate, mask=mask, h0=h0,
                                  memory_budget=budget)
        seen.add(schedule.policy)
        assert_identical(model.loss_and_grads(x, y, truncate=truncate, mask=mask, h0=h0,
                                              memory_budget=budget, reduction="sum"), expected, exact)
    assert {"fits", "checkpoints", "nested"} <= seen
    every = model.loss_and_grads(x, y, truncate=truncate, mask=mask, h0=h0,
                                 checkpoint_every=model.plan.block_steps, reduction="sum")
    assert_identical(every, expected, exact)


def test_budget_matches_the_reference_loops(rng):
    """Dense Elman with a window and a mask, in a budget, against the seeds' loops."""
    model = gpurnn.ElmanRNN(4, 5, 3, output="tanh", dtype="float64", seed=3)
    model.plan = Plan(block_steps=3)
    x, y = rng.normal(size=(3, 31, 4)), rng.normal(size=(3, 31, 3))
    mask = (np.arange(31)[None] < np.array([31, 17, 0])[:, None]).astype(float)
    budget = model.schedule(x, y, truncate=4, mask=mask).footprint.need(1, 2)
    result = model.loss_and_grads(x, y, truncate=4, mask=mask, memory_budget=budget, reduction="sum")
    params = {name: host(value) for name, value in model.params.items()}
    loss, grads, last = reference.batch_bptt(params, x, y, output="tanh", truncate=4,
                                             mask=mask)
    assert result.loss == pytest.approx(loss, rel=1e-12)
    for name in grads:
        np.testing.assert_allclose(host(result.grads[name]), grads[name], rtol=1e-10,
                                   atol=1e-12)
    np.testing.assert_allclose(host(result.last_hidden), last, rtol=1e-12)

    lstm = make_model("lstm", 4, 3, 3, num_layers=2, output="tanh", dtype="float64", seed=4)
    lstm.plan = Plan(block_steps=2)
    budget = lstm.schedule(x, y).footprint.need(1, 1)
    result = lstm.loss_and_grads(x, y, memory_budget=budget, reduction="sum")
    layer_params = [{n: host(lstm.params[gpurnn.engine.layers.stack.layer_name(n, l)])
                     for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
                    for l in range(2)]
    out = {"V": host(lstm.params["V"]), "c": host(lstm.params["c"])}
    loss, layer_grads, out_grads, _ = reference.gated.batch_bptt(
        "lstm", layer_params, out, x, y, output="tanh")
    assert result.loss == pytest.approx(loss, rel=1e-12)
    for l, g in enumerate(layer_grads):
        for n, value in g.items():
            np.testing.assert_allclose(host(result.grads[gpurnn.engine.layers.stack.layer_name(n, l)]),
                                       value, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("config", list(random_configs(16, seed=11)),
                         ids=lambda c: f"T{c['steps']}-k{c['truncate']}-B{c['batch']}")
def test_blocks_and_budgets_match_the_reference_loops(config, device):
    """Many short blocks, kept or recomputed, on the engine's random configurations."""
    config = dict(config)
    truncate = config.pop("truncate")
    rng = np.random.default_rng(config["steps"])
    model, x, y, mask, h0 = make_case(rng, device, **config)
    model.plan = Plan(block_steps=int(rng.integers(1, 5)))
    reduction = "mean" if config["steps"] % 2 else "sum"
    assert_matches_reference(model, x, y, mask, h0, truncate, reduction)
    fp = model.schedule(x, y, truncate=truncate, mask=mask, h0=h0).footprint
    model.plan = model.plan.replace(memory_budget=fp.need(1, 1))
    assert_matches_reference(model, x, y, mask, h0, truncate, reduction)


class ProtocolElman(Cell):
    """A user cell written through the per-step protocol only (token inputs, no bias)."""

    def step(self, params, x_t, s_prev):
        return np.tanh(params["weight_ih"].T[x_t] + s_prev @ params["weight_hh"].T)

    def vjp_state(self, params, x_t, s_prev, s_t, g):
        return (g * (1 - s_t ** 2)) @ params["weight_hh"]

    def vjp_params(self, params, x_t, s_prev, s_t, g):
        e = g * (1 - s_t ** 2)
        dUT = np.zeros(params["weight_ih"].shape[::-1])
        np.add.at(dUT, x_t, e)
        return {"weight_ih": dUT.T, "weight_hh": e.T @ s_prev}


@pytest.mark.parametrize("truncate", [None, 2])
def test_user_cell_in_a_budget(truncate, rng):
    model = gpurnn.ElmanRNN(6, 4, 5, bias=False, dtype="float64", seed=2)
    model.plan = Plan(block_steps=4)
    x, y = rng.integers(0, 6, (2, 27)), rng.integers(0, 5, (2, 27))
    builtin = model.loss_and_grads(x, y, truncate=truncate, reduction="sum")
    model.cell = ProtocolElman()
    expected = model.loss_and_grads(x, y, truncate=truncate, reduction="sum")
    budget = model.schedule(x, y, truncate=truncate).footprint.need(1, 1)
    assert_identical(model.loss_and_grads(x, y, truncate=truncate, memory_budget=budget, reduction="sum"),
                     expected)
    assert expected.loss == pytest.approx(builtin.loss, rel=1e-12)
    for name in expected.grads:
        np.testing.assert_allclose(expected.grads[name], builtin.grads[name], rtol=1e-10)


def test_every_k_policy_with_chen_interval(rng):
    model = make_model("gru", 5, 4, 5, dtype="float64", seed=1)
    x, y = rng.integers(0, 5, (2, 50)), rng.integers(0, 5, (2, 50))
    schedule = model.schedule(x, y, checkpoint_every="sqrt")     # ⌈√50⌉ = 8: 7 blocks
    assert (schedule.policy, schedule.block, schedule.slots, schedule.forwards) == (
        "every", 8, 6, 13)
    model.plan = Plan(block_steps=8)
    assert_identical(model.loss_and_grads(x, y, checkpoint_every="sqrt", reduction="sum"),
                     model.loss_and_grads(x, y, reduction="sum"))


def test_budget_below_one_block_is_refused_with_the_need(rng):
    model = make_model("lstm", 5, 8, 5, seed=0)
    x, y = rng.integers(0, 5, (4, 500)), rng.integers(0, 5, (4, 500))
    # the default grid shrinks its blocks down to one step before it refuses
    with pytest.raises(ValueError, match=r"memory_budget of 1,000 bytes is below what one "
                                         r"block of 1 step needs: at least [0-9,]+ bytes .*"
                                         r"the least that one step of BPTT can run in"):
        model.loss_and_grads(x, y, memory_budget=1000, reduction="sum")
    # a grid the user chose is kept, and the message says how to change it
    model.plan = Plan(block_steps=256)
    with pytest.raises(ValueError, match=r"below what one block of 256 steps needs: at least "
                                         r"[0-9,]+ bytes .*make blocks shorter"):
        model.loss_and_grads(x, y, memory_budget=1000, reduction="sum")
    with pytest.raises(ValueError, match="memory_budget must be a number of bytes"):
        model.loss_and_grads(x, y, memory_budget="lots", reduction="sum")


def test_a_budget_below_the_default_block_shrinks_the_blocks(rng):
    """The default grid's block (128 steps here) needs more than the budget: the planner
    halves it until one block fits, and the step keeps its budget with the gradients of
    keeping everything."""
    model = make_model("lstm", 8, 32, 4, output="identity", dtype="float64", seed=0)
    x, y = rng.normal(size=(8, 1500, 8)), rng.normal(size=(8, 1500, 4))
    default = recompute.block_steps(8, 1500)
    one_block = model.schedule(x, y, memory_budget=10**12).footprint.need(1, 0)
    budget = one_block // 3
    schedule = model.schedule(x, y, memory_budget=budget)
    assert schedule.block < default and schedule.bytes <= budget
    kept = model.loss_and_grads(x, y)
    peak, _ = traced_peak(model, x, y, budget)
    assert peak <= budget + SLACK
    fitted = model.loss_and_grads(x, y, memory_budget=budget)
    assert fitted.loss == pytest.approx(kept.loss, rel=1e-12)
    for name in kept.grads:
        np.testing.assert_allclose(fitted.grads[name], kept.grads[name], rtol=1e-12,
                                   atol=1e-14, err_msg=name)


def test_loss_in_a_budget_is_computed_block_by_block(rng):
    model = make_model("gru", 5, 4, 5, num_layers=2, dtype="float64", seed=1)
    x, y = rng.integers(0, 5, (3, 40)), rng.integers(0, 5, (3, 40))
    w = rng.uniform(size=(3, 40))
    expected, state = model.loss(x, y, weights=w, return_state=True, reduction="sum")
    model.plan = Plan(memory_budget="1MB", block_steps=6)
    loss, blocked_state = model.loss(x, y, weights=w, return_state=True, reduction="sum")
    assert loss == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(blocked_state, state, rtol=1e-12)


# --------------------------------------------------------------------- memory

def traced_peak(model, x, y, budget):
    """Peak bytes NumPy allocates during one step on a fresh model (the caller's arrays
    made beforehand), and the schedule."""
    schedule = model.schedule(x, y, memory_budget=budget)
    model.cell.workspace.clear()
    tracemalloc.start()
    try:
        model.loss_and_grads(x, y, memory_budget=budget, reduction="sum")
        return tracemalloc.get_traced_memory()[1], schedule
    finally:
        tracemalloc.stop()


# What a step may take beyond its budget: interpreter objects and rounding of estimates.
SLACK = 256 * 1024


@pytest.mark.parametrize("cell,layers,kib,time", [("elman", 1, 400, "auto"), ("lstm", 1, 800, "auto"),
                                                  ("gru", 2, 1000, "auto"), ("lru", 2, 800, "scan"),
                                                  ("paragru", 2, 1600, "scan")])
def test_step_stays_in_its_budget_flat_in_time(cell, layers, kib, time):
    """float32 peaks within the budget (the diagonal cells by scan, the ParaGRU's forward
    by Newton), and flat in the sequence's length."""
    rng = np.random.default_rng(5)
    model = make_model(cell, 8, 16, 8, num_layers=layers, output="identity", seed=0)
    model.plan = Plan(block_steps=24, time=time)
    budget = kib * 1024
    peaks = []
    for steps in (1000, 4000):
        x = rng.normal(size=(8, steps, 8)).astype(np.float32)
        y = rng.normal(size=(8, steps, 8)).astype(np.float32)
        peak, schedule = traced_peak(model, x, y, budget)
        assert schedule.policy in ("checkpoints", "nested")
        assert peak <= budget + SLACK, (steps, peak)
        peaks.append(peak)
    kept_everything, _ = traced_peak(model, x, y, None)
    assert kept_everything > 8 * budget                 # a budget that actually bites
    assert peaks[1] <= 1.25 * peaks[0] + SLACK          # flat in T, not 4× for 4× the steps


# What a step after a first one may take beyond its budget: the interpreter's objects (the
# views and dict entries of its checkpoints and caches), which no estimate counts.
INTERPRETER = 16 * 1024


@pytest.mark.parametrize("precision", ["bf16-mixed", "fp16-mixed"])
@pytest.mark.parametrize("cell,layers,kib", [("elman", 1, 200), ("lstm", 1, 600),
                                             ("gru", 2, 800)])
def test_16_bit_step_stays_in_its_budget(cell, layers, kib, precision):
    """On NumPy every operation of a 16-bit step computes on float32 copies of its 16-bit
    operands (MixedArray): the planner counts the largest of them, and the inputs are
    rounded to 16 bits block by block, so the step keeps its budget as a float32 one does."""
    rng = np.random.default_rng(5)
    model = make_model(cell, 8, 16, 8, num_layers=layers, output="identity", seed=0)
    model.plan = Plan(block_steps=24, precision=precision)
    budget = kib * 1024
    x = rng.normal(size=(8, 240, 8)).astype(np.float32)
    y = rng.normal(size=(8, 240, 8)).astype(np.float32)
    model.loss_and_grads(x, y, memory_budget=budget)    # a first step's one-off allocations
    peak, schedule = traced_peak(model, x, y, budget)
    assert schedule.policy in ("checkpoints", "nested") and schedule.bytes <= budget
    assert peak <= budget + INTERPRETER, (peak, budget)
    # a budget below one block, its float32 copies included, is still refused
    least = schedule.footprint.need(1, 0)
    with pytest.raises(ValueError, match=rf"below what one block of 24 steps needs: at least "
                                         rf"{least:,} bytes [^\n]*make blocks shorter"):
        model.loss_and_grads(x, y, memory_budget=least - 1, reduction="sum")


# --------------------------------------------------------------------- trainer and CLI

@pytest.mark.filterwarnings("ignore:the corpus is too small")
def test_trainer_in_a_budget_trains_the_same_weights(tmp_path):
    from gpurnn.tools.cli import build_parser, train_config_from_args
    from gpurnn.training.config import TrainConfig
    from gpurnn.training.train import Trainer

    args = build_parser().parse_args(["train", "--memory-budget", "256MB", "--truncate", "none",
                                      "--seq-len", "100000"])
    config = train_config_from_args(args)
    assert (config.memory_budget, config.truncate, config.seq_len) == ("256MB", None, 100000)
    with pytest.raises(ValueError, match="--memory-budget"):
        TrainConfig(memory_budget="lots")

    words = np.random.default_rng(0).choice(["the cat", "a dog", "sees", "eats", "fish"], 900)
    (tmp_path / "corpus.txt").write_text(" ".join(words) + ".\n", encoding="utf-8")
    weights = []
    for budget in (None, "700KB"):
        config = TrainConfig(corpus=str(tmp_path / "corpus.txt"), vocab_size=12, hidden=12,
                             batch_size=4, seq_len=300, steps=3, eval_every=3,
                             checkpoint_every=0, checkpoint=str(tmp_path / f"lm-{budget}.npz"),
                             samples=0, quiet=True, device="cpu", memory_budget=budget)
        trainer = Trainer(config)
        batch = next(iter(trainer.data.train))
        schedule = trainer.model.schedule(batch.inputs, batch.targets, mask=batch.mask)
        assert schedule.policy == ("keep" if budget is None else "checkpoints")
        trainer.run()
        weights.append({k: np.array(v) for k, v in trainer.model.params.items()})
    for name in weights[0]:
        assert np.array_equal(weights[0][name], weights[1][name]), name
