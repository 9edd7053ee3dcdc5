"""Loss and perplexity curves from the JSON-lines metrics that ``gpurnn train`` writes.

Records with ``loss`` are training windows (mean over ``log_every`` steps); records with
``valid_loss`` are evaluations. matplotlib is optional (``pip install 'gpurnn[plot]'``).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

__all__ = ["read_metrics", "plot_metrics"]


def read_metrics(path) -> list[dict]:
    """The records of a metrics file; a line that is not a JSON object raises ValueError
    naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metrics file {path} does not exist")
    records = []
    with open(path, encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: not a JSON object; expected the metrics "
                                 f"lines written by gpurnn train")
            records.append(record)
    return records


def _series(records, key):
    points = [(r["step"], r[key]) for r in records
              if isinstance(r.get(key), (int, float)) and isinstance(r.get("step"), int)
              and math.isfinite(r[key])]
    return [p[0] for p in points], [p[1] for p in points]


def plot_metrics(path, output=None) -> Path:
    """Draw training/validation loss (left) and validation perplexity (right) to a PNG.

    Returns the image path (default: ``path`` with ``.png``). Raises ImportError with the
    install command when matplotlib is missing, ValueError when there is nothing to plot.
    """
    records = read_metrics(path)
    train_steps, train_loss = _series(records, "loss")
    valid_steps, valid_loss = _series(records, "valid_loss")
    if not train_steps and not valid_steps:
        raise ValueError(f"{path}: no loss records to plot")
    try:
        import matplotlib
        matplotlib.use("Agg")  # files only, no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("gpurnn plot needs matplotlib: pip install 'gpurnn[plot]' "
                          "(or pip install matplotlib)") from None
    output = Path(output) if output else Path(path).with_suffix(".png")
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(train_steps, train_loss, label="training (window mean)", linewidth=1)
    if valid_steps:
        left.plot(valid_steps, valid_loss, "o-", label="validation", markersize=3)
        right.plot(valid_steps, [math.exp(v) for v in valid_loss], "o-", color="C1",
                   markersize=3)
    else:
        right.plot(train_steps, [math.exp(v) for v in train_loss], color="C0", linewidth=1)
    left.set(xlabel="step", ylabel="cross-entropy per token (nats)", title="loss")
    left.legend()
    right.set(xlabel="step", ylabel="perplexity", yscale="log",
              title="validation perplexity" if valid_steps else "training perplexity")
    for axes in (left, right):
        axes.grid(alpha=0.3)
    figure.suptitle(Path(path).name)
    figure.tight_layout()
    figure.savefig(output, dpi=100)
    plt.close(figure)
    return output
