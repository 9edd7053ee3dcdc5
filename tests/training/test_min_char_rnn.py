"""min-char-rnn (Karpathy, 2015) replayed with gpurnn's own parts, in float64.

The reference below is written from min-char-rnn's published update rules: one-hot inputs,
``h = tanh(Wxh x + Whh h + bh)``, ``y = Why h + by``, softmax, the loss summed over 25 steps,
backpropagation through them, every gradient clipped elementwise to [-5, 5], Adagrad with
eps inside the root (``mem += d*d; p -= lr * d / sqrt(mem + 1e-8)``), the hidden state
carried from chunk to chunk and reset when the pointer wraps. The library side is an Elman
language model from ``gpurnn.make_model`` with the same weights, ``loss_and_grads`` with
``reduction="sum"`` and the carried state as ``h0``, ``gpurnn.clip_grad_value`` and
``gpurnn.Adagrad(eps_placement="inside")``.
"""
import numpy
import pytest

import gpurnn
from gpurnn.training.config import TrainConfig
from gpurnn.training.optim import Adagrad, make_optimizer
from gpurnn.training.train import optimizer_options

HIDDEN, SEQ_LENGTH, LR, EPS, CLIP = 100, 25, 1e-1, 1e-8, 5.0
CHUNKS = 6
NAMES = ("Wxh", "Whh", "Why", "bh", "by")  # and gpurnn's weight_ih, weight_hh, V, bias_ih, c
# 101 characters: the fourth chunk of 25 would run past the end, so the pointer wraps and the
# state starts again from zero (chunks 4, 5, 6 read the text of chunks 1, 2, 3 again)
TEXT = ("hello world, this is min-char-rnn's loop.\nit learns to write like its text,\n"
        "one character at a time.\n")
CHARS = sorted(set(TEXT))
INDEX = {ch: i for i, ch in enumerate(CHARS)}


class MinCharRNN:
    """min-char-rnn's model and loop, column vectors as in the original."""

    def __init__(self, seed=0, placement="inside"):
        V = len(CHARS)
        rng = numpy.random.RandomState(seed)
        self.params = [rng.randn(HIDDEN, V) * 0.01, rng.randn(HIDDEN, HIDDEN) * 0.01,
                       rng.randn(V, HIDDEN) * 0.01, numpy.zeros((HIDDEN, 1)),
                       numpy.zeros((V, 1))]
        self.mems = [numpy.zeros_like(p) for p in self.params]
        self.placement = placement
        self.n, self.p, self.hprev = 0, 0, None

    def chunk(self):
        """The pointer, and whether the state starts again, for the next update."""
        if self.p + SEQ_LENGTH + 1 >= len(TEXT) or self.n == 0:
            return 0, True
        return self.p, False

    def loss_fun(self, inputs, targets, hprev):
        Wxh, Whh, Why, bh, by = self.params
        V = len(CHARS)
        xs, hs, ps, loss = {}, {-1: numpy.copy(hprev)}, {}, 0.0
        for t in range(len(inputs)):
            xs[t] = numpy.zeros((V, 1))
            xs[t][inputs[t]] = 1                                   # one-hot
            hs[t] = numpy.tanh(Wxh @ xs[t] + Whh @ hs[t - 1] + bh)
            ys = Why @ hs[t] + by
            ps[t] = numpy.exp(ys) / numpy.sum(numpy.exp(ys))       # softmax
            loss += -numpy.log(ps[t][targets[t], 0])               # summed cross-entropy
        dWxh, dWhh, dWhy = (numpy.zeros_like(a) for a in (Wxh, Whh, Why))
        dbh, dby = numpy.zeros_like(bh), numpy.zeros_like(by)
        dhnext = numpy.zeros_like(hs[0])
        for t in reversed(range(len(inputs))):
            dy = numpy.copy(ps[t])
            dy[targets[t]] -= 1                                    # dL/dy = p - onehot
            dWhy += dy @ hs[t].T
            dby += dy
            dh = Why.T @ dy + dhnext                               # from the output and t + 1
            dhraw = (1 - hs[t] * hs[t]) * dh                       # through tanh
            dbh += dhraw
            dWxh += dhraw @ xs[t].T
            dWhh += dhraw @ hs[t - 1].T
            dhnext = Whh.T @ dhraw
        for dparam in (dWxh, dWhh, dWhy, dbh, dby):
            numpy.clip(dparam, -CLIP, CLIP, out=dparam)            # mitigate exploding gradients
        return loss, (dWxh, dWhh, dWhy, dbh, dby), hs[len(inputs) - 1]

    def step(self):
        """One update; returns the loss."""
        self.p, reset = self.chunk()
        if reset:
            self.hprev = numpy.zeros((HIDDEN, 1))
        inputs = [INDEX[ch] for ch in TEXT[self.p:self.p + SEQ_LENGTH]]
        targets = [INDEX[ch] for ch in TEXT[self.p + 1:self.p + SEQ_LENGTH + 1]]
        loss, grads, self.hprev = self.loss_fun(inputs, targets, self.hprev)
        for param, dparam, mem in zip(self.params, grads, self.mems):
            mem += dparam * dparam
            root = (numpy.sqrt(mem + EPS) if self.placement == "inside"
                    else numpy.sqrt(mem) + EPS)
            param += -LR * dparam / root                           # adagrad update
        self.p += SEQ_LENGTH
        self.n += 1
        return loss


def _as_library(arrays):
    """min-char-rnn's five arrays as gpurnn's parameter dict (biases as vectors)."""
    Wxh, Whh, Why, bh, by = arrays
    return {"weight_ih": Wxh, "weight_hh": Whh, "V": Why, "bias_ih": bh[:, 0], "c": by[:, 0]}


class Library:
    """The same loop with gpurnn's parts."""

    def __init__(self, initial, placement="inside"):
        V = len(CHARS)
        self.model = gpurnn.make_model("elman", V, HIDDEN, V, dtype="float64")
        # the input is one-hot, so weight_ih's columns are the embedding of each character
        for name, value in _as_library(initial).items():
            setattr(self.model, name, value.copy())
        self.optimizer = gpurnn.Adagrad(lr=LR, eps=EPS, eps_placement=placement)
        self.hidden = None

    def step(self, p, reset):
        if reset:
            self.hidden = None                                     # None: the zero state
        x = numpy.array([[INDEX[ch] for ch in TEXT[p:p + SEQ_LENGTH]]])           # (1, 25)
        y = numpy.array([[INDEX[ch] for ch in TEXT[p + 1:p + SEQ_LENGTH + 1]]])   # (1, 25)
        loss, grads, self.hidden = self.model.loss_and_grads(x, y, h0=self.hidden,
                                                             reduction="sum")
        gpurnn.clip_grad_value(grads, CLIP)
        self.optimizer.step(self.model.params, grads)
        return loss

    def load(self, reference: MinCharRNN):
        """Take over the reference's weights, Adagrad sums and carried state."""
        for name, value in _as_library(reference.params).items():
            setattr(self.model, name, value.copy())
        self.optimizer.load_state_dict({
            "name": "adagrad", "t": reference.n, "hyper": self.optimizer.hyperparameters(),
            "slots": {"sum_sq": {k: v.copy() for k, v in _as_library(reference.mems).items()}}})
        self.hidden = None if reference.hprev is None else reference.hprev.T.copy()  # (1, H)


def _worst(ours: dict, theirs) -> dict:
    """Each array's largest difference, relative to the reference array's largest entry."""
    return {name: float(abs(ours[key] - ref).max() / abs(ref).max())
            for name, key, ref in zip(NAMES, ours, _as_library(theirs).values())}


@pytest.mark.parametrize("placement", ["inside", "outside"])
def test_every_update_of_min_char_rnn_is_the_librarys(placement):
    """Six updates, each from the reference's state of the moment (weights, Adagrad sums,
    carried hidden state): the library's loss, state, weights and sums agree to 1e-12 of
    each array's scale. Against min-char-rnn's own rule (eps inside), eps outside the root
    (PyTorch's) fails at once: the planted fault is caught."""
    reference = MinCharRNN()
    library = Library(reference.params, placement)
    for n in range(CHUNKS):
        library.load(reference)
        p, reset = reference.chunk()
        loss = library.step(p, reset)
        expected = reference.step()
        params = _worst(library.model.params, reference.params)
        sums = _worst(library.optimizer.state_dict()["slots"]["sum_sq"], reference.mems)
        if placement == "outside":
            assert max(params.values()) > 1e-3, f"update {n + 1}: {params}"
            return
        assert loss == pytest.approx(expected, rel=1e-13), f"update {n + 1}"
        numpy.testing.assert_allclose(library.hidden, reference.hprev.T, rtol=0, atol=1e-14)
        assert max(params.values()) <= 1e-12, f"update {n + 1}: {params}"
        assert max(sums.values()) <= 1e-12, f"update {n + 1}: {sums}"
    assert reference.n == CHUNKS and reference.p == 3 * SEQ_LENGTH  # it wrapped once


def test_six_chunks_of_min_char_rnn_run_alike():
    """Left to run on their own for six chunks, the two loops stay together, but their
    last digits drift apart: the batched sums round otherwise than the loop's outer
    products (~1e-16), and where a gradient is below sqrt(eps) = 1e-4, g / sqrt(G + eps) is
    about g * 1e4, so a rounding difference in g is magnified at each update (measured:
    7e-15 of the weights' scale after one update, 2e-10 after six). Hence the loose bound;
    the test above checks each update on its own to 1e-12."""
    reference = MinCharRNN()
    library = Library(reference.params)
    for n in range(CHUNKS):
        p, reset = reference.chunk()
        loss = library.step(p, reset)
        expected = reference.step()
        assert loss == pytest.approx(expected, rel=1e-10), f"update {n + 1}"
        worst = _worst(library.model.params, reference.params)
        assert max(worst.values()) <= (1e-13 if n == 0 else 1e-8), f"update {n + 1}: {worst}"


def test_the_command_line_says_min_char_rnns_loop():
    """``gpurnn train --level char --cell elman --hidden 100 --seq-len 25 --batch-size 1
    --optimizer adagrad --lr 0.1 --eps 1e-8 --eps-placement inside --clip 0 --clip-value 5
    --reduction sum``: the settings validate and build min-char-rnn's Adagrad."""
    config = TrainConfig(level="char", cell="elman", hidden=100, seq_len=25, batch_size=1,
                         optimizer="adagrad", lr=0.1, clip=0.0, clip_value=5.0,
                         reduction="sum", eps=1e-8, eps_placement="inside").validate()
    built = make_optimizer(config.optimizer, config.lr, **optimizer_options(config, config.lr))
    assert isinstance(built, Adagrad)
    assert built.hyperparameters() == {"lr": 0.1, "weight_decay": 0.0, "eps": 1e-8,
                                       "eps_placement": "inside"}
    assert (config.clip, config.clip_value, config.reduction) == (0.0, 5.0, "sum")
