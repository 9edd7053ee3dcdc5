"""A language-modelling corpus ready for the trainer: vocabulary, batches, validation set.

:func:`load_data` turns a :class:`~gpurnn.config.TrainConfig` into the training batcher
(resumable, see :mod:`gpurnn.data`) and the validation batches; :func:`cross_entropy`
measures a model on those batches.
"""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass

import numpy

from ..engine.backend import get_array_module
from . import data as D
from .generate import warmup_ids

__all__ = ["Corpus", "load_data", "cross_entropy", "cross_entropy_sums", "finite_state",
           "EVAL_BATCH"]

EVAL_BATCH = 32  # validation batches hold at least this many sequences
WARMUP_LENGTH = 256  # tokens of training text a stream-trained model reads before sampling


@dataclass
class Corpus:
    vocab: D.Vocabulary
    train: object        # a StreamBatcher or SentenceBatcher (resumable)
    valid: list          # [(inputs, targets, weights)] host arrays, each (batch, time)
    carry_state: bool    # stream mode: validation carries the hidden state batch to batch
    fingerprint: str     # hash of the encoded data: a resumed run must see the same
    train_tokens: int
    warmup: numpy.ndarray | None = None  # stream mode: text read before sampling (generate)


def load_data(config, vocab: D.Vocabulary | None = None, *, world_size: int = 1) -> Corpus:
    """Read, split, encode and batch the corpus that ``config`` names.

    The vocabulary is built from the training sentences only, unless ``vocab`` is given
    (a resumed run reuses the checkpoint's). In stream mode the validation weights leave out
    the END -> START step, which is certain, so perplexity is per token of the sentences in
    both modes. With ``world_size`` ranks the batches are global, ``world_size`` times
    ``config.batch_size`` rows, of which each rank takes its own.
    """
    if config.corpus is None:
        sentences = D.load_builtin_corpus(level=config.level)
    else:
        sentences = D.load_corpus(config.corpus, level=config.level, column=config.csv_column)
    with warnings.catch_warnings():  # a corpus too small for validation: the trainer says so
        warnings.simplefilter("ignore")
        train_s, valid_s = D.train_valid_split(sentences, config.valid_fraction,
                                               seed=config.seed)
    # Characters are few: every one of the corpus gets an id (up to the vocabulary size), so
    # that validation and prompts meet UNKNOWN_TOKEN only beyond that size.
    vocab = vocab or D.Vocabulary.build(train_s + valid_s if config.level == "char" else train_s,
                                        config.vocab_size)
    train_ids, valid_ids = D.encode_sentences(train_s, vocab), D.encode_sentences(valid_s, vocab)
    digest = hashlib.sha256()
    for ids in train_ids + [numpy.array([-1])] + valid_ids:
        digest.update(ids.tobytes())
    B, L = config.batch_size * world_size, config.seq_len
    E = max(B, EVAL_BATCH)  # evaluation has no gradients to hold: bigger batches are cheaper
    valid = []
    try:
        if config.mode == "stream":
            train = D.StreamBatcher(numpy.concatenate(train_ids), B, L)
            if valid_ids:
                stream = numpy.concatenate(valid_ids)
                rows = max(1, min(E, (len(stream) - 1) // L))
                valid = [(b.inputs, b.targets,
                          (b.targets != D.SENTENCE_START_ID).astype(numpy.float32))
                         for b in D.StreamBatcher(stream, rows, L)]
        else:
            train = D.SentenceBatcher(train_ids, B, max_len=L, seed=config.seed)
            if valid_ids:
                valid = [(b.inputs, b.targets, b.mask)
                         for b in D.SentenceBatcher(valid_ids, E, max_len=L, shuffle=False)]
    except ValueError as error:
        world = (f" (the global batch: --batch-size {config.batch_size} times {world_size} "
                 f"processes)") if world_size > 1 else ""
        raise ValueError(f"training data: {error}{world}") from None
    # the last WARMUP_LENGTH sentences hold at least that many ids (2 or more each)
    warmup = warmup_ids(numpy.concatenate(train_ids[-WARMUP_LENGTH:]), WARMUP_LENGTH) \
        if config.mode == "stream" else None
    return Corpus(vocab, train, valid, config.mode == "stream", digest.hexdigest()[:16],
                  sum(map(len, train_ids)), warmup)


def cross_entropy(model, batches, *, carry_state: bool) -> float | None:
    """Mean cross-entropy per weighted token (nats) of ``model`` on ``batches`` of
    ``(inputs, targets, weights)``; None when there are none. With ``carry_state`` each
    batch starts from the previous batch's last hidden state (consecutive stream chunks)."""
    total, count = cross_entropy_sums(model, batches, carry_state=carry_state)
    return total / count if count else None


def cross_entropy_sums(model, batches, *, carry_state: bool,
                       rows: slice = slice(None)) -> tuple[float, float]:
    """The summed weighted cross-entropy (nats) and the summed weights of
    :func:`cross_entropy`, over the rows ``rows`` of every batch (the same rows each
    batch, so the carried state follows them: a rank's share of the validation set)."""
    total, count, hidden = 0.0, 0.0, None
    for inputs, targets, weights in batches:
        inputs, targets, weights = inputs[rows], targets[rows], weights[rows]
        if not len(inputs):
            continue
        loss, last = model.loss(inputs, targets, weights=weights, h0=hidden,
                                return_state=True, reduction="sum")
        total += loss
        count += float(weights.sum())
        if carry_state:
            # A diverged model's state is NaN: the loss says so; carrying it would only
            # fail the next batch's input check instead.
            hidden = last if finite_state(last) else None
    return total, count


def finite_state(state) -> bool:
    """Whether a carried state (an array, or an LSTM's (h, c) pair) holds no NaN/Inf."""
    parts = state if isinstance(state, tuple) else (state,)
    return all(bool(get_array_module(p).isfinite(p).all()) for p in parts)
