"""Sampling text from a trained language model: sentences, or raw text with its layout.

    from gpurnn.generate import load_language_model, sample
    lm = load_language_model("gpurnn-lm.npz")
    print(sample(lm.model, lm.vocab, num=5, level=lm.level, temperature=0.8, seed=1))

A model of raw text (levels char and byte) writes ``length`` characters (or bytes) after
the prompt, newlines and indentation as it learnt them; there are no sentence ends. The
rest of this docstring is about sentences.

A sentence starts from ``SENTENCE_START`` (then the prompt's tokens, if any) and grows one
token at a time, drawn from the model's next-token distribution, until ``SENTENCE_END`` or
``max_length`` tokens. All ``num`` sentences are drawn together as one batch; the random
numbers come from a NumPy generator on the host, so a seed gives the same text on any device.

Where sampling starts matters. A model trained in stream mode always reads ``SENTENCE_START``
with the hidden state carried over from the text before it, almost never from a zero state;
started from zero, a character model writes near-random letters for the first ~15
characters. So stream-mode checkpoints keep a stretch of their training text (``warmup``,
ending with ``SENTENCE_END``) and the model reads it before each sentence: the sentence starts
from a state like those it was trained on. Sentence-mode models start from zero, as trained.

``UNKNOWN_TOKEN`` is never drawn and never shown unless ``show_unknown``: prompt words outside
the vocabulary are shown as typed (the model reads them as ``UNKNOWN_TOKEN``) and named in an
:class:`UnknownWordWarning`.
"""
from __future__ import annotations

import numbers
import re
import warnings
from typing import NamedTuple

import numpy

from . import data as D
from ..engine.arrays.backend import to_host
from .checkpoint import CheckpointError, load_checkpoint
from .config import MAX_SAMPLES  # drawn together: num x vocabulary probabilities per step
from ..engine.models.model import RecurrentModel, evaluating
from .serialization import model_from_checkpoint

__all__ = ["LanguageModel", "UnknownWordWarning", "load_language_model", "sample",
           "format_samples", "warmup_ids", "join_tokens", "known_word_share"]

_MAX_LENGTH = {"word": 60, "char-sentences": 300}  # tokens per sentence at most
DEFAULT_LENGTH = 500  # characters (or bytes) a raw-text sample writes
END_SAMPLE_LENGTH = 300  # those the trainer shows at the end of a run


class UnknownWordWarning(UserWarning):
    """A prompt holds tokens outside the vocabulary (the model reads them as UNKNOWN_TOKEN)."""


class LanguageModel(NamedTuple):
    model: RecurrentModel
    vocab: D.Vocabulary
    level: str   # word, char, byte or char-sentences: how tokens join into text
    step: int    # training steps behind these parameters
    warmup: numpy.ndarray | None = None  # token ids read before each sample (stream mode)
    config: dict | None = None  # the checkpoint's configuration (the training run's settings)
    written_as: str | None = None  # the level's name in the file, where it was renamed since


def warmup_ids(stream: numpy.ndarray, length: int) -> numpy.ndarray:
    """The last whole sentences of a token stream, at least ``length`` ids if the stream has
    them: what a stream-trained model reads before sampling (see the module docstring).

    ``stream`` is sentences ``[START, ..., END]`` one after another; the stretch starts at a
    ``SENTENCE_START`` so it holds no cut sentence, and ends with the stream's last END.
    """
    stream = numpy.asarray(stream, dtype=D.ID_DTYPE).reshape(-1)
    starts = numpy.flatnonzero(stream[:max(len(stream) - length + 1, 1)] == D.SENTENCE_START_ID)
    return stream[starts[-1] if len(starts) else 0:].copy()


def load_language_model(path, device="cpu") -> LanguageModel:
    """The model, vocabulary and token level saved by ``gpurnn train`` at ``path``.

    Raises:
        CheckpointError: unreadable file, or not a language-model checkpoint, or parameters
            that do not fit the saved configuration.
    """
    saved = load_checkpoint(path)
    model = model_from_checkpoint(saved, path, device)
    try:
        # A trainer's run records its level; gpurnn.save records it beside the vocabulary.
        level = saved.config.get("train", saved.config)["level"]
        if level not in D.LEVELS:
            raise ValueError(f"its level {level!r} is none of {', '.join(D.LEVELS)}")
        vocab = D.Vocabulary.from_list(saved.vocab)
        layout = {"char": (D.UNKNOWN_TOKEN,), "byte": ()}.get(level, D.SPECIAL_TOKENS)
        if vocab.specials != layout:
            raise ValueError(f"its vocabulary does not start as a {level} model's does "
                             f"({list(layout)[:4]}), but with {vocab.to_list()[:4]}")
        sizes = (getattr(model, "input_size", None), getattr(model, "output_size", None))
        if sizes != (len(vocab), len(vocab)):
            raise ValueError(f"model sizes {sizes[0]}/{sizes[1]} do not match the "
                             f"vocabulary of {len(vocab)} tokens")
        warmup = (saved.extra or {}).get("warmup")
        if warmup is not None:
            warmup = numpy.asarray(warmup, dtype=D.ID_DTYPE)
            if warmup.ndim != 1 or not ((warmup >= 0) & (warmup < len(vocab))).all():
                raise ValueError("its warm-up text is not a list of token ids")
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: not a usable language-model checkpoint "
                              f"({type(error).__name__}: {error})") from None
    renamed = level == "char-sentences" and saved.version < 3
    return LanguageModel(model, vocab, level, saved.step, warmup, saved.config,
                         "char" if renamed else None)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check(name, value, ok, expected):
    if isinstance(value, bool) or not ok(value):
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def sample(model: RecurrentModel, vocab: D.Vocabulary, *, num: int = 1, level: str = "word",
           prompt: str | None = None, temperature: float = 1.0, top_k: int | None = None,
           min_length: int = 0, max_length: int | None = None, length: int | None = None,
           warmup=None, show_unknown: bool = False, seed=None, rng=None) -> list[str]:
    """Draw ``num`` samples: sentences (levels word and char-sentences), or stretches of
    text of ``length`` characters or bytes (levels char and byte) that keep the layout
    the model learnt (newlines, indentation).

    Args:
        prompt: text the samples start with: tokenised like the corpus for the sentence
            levels, read character by character (or as its UTF-8 bytes) for char and byte;
            tokens outside the vocabulary are named in an :class:`UnknownWordWarning`.
        temperature: divides the log-probabilities; < 1 is more conservative, > 1 wilder.
        top_k: draw only among the k most likely tokens; None: all.
        min_length: sentence levels: tokens (prompt included) before ``SENTENCE_END`` may be
            drawn.
        max_length: sentence levels: stop a sentence after this many tokens (default 60
            words / 300 characters).
        length: char and byte: tokens drawn after the prompt (default 500).
        warmup: token ids (1-D) the model reads first, normally ``LanguageModel.warmup``;
            None starts from the zero state (a raw-text model without a prompt then reads
            one line break first).
        show_unknown: allow drawing UNKNOWN_TOKEN and show it (in the prompt too; as U+FFFD
            in raw text); by default it is never drawn (the tutorial's "re-sample" loop,
            done exactly by giving it probability 0) and prompt words are shown as typed.
        seed, rng: an int seed, or a ``numpy.random.Generator`` to draw from.
    Returns:
        One string per sample, the prompt included, special tokens dropped.
    """
    _check("num", num, lambda v: _is_int(v) and 0 < v <= MAX_SAMPLES,
           f"a positive integer up to {MAX_SAMPLES:,} (the samples are drawn as one batch)")
    _check("temperature", temperature,
           lambda v: isinstance(v, numbers.Real) and 0 < v < float("inf"), "a positive number")
    _check("top_k", top_k, lambda v: v is None or (_is_int(v) and v > 0),
           "None or a positive integer")
    num, top_k = int(num), None if top_k is None else int(top_k)
    sizes = (getattr(model, "input_size", None), getattr(model, "output_size", None))
    if sizes != (len(vocab), len(vocab)):
        raise ValueError(f"the model reads {sizes[0]} and predicts {sizes[1]} tokens, but the "
                         f"vocabulary has {len(vocab)}: give the vocabulary it was trained with")
    if warmup is not None:
        warmup = numpy.asarray(warmup)
        if warmup.ndim != 1 or (warmup.size and (warmup.dtype.kind not in "iu" or not (
                (warmup >= 0) & (warmup < len(vocab))).all())):
            raise ValueError(f"warmup must be 1-D integer token ids in [0, {len(vocab)}), got "
                             f"dtype {warmup.dtype}, shape {warmup.shape}")
    if level not in D.LEVELS:
        raise ValueError(f"level must be one of {', '.join(map(repr, D.LEVELS))}, got {level!r}")
    raw = level in D.RAW_LEVELS
    unused = ({"min_length": min_length != 0, "max_length": max_length is not None} if raw
              else {"length": length is not None})
    for name in (name for name, given in unused.items() if given):
        raise ValueError(f"{name} is for {'sentence' if raw else 'char and byte'} models; "
                         + ("this one writes length tokens (no sentence ends)" if raw else
                            "this one stops at SENTENCE_END or max_length"))
    if raw:
        steps = DEFAULT_LENGTH if length is None else length
        _check("length", steps, lambda v: _is_int(v) and v > 0, "a positive integer")
        steps = int(steps)
    else:
        _check("min_length", min_length, lambda v: _is_int(v) and v >= 0, "an integer >= 0")
        max_length = _MAX_LENGTH[level] if max_length is None else max_length
        _check("max_length", max_length, lambda v: _is_int(v) and v > 0,
               "a positive integer")
        min_length, max_length = int(min_length), int(max_length)
    rng = rng if rng is not None else numpy.random.default_rng(seed)
    if raw:
        shown = list(_raw_prompt(prompt or "", level))
    else:
        shown = [t for sentence in D.tokenize(prompt, level=level) for t in sentence] \
            if prompt else []
    prompt_ids = vocab.encode(shown).tolist()
    unknown = [t for t, i in zip(shown, prompt_ids) if i == vocab.unknown_id]
    if unknown:
        names = ", ".join(repr(t) for t in dict.fromkeys(unknown))
        warnings.warn(f"not in the model's vocabulary of {len(vocab)} tokens, read as "
                      f"{D.UNKNOWN_TOKEN}: {names}", UnknownWordWarning, stacklevel=2)
    if show_unknown:
        shown = vocab.decode(prompt_ids)
    read = [] if warmup is None else numpy.asarray(warmup, dtype=D.ID_DTYPE).tolist()
    never = [] if show_unknown or vocab.unknown_id is None else [vocab.unknown_id]
    if raw:
        # with nothing to read, a line break (not shown) starts the text, as a file's
        # lines do: the model needs one input before it predicts
        start = read + prompt_ids or vocab.encode(_raw_prompt("\n", level)).tolist()
        rows = _draw_rows(model, start, num, steps, never, temperature, top_k,
                          rng, fallback=never[0] if never else 0)
        return [D.text_from_tokens(shown + vocab.decode(row), level=level) for row in rows]
    rows = _draw_rows(model, read + [D.SENTENCE_START_ID] + prompt_ids, num,
                      max_length - len(prompt_ids), [D.PAD_ID, D.SENTENCE_START_ID] + never,
                      temperature, top_k, rng, fallback=D.SENTENCE_END_ID,
                      end=D.SENTENCE_END_ID, min_steps=min_length - len(prompt_ids))
    return [join_tokens(shown + vocab.decode(row), level) for row in rows]


def format_samples(samples: list[str], level: str) -> str:
    """Samples as printed: one ``  > sentence`` line each, or for raw text each sample
    under a rule that numbers it, its newlines and indentation as written."""
    if level not in D.RAW_LEVELS:
        return "\n".join(f"  > {sentence}" for sentence in samples)
    return "\n".join(f"----- sample {n} of {len(samples)} -----\n{text.rstrip(chr(10))}"
                      for n, text in enumerate(samples, 1)) + "\n----- end -----"


def _raw_prompt(prompt: str, level: str) -> str:
    """A raw-level prompt as tokens: its characters, or its UTF-8 bytes (Latin-1 view)."""
    return prompt.encode("utf-8").decode("latin-1") if level == "byte" else prompt


def _draw_rows(model, start, num, steps, banned, temperature, top_k, rng, *, fallback,
               end=None, min_steps=0) -> list[list[int]]:
    """``num`` continuations of the ids ``start``, drawn together as one batch: up to
    ``steps`` ids each, a row ending at ``end`` (never drawn in its first ``min_steps``)."""
    with evaluating(model):                                  # no dropout while sampling
        return _continue(model, start, num, steps, banned, temperature, top_k, rng,
                         fallback, end, min_steps)


def _continue(model, start, num, steps, banned, temperature, top_k, rng, fallback, end,
              min_steps):
    tokens = numpy.tile(numpy.array(start, dtype=D.ID_DTYPE), (num, 1))  # (N, len(start))
    probs, _, state = model.forward(tokens, return_state=True)
    rows, done = [[] for _ in range(num)], numpy.zeros(num, dtype=bool)
    for drawn in range(steps):
        p = to_host(probs[:, -1]).astype(numpy.float64)      # (N, V)
        p[:, banned] = 0.0
        if end is not None and drawn < min_steps:
            p[:, end] = 0.0
        choice = _draw(p, temperature, top_k, rng, fallback)
        for row in numpy.flatnonzero(~done):
            rows[row].append(int(choice[row]))
        if end is not None:
            done |= choice == end
        if done.all() or drawn + 1 == steps:
            break
        probs, _, state = model.forward(choice[:, None], state, return_state=True)
    return rows


def _draw(p, temperature, top_k, rng, fallback):
    """One index per row of the unnormalised probabilities ``p`` (N, V); ``fallback`` where
    a row has nothing left to draw (a vocabulary of banned tokens only)."""
    if temperature != 1.0:
        with numpy.errstate(divide="ignore"):
            logp = numpy.log(p) / temperature
        p = numpy.exp(logp - logp.max(axis=1, keepdims=True))
    if top_k is not None and top_k < p.shape[1]:
        kth = numpy.partition(p, -top_k, axis=1)[:, -top_k][:, None]
        p = numpy.where(p >= kth, p, 0.0)
    empty = p.sum(axis=1) == 0
    p[empty, fallback] = 1.0
    cdf = numpy.cumsum(p, axis=1)
    u = rng.random(len(p)) * cdf[:, -1]
    return numpy.minimum((cdf <= u[:, None]).sum(axis=1), p.shape[1] - 1).astype(D.ID_DTYPE)


_NO_SPACE_BEFORE = re.compile(r" ([.,;:!?)\]}%]|'s\b|n't\b)")
_NO_SPACE_AFTER = re.compile(r"([(\[{]) ")


def join_tokens(tokens, level: str = "word") -> str:
    """Text from tokens, special tokens dropped (UNKNOWN_TOKEN kept); for words, no space
    before closing punctuation or after opening brackets."""
    text = D.detokenize(tokens, level=level)
    if level == "word":
        text = _NO_SPACE_AFTER.sub(r"\1", _NO_SPACE_BEFORE.sub(r"\1", text))
    return text


_LETTERS = re.compile(r"[^\W\d_]+")


def known_word_share(samples, text: str, *, first_only: bool = False) -> float:
    """The share of the words (runs of letters) in ``samples`` that occur in ``text``, case
    ignored: how much of a character model's output is real words of its training text.
    With ``first_only``, only each sample's first word counts (where a bad start state shows).
    NaN when the samples hold no word."""
    known = {word.lower() for word in _LETTERS.findall(text)}
    words = [word.lower() for sample in samples
             for word in _LETTERS.findall(sample)[:1 if first_only else None]]
    return sum(word in known for word in words) / len(words) if words else float("nan")
