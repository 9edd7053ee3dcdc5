"""Dropout of every kind on the engine: rate 0 and evaluation mode change nothing, locked
masks are constant over time, the gradients are exact for the masks drawn (central
differences, and PyTorch autograd fed the same masks), blocks and recomputation reuse the
masks of their call, and the stream is reproducible."""
import numpy as np
import pytest

import gpurnn
from gpurnn.engine.layers.dropout import DROPOUT_KINDS, DropoutRates, DropoutStream
from gpurnn.engine.models.parameters import layer_name

ALL = dict(dropout=0.3, dropout_input=0.2, dropout_output=0.25, dropout_state=0.2,
           weight_drop=0.3, dropout_embedding=0.15)
CELLS = ("elman", "gru", "lstm")


def make(cell, *, layers=2, embedding=4, dtype="float64", seed=3, **rates):
    return gpurnn.make_model(cell, 7, 5, 7, num_layers=layers, embedding_size=embedding,
                             dtype=dtype, seed=seed, **rates)


def tokens(rng, batch=3, steps=6):
    return rng.integers(0, 7, (batch, steps)), rng.integers(0, 7, (batch, steps))


def same(a, b, loss_rel=0.0):
    assert a.loss == pytest.approx(b.loss, rel=loss_rel, abs=0)
    assert set(a.grads) == set(b.grads)
    for name in a.grads:
        assert np.array_equal(a.grads[name], b.grads[name]), name


def rel_error(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


@pytest.mark.parametrize("cell", CELLS)
def test_rate_zero_and_evaluation_mode_change_nothing(cell, rng):
    x, y = tokens(rng)
    base = make(cell)
    zero = make(cell, **dict.fromkeys(DROPOUT_KINDS, 0.0))
    dropped = make(cell, **ALL).eval()
    reference = base.loss_and_grads(x, y)
    same(zero.loss_and_grads(x, y), reference)
    same(dropped.loss_and_grads(x, y), reference)
    assert dropped.dropout_stream.draws == 0                  # evaluation draws nothing
    assert dropped.loss(x, y) == base.loss(x, y)
    assert np.array_equal(dropped.forward(x)[0], base.forward(x)[0])
    assert dropped.train().loss_and_grads(x, y).loss != reference.loss


def test_a_one_layer_elman_model_with_dropout_is_a_stack(rng):
    model = gpurnn.make_model("elman", 7, 5, 7, dropout_output=0.5)
    assert type(model) is gpurnn.StackedElmanRNN
    assert gpurnn.make_model(**gpurnn.model_spec(model)).dropout == model.dropout
    assert type(gpurnn.make_model("elman", 7, 5, 7, dropout_output=0.0)) is gpurnn.ElmanRNN


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("kind", DROPOUT_KINDS)
def test_gradients_are_exact_for_the_masks_drawn(cell, kind, rng):
    x, y = tokens(rng)
    model = make(cell, **{kind: 0.4})
    result = gpurnn.gradcheck(model, x, y, max_checks=12)
    assert result.ok, result.table()


@pytest.mark.parametrize("cell", CELLS)
def test_all_kinds_together_with_a_ragged_mask_pass_gradcheck(cell, rng):
    x, y = tokens(rng)
    mask = np.ones(x.shape)
    mask[0, 4:] = mask[2, 2:] = 0
    result = gpurnn.gradcheck(make(cell, **ALL), x, y, mask=mask, max_checks=12)
    assert result.ok, result.table()


@pytest.mark.parametrize("options", [dict(cell="lstm", proj_size=3),
                                     dict(cell="gru", layer_norm=True),
                                     dict(cell="lstm", layer_norm=True),
                                     dict(cell="gru", bidirectional=True),
                                     dict(cell="lstm", bidirectional=True, proj_size=3)],
                         ids=["lstm-proj", "gru-ln", "lstm-ln", "gru-bi", "lstm-bi-proj"])
def test_every_kind_on_projections_layer_norm_and_bidirectional_stacks(options, rng):
    x, y = tokens(rng)
    mask = np.ones(x.shape)
    mask[1, 3:] = 0
    options = dict(options)
    model = make(options.pop("cell"), **options, **ALL)
    for name, value in model.params.items():
        if "bias" in name:
            # away from 0: a dropped token's zero row and h0 = 0 at the shifts' initial 0
            # put layer normalisation at its singular point, where the loss is so curved
            # that central differences measure nothing (the derivative is exact but ~1e10)
            value[...] = rng.uniform(-0.5, 0.5, value.shape)
    result = gpurnn.gradcheck(model, x, y, mask=mask, max_checks=10, eps=1e-5)
    assert result.ok, result.table()
    plain = make(type(model).cell_type, **options)
    for name, value in model.params.items():
        plain.params[name][...] = value
    same(model.eval().loss_and_grads(x, y, mask=mask), plain.loss_and_grads(x, y, mask=mask))


def test_dense_inputs_take_input_dropout(rng):
    model = gpurnn.GRU(3, 5, 2, num_layers=2, output="identity", dtype="float64",
                       dropout_input=0.5, dropout_state=0.3)
    x, y = rng.normal(size=(2, 5, 3)), rng.normal(size=(2, 5, 2))
    assert gpurnn.gradcheck(model, x, y).ok


def test_the_output_mask_is_locked_over_time(rng):
    # identity output through V = I: the outputs are h_t ⊙ m, so out / h is the mask
    model = gpurnn.StackedElmanRNN(4, 5, 5, output="identity", dtype="float64",
                                   dropout_output=0.5, bias=False)
    model.V = np.eye(5)
    x = rng.normal(size=(3, 8, 4))
    with model.fixed_dropout():
        out, hidden = model.forward(x)
    ratio = out / hidden
    assert set(np.unique(np.round(ratio, 12))) == {0.0, 2.0}
    assert np.array_equal(ratio, np.broadcast_to(ratio[:, :1], ratio.shape))  # every step
    assert not np.array_equal(ratio[0], ratio[1])               # per sequence


def masks_of(model):
    return model.cell.masks


def test_locked_masks_have_no_time_axis_and_between_masks_vary_per_step(rng):
    x, y = tokens(rng, batch=4, steps=9)
    model = make("lstm", **ALL)
    model.loss_and_grads(x, y)
    masks = masks_of(model)
    assert masks.input.shape == (4, 4) and masks.output.shape == (4, 5)
    assert [m.shape for m in masks.state] == [(4, 5), (4, 5)]
    assert masks.between[0].shape == (9, 4, 5)
    assert not all(np.array_equal(masks.between[0][0], step) for step in masks.between[0])
    assert masks.embedding.shape == (7,)
    assert set(masks.weight) == {"weight_hh", "weight_hh_l1"}
    for mask, rate in ((masks.input, 0.2), (masks.between[0], 0.3), (masks.weight["weight_hh"], 0.3)):
        assert set(np.unique(mask)) <= {0.0, 1.0 / (1.0 - rate)}


@pytest.mark.parametrize("cell", CELLS)
def test_blocks_and_recomputation_reuse_the_masks_of_the_call(cell, rng):
    x, y = tokens(rng, batch=2, steps=11)
    model = make(cell, **ALL)
    with model.fixed_dropout():
        whole = model.loss_and_grads(x, y)
        loss = model.loss(x, y)
        truncated = model.loss_and_grads(x, y, truncate=30)        # k >= T − 1: full BPTT
        model.plan = model.plan.replace(block_steps=3)              # a grid of 3-step blocks
        grid = model.loss_and_grads(x, y)
        recomputed = model.loss_and_grads(x, y, checkpoint_every=3)
        budget = model.loss_and_grads(x, y, memory_budget="60KB")
    assert budget.loss == grid.loss and loss == pytest.approx(whole.loss, rel=1e-13)
    same(truncated, whole)
    same(recomputed, grid)                   # recomputation repeats the same operations
    same(budget, grid)
    for name, value in grid.grads.items():   # another grid: the same sums, in other order
        assert rel_error(value, whole.grads[name]) <= 1e-12, name


def test_weight_drop_leaves_the_weights_and_masks_their_gradients(rng):
    x, y = tokens(rng)
    model = make("lstm", weight_drop=0.5)
    before = {name: value.copy() for name, value in model.params.items()}
    result = model.loss_and_grads(x, y)
    for name, value in model.params.items():
        assert np.array_equal(value, before[name]), name
    for name in ("weight_hh", "weight_hh_l1"):
        dropped = masks_of(model).weight[name] == 0
        assert dropped.any() and np.all(result.grads[name][dropped] == 0)


def test_the_stream_is_reproducible_and_seeded(rng):
    x, y = tokens(rng)
    first, second = make("gru", **ALL), make("gru", **ALL)
    assert first.loss_and_grads(x, y).loss == second.loss_and_grads(x, y).loss
    a, b = first.loss_and_grads(x, y).loss, first.loss_and_grads(x, y).loss
    assert a != b and first.dropout_stream.draws == 3
    second.dropout_stream.draws = 2                            # jump to draw 2
    assert second.loss_and_grads(x, y).loss == b
    other_seed = make("gru", seed=4, **ALL)
    other_seed.params.update({n: v.copy() for n, v in first.params.items()})
    other_seed.dropout_stream.draws = 2
    assert other_seed.loss_and_grads(x, y).loss != b
    rank = make("gru", **ALL)
    rank.dropout_stream.stream, rank.dropout_stream.draws = 1, 2
    assert rank.loss_and_grads(x, y).loss != b                 # another rank, other masks


def test_copies_save_and_load_continue_the_stream(rng, tmp_path):
    x, y = tokens(rng)
    model = make("lstm", **ALL)
    model.loss_and_grads(x, y)
    clone = model.copy()
    gpurnn.save(tmp_path / "m.npz", model)
    loaded = gpurnn.load(tmp_path / "m.npz").model
    expected = model.loss_and_grads(x, y).loss
    assert clone.loss_and_grads(x, y).loss == expected
    assert loaded.loss_and_grads(x, y).loss == expected
    assert loaded.dropout == model.dropout


def test_sampling_and_evaluation_run_without_dropout(rng):
    from gpurnn.training.corpus import cross_entropy
    x, y = tokens(rng)
    model = make("gru", **ALL)
    batches = [(x, y, np.ones(x.shape))]
    expected = model.copy().eval().loss(x, y)
    assert cross_entropy(model, batches, carry_state=False) == pytest.approx(expected,
                                                                             rel=1e-14)
    vocab = gpurnn.Vocabulary.from_list(["PAD_TOKEN", "UNKNOWN_TOKEN", "SENTENCE_START",
                                         "SENTENCE_END", "a", "b", "c"])
    gpurnn.sample(model, vocab, num=2, seed=0, max_length=5)
    assert model.training and model.dropout_stream.draws == 0


@pytest.mark.parametrize("call, message", [
    (lambda: make("gru", dropout=1.0), r"dropout must be a rate in \[0, 1\)"),
    (lambda: make("gru", dropout_state=-0.1), r"dropout_state must be a rate"),
    (lambda: make("gru", weight_drop=True), r"weight_drop must be a rate"),
    (lambda: make("gru", layers=1, dropout=0.2), "use num_layers >= 2, or dropout_output"),
    (lambda: make("gru", embedding=None, dropout_embedding=0.2), "give embedding_size"),
    (lambda: gpurnn.GRU(3, 4, 3, dropuot=0.2), "unexpected keyword argument 'dropuot'"),
])
def test_bad_rates_are_refused(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_input_dropout_on_token_ids_without_an_embedding_is_refused(rng):
    x, y = tokens(rng)
    model = make("gru", embedding=None, dropout_input=0.2)
    with pytest.raises(ValueError, match="dropout_input needs an embedding"):
        model.loss_and_grads(x, y)


def test_modes_and_the_stream_state_are_checked():
    model = make("gru")
    assert model.eval() is model and not model.training
    with pytest.raises(TypeError, match="mode must be True or False"):
        model.train("yes")
    stream = DropoutStream(3)
    with pytest.raises(ValueError, match="draws must be an int >= 0"):
        stream.load_state_dict({"seed": 3, "stream": 0, "draws": -1})
    assert DropoutRates(dropout=0.5).nonzero() == {"dropout": 0.5}


# ------------------------------------------------------------------ PyTorch, same masks

torch_cases = [(cell, layers, 0) for cell in CELLS for layers in (1, 2)] + [("lstm", 2, 3)]


def torch_loss(model, x, y, mask, masks):
    """The model's loss in torch autograd, step by step from its equations, with the masks
    the engine drew; returns (loss, {name: gradient})."""
    import torch
    t = {name: torch.tensor(np.asarray(value), requires_grad=True)
         for name, value in model.params.items()}
    m = {k: (None if v is None else torch.tensor(np.asarray(v)))
         for k, v in (("embedding", masks.embedding), ("input", masks.input),
                      ("output", masks.output))}
    E = t["E"] * m["embedding"][:, None] if m["embedding"] is not None else t["E"]
    inputs = E[torch.as_tensor(x)]                              # (B, T, D)
    if m["input"] is not None:
        inputs = inputs * m["input"][:, None, :]
    H, (B, T) = model.hidden_size, x.shape
    for layer in range(model.num_layers):
        def p(name):
            return t.get(layer_name(name, layer))
        W_hh = p("weight_hh")
        if masks.weight is not None:
            W_hh = W_hh * torch.tensor(np.asarray(masks.weight[layer_name("weight_hh", layer)]))
        state_mask = (None if masks.state is None
                      else torch.tensor(np.asarray(masks.state[layer])))
        h = torch.zeros(B, model._hidden_width, dtype=torch.float64)
        c = torch.zeros(B, H, dtype=torch.float64)
        outs = []
        for step in range(T):
            xt = inputs[:, step]
            hm = h if state_mask is None else h * state_mask
            gi = xt @ p("weight_ih").T + p("bias_ih")
            if model.cell_type == "elman":
                h = torch.tanh(gi + hm @ W_hh.T)
            elif model.cell_type == "gru":
                gh = hm @ W_hh.T + p("bias_hh")
                r = torch.sigmoid(gi[:, :H] + gh[:, :H])
                z = torch.sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
                n = torch.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
                h = (1 - z) * n + z * h
            else:
                a = gi + hm @ W_hh.T + p("bias_hh")
                i, f = torch.sigmoid(a[:, :H]), torch.sigmoid(a[:, H:2 * H])
                g, o = torch.tanh(a[:, 2 * H:3 * H]), torch.sigmoid(a[:, 3 * H:])
                c = f * c + i * g
                h = o * torch.tanh(c)
                if p("weight_hr") is not None:                       # proj_size
                    h = h @ p("weight_hr").T
            outs.append(h)
        inputs = torch.stack(outs, dim=1)
        if layer + 1 < model.num_layers and masks.between is not None:
            between = torch.tensor(np.asarray(masks.between[layer]))   # (T, B, H)
            inputs = inputs * between.transpose(0, 1)
    top = inputs if m["output"] is None else inputs * m["output"][:, None, :]
    logits = top @ t["V"].T + t["c"]
    losses = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                               torch.as_tensor(y).reshape(-1),
                                               reduction="none")
    loss = (losses * torch.as_tensor(mask).reshape(-1)).sum()
    loss.backward()
    return loss.item(), {name: value.grad.numpy() for name, value in t.items()}


@pytest.mark.parametrize("cell, layers, proj_size", torch_cases)
def test_equal_to_torch_autograd_fed_the_same_masks(cell, layers, proj_size, rng):
    pytest.importorskip("torch")
    rates = dict(ALL) if layers > 1 else {k: v for k, v in ALL.items() if k != "dropout"}
    model = make(cell, layers=layers, **rates, **({"proj_size": proj_size} if proj_size else {}))
    for name in model.params:                                # biases away from zero
        if "bias" in name or name == "c":
            model.params[name][...] = rng.uniform(-0.5, 0.5, model.params[name].shape)
    x, y = tokens(rng, batch=3, steps=7)
    mask = np.ones(x.shape)
    mask[1, 5:] = 0
    result = model.loss_and_grads(x, y, mask=mask, reduction="sum")
    loss, grads = torch_loss(model, x, y, mask, masks_of(model))
    assert result.loss == pytest.approx(loss, rel=1e-12)
    for name, grad in grads.items():
        assert rel_error(result.grads[name], grad) <= 1e-12, name


def test_training_with_dropout_resumes_bit_identically(tmp_path):
    options = dict(cell="lstm", layers=2, hidden=12, embedding_size=8, steps=6,
                   batch_size=4, seq_len=8, quiet=True, eval_every=3, checkpoint_every=3,
                   samples=0, device="cpu", **ALL)
    gpurnn.train(**options, checkpoint=str(tmp_path / "whole.npz"))
    gpurnn.train(**{**options, "steps": 3}, checkpoint=str(tmp_path / "parts.npz"))
    gpurnn.train(**options, checkpoint=str(tmp_path / "parts.npz"), resume=True)
    whole = gpurnn.load(tmp_path / "whole.npz").model
    parts = gpurnn.load(tmp_path / "parts.npz").model
    for name, value in whole.params.items():
        assert np.array_equal(value, parts.params[name]), name
    plain = dict(options, **dict.fromkeys(DROPOUT_KINDS, 0.0))
    gpurnn.train(**plain, checkpoint=str(tmp_path / "plain.npz"))
    other = gpurnn.load(tmp_path / "plain.npz").model
    assert not np.array_equal(other.params["weight_hh"], whole.params["weight_hh"])


@pytest.mark.parametrize("cell", CELLS)
def test_the_fused_kernels_run_under_dropout_and_agree_with_the_plain_path(cell, rng):
    """Masks outside the step (between layers, input, output, embedding, weight-drop) keep
    the fused kernels (their host build here); a state mask, which no kernel has, runs the
    step plain. Both equal the plain path."""
    from gpurnn.engine.gpu import fused
    from gpurnn.engine.gpu.kernels import host
    if host.compiler() is None:
        pytest.skip("no host C++ compiler (g++) to build the kernels for the host")
    launch = host.HostLauncher(host.build())
    calls = []

    def counted(*args, **kwargs):
        calls.append(args[0])
        return launch(*args, **kwargs)

    x, y = tokens(rng)
    for rates in ({k: v for k, v in ALL.items() if k != "dropout_state"}, ALL):
        model = make(cell, **rates)
        with model.fixed_dropout():
            plain = model.loss_and_grads(x, y)
            model.plan = model.plan.replace(kernels="fused")
            calls.clear()
            with fused.emulate_on_host(counted):
                fast = model.loss_and_grads(x, y)
        step_kernels = [name for name in calls if name.startswith(cell)]
        assert bool(step_kernels) == ("dropout_state" not in rates), calls
        assert fast.loss == pytest.approx(plain.loss, rel=1e-12)
        for name, grad in plain.grads.items():
            assert rel_error(fast.grads[name], grad) <= 1e-12, name


@pytest.mark.parametrize("bidirectional", [False, True])
def test_cpu_strict_draws_the_same_masks_and_gradients(bidirectional, rng):
    from gpurnn.engine.arrays.backend import to_host
    x, y = tokens(rng)
    host = make("lstm", bidirectional=bidirectional, **ALL)
    strict = make("lstm", bidirectional=bidirectional, device="cpu-strict", **ALL)
    expected, got = host.loss_and_grads(x, y), strict.loss_and_grads(x, y)
    assert got.loss == expected.loss
    for name, grad in expected.grads.items():
        assert np.array_equal(to_host(got.grads[name]), grad), name
