"""A language-modelling corpus ready for the trainer: vocabulary, batches, validation set.

:func:`load_data` turns a :class:`~gpurnn.config.TrainConfig` into the training batcher
(resumable, see :mod:`gpurnn.data`) and the validation batches; :func:`cross_entropy`
measures a model on those batches.
"""
from __future__ import annotations

import collections
import hashlib
import warnings
from dataclasses import dataclass

import numpy

from ..engine.arrays.backend import get_array_module
from ..engine.models.model import evaluating
from . import data as D
from .generate import warmup_ids

__all__ = ["Corpus", "load_data", "cross_entropy", "cross_entropy_sums", "finite_state",
           "stream_chunks", "sentence_batches", "eval_rows", "EVAL_BATCH"]

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
    if config.level in D.RAW_LEVELS:
        return _load_text(config, vocab, world_size)
    if config.corpus is None:
        sentences = D.load_builtin_corpus(level=config.level)
    else:
        sentences = D.load_corpus(config.corpus, level=config.level, column=config.csv_column,
                                  max_bytes=config.corpus_bytes)
    with warnings.catch_warnings():  # a corpus too small for validation: the trainer says so
        warnings.simplefilter("ignore")
        train_s, valid_s = D.train_valid_split(sentences, config.valid_fraction,
                                               seed=config.seed)
    # Characters are few: every one of the corpus gets an id (up to the vocabulary size), so
    # that validation and prompts meet UNKNOWN_TOKEN only beyond that size.
    vocab = vocab or D.Vocabulary.build(
        train_s + valid_s if config.level == "char-sentences" else train_s, config.vocab_size)
    train_ids, valid_ids = D.encode_sentences(train_s, vocab), D.encode_sentences(valid_s, vocab)
    digest = hashlib.sha256()
    for ids in train_ids + [numpy.array([-1])] + valid_ids:
        digest.update(ids.tobytes())
    B, L = config.batch_size * world_size, config.seq_len
    try:
        if config.mode == "stream":
            train = D.StreamBatcher(numpy.concatenate(train_ids), B, L)
        else:
            train = D.SentenceBatcher(train_ids, B, max_len=L, seed=config.seed)
        valid = sentence_batches(valid_ids, config, eval_rows(config, world_size)) \
            if valid_ids else []
    except ValueError as error:
        raise _too_small(error, config, world_size) from None
    # the last WARMUP_LENGTH sentences hold at least that many ids (2 or more each)
    warmup = warmup_ids(numpy.concatenate(train_ids[-WARMUP_LENGTH:]), WARMUP_LENGTH) \
        if config.mode == "stream" else None
    return Corpus(vocab, train, valid, config.mode == "stream", digest.hexdigest()[:16],
                  sum(map(len, train_ids)), warmup)


def _too_small(error, config, world_size) -> ValueError:
    world = (f" (the global batch: --batch-size {config.batch_size} times {world_size} "
             f"processes)") if world_size > 1 else ""
    return ValueError(f"training data: {error}{world}")


def eval_rows(config, world_size: int = 1) -> int:
    """Rows of an evaluation batch: at least EVAL_BATCH (it holds no gradients, and bigger
    batches are cheaper), at least the training batch."""
    return max(config.batch_size * world_size, EVAL_BATCH)


def sentence_batches(sentences: list, config, rows: int) -> list:
    """Held-out sentences (id arrays from encode_sentences) as ``(inputs, targets,
    weights)`` batches, as the model of ``config`` reads them: in stream mode one stream
    whose END -> START steps weigh nothing (they are certain), else padded sentences."""
    if config.mode == "stream":
        return [(inputs, targets, (targets != D.SENTENCE_START_ID).astype(numpy.float32))
                for inputs, targets, _ in stream_chunks(numpy.concatenate(sentences), rows,
                                                        config.seq_len)]
    return [(b.inputs, b.targets, b.mask)
            for b in D.SentenceBatcher(sentences, rows, max_len=config.seq_len, shuffle=False)]


def stream_chunks(ids: numpy.ndarray, rows: int, seq_len: int) -> list:
    """A held-out stream as ``(inputs, targets, weights)`` chunks of at most ``rows``
    parallel streams (fewer when it is short) and ``seq_len`` steps, for
    :func:`cross_entropy` with the state carried; all weights 1. Only the stream's last
    ``(len(ids) - 1) % rows`` targets are left out (the rows' equal lengths)."""
    rows = max(1, min(rows, (len(ids) - 1) // seq_len))
    return [(b.inputs, b.targets, b.mask) for b in D.StreamBatcher(ids, rows, seq_len)]


def _load_text(config, vocab, world_size: int) -> Corpus:
    """Levels char and byte: the text as one stream, the last valid_fraction held out."""
    level = config.level
    text = (D.load_builtin_text(level=level) if config.corpus is None
            else D.load_text(config.corpus, level=level, column=config.csv_column,
                             max_bytes=config.corpus_bytes))
    train_t, valid_t = D.split_text(text, config.valid_fraction)
    if vocab is None:
        # every character of the text, the held-out part too (as char-rnn and nanoGPT
        # do): the validation loss then never meets UNKNOWN_TOKEN unless the size cuts
        vocab = D.Vocabulary.for_text(text, level=level, size=config.vocab_size)
        _say_merged(text, vocab, config)
    train_ids, valid_ids = vocab.encode(train_t), vocab.encode(valid_t)
    digest = hashlib.sha256(train_ids.tobytes() + b"|" + valid_ids.tobytes())
    B, L = config.batch_size * world_size, config.seq_len
    try:
        train = D.StreamBatcher(train_ids, B, L)
    except ValueError as error:
        raise _too_small(error, config, world_size) from None
    valid = stream_chunks(valid_ids, eval_rows(config, world_size), L) \
        if len(valid_ids) >= 2 else []
    return Corpus(vocab, train, valid, True, digest.hexdigest()[:16], len(train_ids),
                  _line_start_warmup(train_ids, vocab))


def _say_merged(text: str, vocab: D.Vocabulary, config) -> None:
    """A character vocabulary too small for the text: say how much became UNKNOWN_TOKEN."""
    distinct = len(set(text))
    kept = len(vocab) - len(vocab.specials)
    if distinct > kept:
        counts = collections.Counter(text)
        merged = sum(n for char, n in counts.items() if char not in vocab)
        warnings.warn(f"the text has {distinct} distinct characters; the {distinct - kept} "
                      f"rarest ({merged} characters, {100 * merged / len(text):.2g}% of the "
                      f"text) are read as {D.UNKNOWN_TOKEN} (--vocab-size {config.vocab_size} "
                      f"counts it; raise it to {distinct + 1} to keep them all)",
                      D.CorpusWarning, stacklevel=3)


def _line_start_warmup(ids: numpy.ndarray, vocab: D.Vocabulary) -> numpy.ndarray:
    """The end of the training text, at least WARMUP_LENGTH ids where it has them, cut after
    a newline when one lies in the last 2 * WARMUP_LENGTH: a sample then begins a line."""
    tail = ids[-2 * WARMUP_LENGTH:]
    newline = vocab.encode("\n")[0] if "\n" in vocab else None
    ends = numpy.flatnonzero(tail[WARMUP_LENGTH - 1:] == newline) if newline is not None else ()
    return tail[:WARMUP_LENGTH + ends[-1]].copy() if len(ends) else tail[-WARMUP_LENGTH:].copy()


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
    with evaluating(model):                               # no dropout in evaluation
        return _sums(model, batches, carry_state, rows)


def _sums(model, batches, carry_state, rows):
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
