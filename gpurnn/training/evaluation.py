"""A trained language model scored on a held-out file: loss, perplexity, bits per character.

    from gpurnn.training.evaluation import evaluate_file
    result = evaluate_file("gpurnn-lm.npz", "held-out.txt")
    print(result.loss, result.perplexity, result.bits)

The file is read as the model was trained (its level, its mode, its ``--seq-len``), in
batches of as many parallel rows as its training run validated with; a stream's hidden state
is carried from chunk to chunk. So a model's own held-out stretch, written to a file, scores
what its last validation did.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from . import data as D
from .config import TrainConfig
from .corpus import cross_entropy_sums, eval_rows, sentence_batches, stream_chunks
from .generate import load_language_model
from .reporting import BITS_KEYS, bits, perplexity

__all__ = ["Evaluation", "evaluate_file", "evaluation_config"]


@dataclass
class Evaluation:
    """What :func:`evaluate_file` measured. ``loss`` is the mean cross-entropy per scored
    token in nats; ``bits`` the same in bits, for char and byte models only (per character
    or per byte of the file, ``unit``)."""

    checkpoint: str
    file: str
    level: str
    step: int
    tokens: int          # targets scored
    unknown: int         # of those, tokens outside the vocabulary (read as UNKNOWN_TOKEN)
    loss: float
    perplexity: float
    bits: float | None
    unit: str            # "char", "byte" or "token"

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        """One line for the terminal."""
        text = (f"{self.file}: {self.tokens:,} {self.unit}s, loss {self.loss:.4f} nats per "
                f"{self.unit}, perplexity {self.perplexity:.3f}")
        if self.bits is not None:
            text += f", {self.bits:.4f} bits per {self.unit}"
        if self.unknown:
            text += f" ({self.unknown:,} outside the vocabulary, read as {D.UNKNOWN_TOKEN})"
        return text + f"  [{self.checkpoint}, step {self.step}]"


def evaluation_config(saved_config: dict, level: str, *, batch_size: int | None = None,
                      seq_len: int | None = None) -> TrainConfig:
    """The training settings that say how to read a file (level, mode, sequence length,
    CSV column, batch size), from a checkpoint's configuration; a model saved with
    gpurnn.save rather than trained has only its level, and the defaults fill the rest."""
    train = saved_config.get("train", {}) if isinstance(saved_config, dict) else {}
    keep = {"level", "mode", "seq_len", "batch_size", "csv_column"}
    values = {key: value for key, value in train.items() if key in keep}
    values["level"] = level
    values.setdefault("mode", "stream")
    if batch_size is not None:
        values["batch_size"] = batch_size
    if seq_len is not None:
        values["seq_len"] = seq_len
    return TrainConfig.from_dict(values)


def evaluate_file(checkpoint, file, *, device: str = "cpu", batch_size: int | None = None,
                  seq_len: int | None = None) -> Evaluation:
    """Score the language model in ``checkpoint`` on ``file``.

    Args:
        batch_size: parallel rows of an evaluation batch (default: as the training run's
            validation, max(its --batch-size, 32)); fewer rows start fewer streams from the
            zero state.
        seq_len: steps per chunk (default: the training run's).
    Raises:
        CheckpointError: not a language-model checkpoint. ValueError: a file too short to
            score (under 2 tokens), or not readable at the model's level.
    """
    lm = load_language_model(checkpoint, device=device)
    config = evaluation_config(lm.config, lm.level, seq_len=seq_len)
    rows = batch_size if batch_size is not None else eval_rows(config)
    if lm.level in D.RAW_LEVELS:
        ids = lm.vocab.encode(D.load_text(file, level=lm.level, column=config.csv_column))
        if len(ids) < 2:
            raise ValueError(f"{file}: {len(ids)} {lm.level}s; at least 2 are needed to score "
                             f"a prediction")
        batches = stream_chunks(ids, rows, config.seq_len)
        unit = lm.level
    else:
        sentences = D.encode_sentences(D.load_corpus(file, level=lm.level,
                                                     column=config.csv_column), lm.vocab)
        batches = sentence_batches(sentences, config, rows)
        unit = "token"
    with lm.model.device.use():
        total, count = cross_entropy_sums(lm.model, batches, carry_state=config.mode == "stream")
    unknown = sum(int(((targets == lm.vocab.unknown_id) * weights).sum())
                  for _, targets, weights in batches) if lm.vocab.unknown_id is not None else 0
    loss = total / count
    return Evaluation(str(checkpoint), str(file), lm.level, lm.step, int(count), unknown,
                      loss, perplexity(loss), bits(loss) if lm.level in BITS_KEYS else None,
                      unit)
