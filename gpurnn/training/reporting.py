"""What a run tells: the JSON-lines metrics file, the progress bar (or timed progress lines
when the output is not a terminal), the evaluation lines and the summary at the end.

Only rank 0 reports. ``--quiet`` silences everything but warnings, errors and the final
line, which says where the checkpoint went and the last perplexity.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

from .callbacks import Callback

__all__ = ["perplexity", "bits", "BITS_KEYS", "MetricsLog", "Progress", "Reporter", "world_record",
           "world_lines"]


def perplexity(loss: float | None) -> float | None:
    """exp(loss), infinite instead of an OverflowError above ~709 nats."""
    if loss is None:
        return None
    return math.exp(loss) if loss < 709 else math.inf


# A raw-text model's loss is per character (or byte) of the text: also given in bits, the
# unit the field compares character models in.
BITS_KEYS = {"char": "bits_per_char", "byte": "bits_per_byte"}


def bits(loss: float | None) -> float | None:
    """The loss in bits (nats / ln 2)."""
    return None if loss is None else loss / math.log(2)


def _json_number(value):
    """JSON has no NaN or Infinity: those become null."""
    return value if value is None or math.isfinite(value) else None


class MetricsLog:
    """The JSON-lines file: one record per line, each flushed as written.

    The file never disagrees with the checkpoint beside it. A resumed run rewrites it
    atomically without the records past the checkpoint's step. A run that replaces the
    metrics of another (``--overwrite``) writes to a temporary beside them until its first
    checkpoint is written (:meth:`commit`); a run that fails before that leaves the old
    checkpoint and the old metrics together.
    """

    def __init__(self, path: Path):
        self.path, self.file = Path(path), None
        self.pending: Path | None = None  # the temporary that becomes self.path at commit

    def open(self, *, resume: bool, step: int) -> None:
        from .saving import stale_temporaries
        for temporary in stale_temporaries(self.path):  # a writer that died; we hold the lock
            temporary.unlink(missing_ok=True)
        replaces = self.path.is_file() and self.path.stat().st_size > 0
        if resume and replaces:
            # A run that crashed after its last checkpoint logged steps it will now redo; a
            # process killed mid-write left a torn last line. Neither is kept.
            text = self.path.read_text(encoding="utf-8", errors="replace")
            kept = []
            for line in text.splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and record.get("step", 0) <= step:
                    kept.append(line + "\n")
            if "".join(kept) == text:  # nothing to drop: go on appending
                self.file = open(self.path, "a", encoding="utf-8")
                return
            try:  # atomically; on a disk too full for a copy, in place
                self.file = self._temporary()
                self.file.writelines(kept)
                self.file.flush()
                self.commit()
            except OSError:
                self.close()
                self.file = open(self.path, "w", encoding="utf-8")
                self.file.writelines(kept)
        elif replaces:
            self.file = self._temporary()
        else:
            self.file = open(self.path, "w", encoding="utf-8")

    def _temporary(self):
        import tempfile
        from .checkpoint import file_mode
        descriptor, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp",
                                            dir=self.path.parent)
        os.fchmod(descriptor, file_mode(self.path))  # not mkstemp's 0600: the file's own
        self.pending = Path(name)
        return os.fdopen(descriptor, "w", encoding="utf-8")

    def commit(self) -> None:
        """The records written so far replace the file at ``path`` (called once the run's
        first checkpoint is written); the records that follow go on into it."""
        if self.pending is not None:
            os.replace(self.pending, self.path)  # the open file follows its new name
            self.pending = None

    def write(self, record: dict) -> None:
        if self.file is None:
            return
        try:
            self.file.write(json.dumps(record, allow_nan=False) + "\n")
            self.file.flush()
        except OSError as error:  # the checkpoint matters more: go on training without
            warnings.warn(f"metrics file {self.path}: {error.strerror or error}; no more "
                          f"metrics are recorded in this run", RuntimeWarning, stacklevel=2)
            self.close()

    def close(self) -> None:
        if self.file is not None:
            try:
                self.file.close()
            except OSError:
                pass
            self.file = None
        if self.pending is not None:  # no checkpoint of this run: the old metrics stay
            self.pending.unlink(missing_ok=True)
            self.pending = None


class Progress:
    """A tqdm bar on a terminal; otherwise (a file, a pipe, a batch job's log) a plain line
    at most every ``log_every_seconds`` (every record when 0). Lines from :meth:`write`
    go to ``out`` without breaking the bar."""

    def __init__(self, config, total: int, initial: int, out, enabled: bool):
        from tqdm import tqdm
        self.out, self.total, self.enabled = out, total, enabled
        self.every = config.log_every_seconds
        stream = sys.stderr
        self.terminal = enabled and hasattr(stream, "isatty") and stream.isatty()
        self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                        disable=not self.terminal, file=stream)
        self.started = self.last_line = time.perf_counter()
        self.first_step = initial

    def write(self, line: str) -> None:
        from tqdm import tqdm
        tqdm.write(line, file=self.out)

    def line_due(self, now: float | None = None) -> bool:
        """Whether a progress line is due (never on a terminal: the bar shows it)."""
        now = time.perf_counter() if now is None else now
        return self.enabled and not self.terminal and self.every > 0 and \
            now - self.last_line >= self.every

    def update(self, step: int, record: dict) -> None:
        if self.terminal:
            loss = record["loss"]
            self.bar.set_postfix(loss="nan" if loss is None else f"{loss:.3f}",
                                 tok_s=f"{record['tokens_per_s']:.0f}",
                                 lr=f"{record['lr']:.3g}", refresh=False)
            self.bar.update(step - self.bar.n)
            return
        now = time.perf_counter()
        if self.enabled and (self.line_due(now) or self.every == 0):
            self.last_line = now
            done = step - self.first_step
            rate = done / (now - self.started) if now > self.started else 0.0
            left = f", about {_duration((self.total - step) / rate)} left" if rate else ""
            loss = "nan" if record["loss"] is None else f"{record['loss']:.3f}"
            self.write(f"step {step}/{self.total}: loss {loss}, "
                       f"{record['tokens_per_s']:.0f} tokens/s, lr {record['lr']:.3g}{left}")

    def close(self) -> None:
        self.bar.close()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Reporter(Callback):
    """Metrics records every ``--log-every`` steps and at each evaluation, progress, the
    evaluation lines, the samples and the summary (rank 0 only)."""

    def __init__(self, config, comm, out, metrics_path: Path):
        self.config, self.comm, self.out = config, comm, out
        self.root = comm.rank == 0
        self.metrics = MetricsLog(metrics_path)
        self.progress = None
        self._window = [0.0, 0, 0.0, 0.0, time.perf_counter()]  # loss, steps, tokens, norm, t

    # --------------------------------------------------------------------------- saying
    def say(self, message: str) -> None:
        """A line unless --quiet (rank 0 only)."""
        if self.root and not self.config.quiet:
            if self.progress is not None:
                self.progress.write(message)
            else:
                print(message, file=self.out)

    def final(self, message: str) -> None:
        """A line even with --quiet (rank 0 only)."""
        if self.root:
            print(message, file=self.out, flush=True)

    # --------------------------------------------------------------------------- events
    def on_start(self, trainer) -> None:
        config = self.config
        if self.root:
            self.metrics.open(resume=config.resume, step=trainer.step)
        self.metrics.write(dict(
            event="resume" if config.resume else "start", step=trainer.step, pid=os.getpid(),
            total_steps=trainer.total_steps, vocab=len(trainer.data.vocab),
            train_tokens=trainer.data.train_tokens, device=str(trainer.device),
            config=config.to_dict(), **world_record(trainer)))
        if not trainer.data.valid and self.root:
            why = ("--valid-fraction 0 holds nothing out" if not config.valid_fraction else
                   f"the corpus is too small for a validation set at --valid-fraction "
                   f"{config.valid_fraction}")
            warnings.warn(f"{why}; the schedule and the reports use the training loss",
                          stacklevel=2)
        unit = {"char": "characters", "byte": "bytes"}.get(config.level, "tokens")
        self.say(f"training {trainer.model!r} on {trainer.data.train_tokens} {unit} "
                 f"({len(trainer.data.train)} batches per epoch), steps {trainer.step} -> "
                 f"{trainer.total_steps}; loss = mean cross-entropy per token, ppl = exp(loss)")
        for line in world_lines(trainer):
            self.say(line)
        self.progress = Progress(config, trainer.total_steps, trainer.step, self.out,
                                 enabled=self.root and not config.quiet)
        self._window[4] = time.perf_counter()

    def on_step_end(self, trainer) -> None:
        loss, norm, tokens, good = trainer.last_step
        window = self._window
        if good:
            window[0] += loss
            window[1] += 1
            window[3] += norm
        window[2] += tokens
        step = trainer.step
        due = not step % self.config.log_every or step >= trainer.total_steps or \
            trainer.stopper.stopped
        if not due and (self.progress is None or not self.progress.line_due()):
            return
        loss_sum, steps, tokens, norm_sum, since = window
        now = time.perf_counter()
        record = {"step": step, "epoch": round(step / len(trainer.data.train), 4),
                  "loss": loss_sum / steps if steps else None, "lr": trainer.optimizer.lr,
                  "tokens_per_s": round(tokens / (now - since), 1) if now > since else 0.0,
                  "grad_norm": norm_sum / steps if steps else None,
                  "skipped": trainer.guard.skipped}
        if self.progress is not None:
            self.progress.update(step, record)
        if due:  # the metrics file gets one record per --log-every steps
            self.metrics.write(record)
            self._window = [0.0, 0, 0.0, 0.0, now]

    def on_eval(self, trainer, record: dict) -> None:
        unit = BITS_KEYS.get(self.config.level)
        if unit and record["valid_loss"] is not None:
            record = {**record, f"valid_{unit}": bits(record["valid_loss"])}
        self.metrics.write({key: _json_number(value) if isinstance(value, float) else value
                            for key, value in record.items()})
        line = f"step {record['step']}: "
        if record["train_loss"] is not None:
            line += f"train loss {record['train_loss']:.3f}, "
        loss = record["valid_loss"]
        line += (f"valid loss {loss:.3f}, perplexity {perplexity(loss):.1f}" if loss is not None
                 else f"perplexity {perplexity(record['train_loss']):.1f} (training data)")
        if unit and loss is not None:
            line += f", {bits(loss):.3f} {unit.replace('_', ' ')}"
        if record.get("lr_halved"):
            line += f"; loss rose, learning rate halved to {record['lr']:.3g}"
        self.say(line)

    def on_end(self, trainer, result) -> None:
        if self.progress is not None:
            self.progress.close()
        config = self.config
        if not result.interrupted and config.samples and self.root:
            from .generate import END_SAMPLE_LENGTH, sample
            raw = config.level in BITS_KEYS
            result.samples = sample(trainer.model, trainer.data.vocab, num=config.samples,
                                    level=config.level, rng=trainer.rng,
                                    warmup=trainer.data.warmup,
                                    **({"length": END_SAMPLE_LENGTH} if raw else {}))
        self._summary(trainer, result)

    def on_close(self, trainer) -> None:
        if self.progress is not None:
            self.progress.close()
        self.metrics.close()

    # --------------------------------------------------------------------------- summary
    def _summary(self, trainer, result) -> None:
        timing, history = trainer.timing, trainer.valid_history
        steps = max(trainer.timed_steps, 1)
        self.metrics.write(dict(
            event="end", step=trainer.step, interrupted=result.interrupted,
            stopped_by=result.stopped_by, seconds=round(result.seconds, 3),
            step_ms=1e3 * timing["step"] / steps, overhead=result.overhead,
            valid_seconds=timing["valid"], save_seconds=timing["save"],
            skipped=trainer.guard.skipped,
            **({"allreduce_seconds": timing["allreduce"]} if self.comm.size > 1 else {})))
        last = ""
        if history:
            first, final = perplexity(history[0][1]), perplexity(history[-1][1])
            unit = BITS_KEYS.get(self.config.level)
            in_bits = (f" ({bits(history[0][1]):.3f} -> {bits(history[-1][1]):.3f} "
                       f"{unit.replace('_', ' ')})") if unit else ""
            self.say(f"perplexity {first:.1f} (step {history[0][0]}) -> {final:.1f} "
                     f"(step {history[-1][0]}){in_bits}")
            last = f", perplexity {final:.1f} at step {history[-1][0]}"
        reduce = ""
        if self.comm.size > 1:
            share = timing["allreduce"] / timing["step"] if timing["step"] else 0
            reduce = (f", {100 * share:.1f}% summing the gradients of the {self.comm.size} "
                      f"processes")
        self.say(f"{result.seconds:.1f} s: {1e3 * timing['step'] / steps:.2f} ms per step, "
                 f"{100 * result.overhead:.1f}% of it outside loss_and_grads and the "
                 f"update{reduce}; validation {timing['valid']:.1f} s, checkpoints "
                 f"{timing['save']:.1f} s")
        if result.samples:
            from .generate import format_samples
            self.say(format_samples(result.samples, self.config.level))
        path = trainer.path
        if result.interrupted:
            self.final(f"stopped at step {trainer.step} of {trainer.total_steps} by "
                       f"{result.stopped_by}; checkpoint saved to {path}{last}; continue "
                       f"with: gpurnn train --resume --checkpoint {path}")
        else:
            self.final(f"checkpoint: {path} (step {trainer.step}{last})  "
                       f"(gpurnn generate {path})")


def world_record(trainer) -> dict:
    """The start record's facts about the processes of the run."""
    record = {}
    if trainer.comm.size > 1:
        record = {"world_size": trainer.comm.size,
                  "global_batch": trainer.comm.size * trainer.config.batch_size,
                  "communicator": trainer.comm.name, "allreduce_bytes": trainer.flat.nbytes}
    if trainer.moved_from is not None:
        record["resumed_from_world_size"] = trainer.moved_from[0]
    return record


def world_lines(trainer) -> list:
    """Lines about the processes of the run and a move from another number of them."""
    comm, config, lines = trainer.comm, trainer.config, []
    if comm.size > 1:
        lines.append(f"data-parallel over {comm.name}: each process takes "
                     f"{config.batch_size} of the {comm.size * config.batch_size} sequences "
                     f"of a global batch; {trainer.flat.nbytes / 1e3:.1f} kB summed per step")
    if trainer.moved_from is not None:
        size, before = trainer.moved_from
        now = trainer.data.train.state_dict()
        lines.append(f"the checkpoint was written by {size} process(es), this run has "
                     f"{comm.size}: other global batches, so the data position moved from "
                     f"batch {before['index']} of {before['num_batches']} to "
                     f"{now['index']} of {now['num_batches']} (epoch {now['epoch']})"
                     + ("; the streams' hidden state starts again"
                        if config.mode == "stream" else ""))
    return lines
