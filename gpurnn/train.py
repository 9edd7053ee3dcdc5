"""The language-model trainer: corpus in, trained Elman RNN out, nothing lost on interruption.

    from gpurnn.config import TrainConfig
    from gpurnn.train import train
    result = train(TrainConfig(hidden=64, steps=500, checkpoint="lm.npz"))

Each step takes the next batch, runs BPTT (``model.loss_and_grads``), clips the global
gradient norm and updates the parameters. The loss shown is the mean cross-entropy per
predicted token in nats, and perplexity is exp of it. Every ``checkpoint_every`` steps, at the
end and on Ctrl-C, one ``.npz`` file receives everything the run depends on: parameters,
optimizer state, vocabulary, config, RNG state, step, the batcher's position, the hidden state
carried between chunks and the learning-rate schedule; so a run stopped after N steps and
resumed ends bit-identical to one never stopped.
"""
from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy

from .backend import get_array_module, get_device, to_device, to_host
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import DEFAULT_STEPS, RESUMABLE_FIELDS, TrainConfig, merge_config
from .corpus import cross_entropy, load_data
from .data import Vocabulary
from .model import ElmanRNN
from .optim import HalveOnPlateau, clip_grad_norm, make_optimizer

__all__ = ["DEFAULT_LR", "TrainingError", "NonFiniteStepWarning", "TrainResult",
           "read_train_config", "Trainer", "train"]

# Learning rates for the mean loss per token, picked on the built-in corpus (400 steps of the
# default run: all reach a validation perplexity below 200; adagrad, rmsprop and adam below 100).
DEFAULT_LR = {"sgd": 1.0, "momentum": 0.2, "adagrad": 0.05, "rmsprop": 0.004, "adam": 0.003,
              "rprop": 0.001}
# Rprop's per-weight steps are capped at this many times lr. Mini-batch gradient signs are
# noisy, and with the seed's cap of 50 the steps of a language model grow until it diverges.
RPROP_STEP_MAX = 10
_SCALE_FREE = ("adagrad", "rmsprop", "adam", "rprop")  # updates that ignore the gradient's scale


class TrainingError(RuntimeError):
    """Training cannot go on (repeated non-finite steps); the last checkpoint is untouched."""


class NonFiniteStepWarning(RuntimeWarning):
    """A step had a NaN/Inf loss or gradient and was skipped."""


@dataclass
class TrainResult:
    step: int                  # steps taken by the whole run
    interrupted: bool          # stopped by Ctrl-C (SIGINT) before the last step
    checkpoint: Path
    valid_history: list        # [step, mean validation loss per token] at each evaluation
    samples: list = field(default_factory=list)  # sentences sampled at the end
    overhead: float = 0.0      # fraction of step time outside loss_and_grads and the update


def read_train_config(path) -> TrainConfig:
    """The TrainConfig saved in a checkpoint (what ``--resume`` starts from)."""
    saved = load_checkpoint(path).config
    try:
        return TrainConfig.from_dict(saved["train"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: not a language-model checkpoint of this gpurnn "
                              f"({error})") from None


class Trainer:
    """One training run: build or restore everything from ``config``, then :meth:`run`."""

    def __init__(self, config: TrainConfig, *, out=None):
        self.config = config = config.validate()
        self.out = out if out is not None else sys.stdout
        self.device = get_device(config.device)
        self.path = Path(config.checkpoint)
        self.metrics_path = Path(config.metrics or self.path.with_suffix(".jsonl"))
        for path in (self.path, self.metrics_path):
            if not path.parent.is_dir():
                raise FileNotFoundError(f"folder {path.parent} for {path.name} does not exist")
        saved = load_checkpoint(self.path) if config.resume else None
        if saved is not None:
            self._check_same_run(saved)
        self.data = load_data(config, Vocabulary.from_list(saved.vocab) if saved else None)
        size = len(self.data.vocab)
        self.model = ElmanRNN(size, config.hidden, size, device=self.device, seed=config.seed)
        lr = self._lr()
        self.optimizer = make_optimizer(config.optimizer, lr, **(
            {"step_max": RPROP_STEP_MAX * lr} if config.optimizer == "rprop" else {}))
        halve = config.schedule == "halve" or (config.schedule == "auto" and
                                               config.optimizer == "sgd")
        self.schedule = HalveOnPlateau(self.optimizer) if halve else None
        self.rng = numpy.random.default_rng(config.seed)  # for the samples at the end
        self.step, self.hidden, self.skipped, self.bad_in_a_row = 0, None, 0, 0
        self.valid_history: list = []
        self.total_steps = config.steps or (config.epochs * len(self.data.train)
                                            if config.epochs else DEFAULT_STEPS)
        self.timing = dict.fromkeys(("step", "engine", "valid", "save"), 0.0)
        self.timed_steps = 0
        self._stop = False
        if saved is not None:
            self._restore(saved)

    # ------------------------------------------------------------------------ set-up
    def _lr(self) -> float:
        config = self.config
        if config.lr is not None:
            return config.lr
        lr = DEFAULT_LR[config.optimizer]
        if config.reduction == "sum" and config.optimizer not in _SCALE_FREE:
            lr /= config.batch_size * config.seq_len  # the summed gradient is that much larger
        return lr

    def _check_same_run(self, saved) -> None:
        theirs = saved.config.get("train") if isinstance(saved.config, dict) else None
        if not isinstance(theirs, dict):
            raise CheckpointError(f"{self.path}: not a language-model checkpoint of this gpurnn")
        ours = self.config.to_dict()
        changed = [f"--{k.replace('_', '-')} {theirs.get(k)!r} -> {ours[k]!r}" for k in ours
                   if k not in RESUMABLE_FIELDS and theirs.get(k) != ours[k]]
        if changed:
            raise CheckpointError(f"{self.path} was trained with other settings; resuming "
                                  f"needs the same ones ({'; '.join(changed)})")

    def _restore(self, saved) -> None:
        try:
            for name, param in self.model.params.items():
                value = saved.params.get(name)
                if value is None or value.shape != param.shape:
                    raise ValueError(f"parameter {name} has shape "
                                     f"{None if value is None else value.shape}, expected "
                                     f"{param.shape}")
                setattr(self.model, name, value)
            extra = saved.extra
            if extra.get("fingerprint") != self.data.fingerprint:
                raise ValueError("its training data differs from this corpus (changed file, "
                                 "other Python version for the built-in corpus?)")
            self.optimizer.load_state_dict(saved.optimizer_state)
            if self.config.lr is not None and self.config.lr != saved.config["train"]["lr"]:
                self.optimizer.lr = self.config.lr  # asked for a new rate on resuming
            self.data.train.load_state_dict(extra["batcher"])
            if extra["hidden"] is not None:
                self.hidden = to_device(extra["hidden"], self.device, self.model.dtype)
            if self.schedule is not None:
                self.schedule.load_state_dict(extra["schedule"])
            self.rng.bit_generator.state = saved.rng_state
            self.skipped, self.bad_in_a_row = extra["skipped"], extra["bad_in_a_row"]
            self.valid_history = [list(item) for item in extra["valid_history"]]
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"{self.path}: cannot resume from this checkpoint "
                                  f"({type(error).__name__}: {error})") from None
        self.step = saved.step

    # ------------------------------------------------------------------------ output
    def _say(self, message: str) -> None:
        if not self.config.quiet:
            from tqdm import tqdm
            tqdm.write(message, file=self.out)

    def _record(self, **record) -> None:
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()

    def _open_metrics(self) -> None:
        kept = []
        if self.config.resume and self.metrics_path.is_file():
            # a run that crashed after its last checkpoint logged steps it will now redo
            for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line).get("step", 0) <= self.step:
                        kept.append(line + "\n")
                except (ValueError, AttributeError):
                    pass
        self._metrics = open(self.metrics_path, "w", encoding="utf-8")
        self._metrics.writelines(kept)
        self._record(event="resume" if self.config.resume else "start", step=self.step,
                     total_steps=self.total_steps, vocab=len(self.data.vocab),
                     train_tokens=self.data.train_tokens, device=str(self.device),
                     config=self.config.to_dict())

    # ------------------------------------------------------------------------ the loop
    def run(self) -> TrainResult:
        """Train to ``total_steps`` (or Ctrl-C), evaluate, save, sample; see TrainResult."""
        start = time.perf_counter()
        self._open_metrics()
        try:
            return self._run(start)
        finally:
            self._metrics.close()

    def _run(self, start: float) -> TrainResult:
        config = self.config
        if self.step >= self.total_steps:
            print(f"{self.path} is at step {self.step}, the end of a run of {self.total_steps} "
                  f"steps: nothing to train (raise --steps or --epochs)", file=self.out)
            return TrainResult(self.step, False, self.path, self.valid_history)
        if not self.data.valid:
            warnings.warn("the corpus is too small for a validation set; the schedule and "
                          "the reports use the training loss", stacklevel=2)
        self._say(f"training {self.model!r} on {self.data.train_tokens} tokens "
                  f"({len(self.data.train)} batches per epoch), steps {self.step} -> "
                  f"{self.total_steps}; loss = mean cross-entropy per token, ppl = exp(loss)")
        previous = self._install_sigint()
        from tqdm import tqdm
        bar = tqdm(total=self.total_steps, initial=self.step, unit="step", dynamic_ncols=True,
                   disable=True if config.quiet else None, file=sys.stderr)
        self._window = [0.0, 0, 0, 0.0, time.perf_counter()]  # loss, steps, tokens, norm, t
        self._since_eval = [0.0, 0]
        try:
            if self.step == 0:
                self._evaluate(regular=True)  # the untrained model's perplexity, ~ vocab size
            mark = time.perf_counter()
            while self.step < self.total_steps and not self._stop:
                for batch in self.data.train:
                    self._train_step(batch)
                    self._log(bar)
                    now = time.perf_counter()
                    self.timing["step"] += now - mark
                    self.timed_steps += 1
                    if self.step % config.eval_every == 0:
                        self._evaluate(regular=True)
                    if config.checkpoint_every and self.step % config.checkpoint_every == 0 \
                            and self.bad_in_a_row == 0 and self.step < self.total_steps:
                        self._save()
                    mark = time.perf_counter()
                    if self.step >= self.total_steps or self._stop:
                        break
        finally:
            bar.close()
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        if not self.valid_history or self.valid_history[-1][0] != self.step:
            self._evaluate(regular=False)
        self._save()
        result = TrainResult(self.step, self._stop and self.step < self.total_steps,
                             self.path, self.valid_history, overhead=self._overhead())
        if not result.interrupted and config.samples:
            from .generate import sample
            result.samples = sample(self.model, self.data.vocab, num=config.samples,
                                    level=config.level, rng=self.rng, resample_unknown=True)
        self._summary(result, time.perf_counter() - start)
        return result

    def _train_step(self, batch) -> None:
        config, model, dev = self.config, self.model, self.device
        inputs, targets = to_device(batch.inputs, dev), to_device(batch.targets, dev)
        mask = to_device(batch.mask, dev) if config.mode == "sentence" else None
        tokens = float(batch.mask.sum())
        if config.mode == "stream" and batch.index == 0:
            self.hidden = None  # a new epoch starts the streams again
        t0 = time.perf_counter()
        loss, grads, last = model.loss_and_grads(inputs, targets, truncate=config.truncate,
                                                 mask=mask, h0=self.hidden,
                                                 reduction=config.reduction)
        t1 = time.perf_counter()
        norm = clip_grad_norm(grads, config.clip) if config.clip else _global_norm(grads)
        loss = loss if config.reduction == "mean" else loss / tokens
        t2 = time.perf_counter()
        if math.isfinite(loss) and math.isfinite(norm):
            self.optimizer.step(model.params, grads)
            self.bad_in_a_row = 0
            self._window[0] += loss
            self._window[1] += 1
            self._window[3] += norm
            self._since_eval[0] += loss
            self._since_eval[1] += 1
        else:
            self._skip(loss, norm)
            if not bool(get_array_module(last).isfinite(last).all()):
                last = None
        self.timing["engine"] += (t1 - t0) + (time.perf_counter() - t2)
        self._window[2] += tokens
        if config.mode == "stream":
            self.hidden = last
        self.step += 1

    def _skip(self, loss, norm) -> None:
        self.skipped += 1
        self.bad_in_a_row += 1
        what = "gradient" if math.isfinite(loss) else "loss"
        warnings.warn(f"step {self.step + 1}: non-finite {what} "
                      f"(loss {loss}, gradient norm {norm}); step skipped "
                      f"({self.bad_in_a_row} in a row, {self.skipped} in all)",
                      NonFiniteStepWarning, stacklevel=3)
        if self.bad_in_a_row >= self.config.max_bad_steps:
            kept = (f"the last checkpoint, {self.path}, is unchanged" if self.path.exists()
                    else "no checkpoint was written")
            raise TrainingError(
                f"training stopped at step {self.step + 1}: {self.bad_in_a_row} steps in a row "
                f"had a non-finite loss or gradient; try a lower --lr or --clip; {kept}")

    def _log(self, bar) -> None:
        if self.step % self.config.log_every and self.step < self.total_steps and not self._stop:
            return
        loss_sum, steps, tokens, norm_sum, since = self._window
        now = time.perf_counter()
        record = {"step": self.step, "epoch": round(self.step / len(self.data.train), 4),
                  "loss": loss_sum / steps if steps else None,
                  "lr": self.optimizer.lr, "tokens_per_s": round(tokens / (now - since), 1),
                  "grad_norm": norm_sum / steps if steps else None, "skipped": self.skipped}
        self._record(**record)
        bar.set_postfix(loss=f"{record['loss']:.3f}" if steps else "nan",
                        tok_s=f"{record['tokens_per_s']:.0f}", lr=f"{self.optimizer.lr:.3g}",
                        refresh=False)
        bar.update(self.step - bar.n)
        self._window = [0.0, 0, 0, 0.0, now]

    # ------------------------------------------------------------------ evaluation, saving
    def evaluate(self) -> float | None:
        """Mean cross-entropy per token on the validation set (None when it is empty)."""
        return cross_entropy(self.model, self.data.valid, carry_state=self.data.carry_state)

    def _evaluate(self, *, regular: bool) -> None:
        start = time.perf_counter()
        loss = self.evaluate()
        train_sum, train_steps = self._since_eval
        train_loss = train_sum / train_steps if train_steps else None
        self._since_eval = [0.0, 0]
        measured = loss if loss is not None else train_loss
        if measured is None:
            return
        self.valid_history.append([self.step, measured])
        line = f"step {self.step}: "
        if train_loss is not None:
            line += f"train loss {train_loss:.3f}, "
        line += (f"valid loss {loss:.3f}, perplexity {math.exp(loss):.1f}" if loss is not None
                 else f"perplexity {math.exp(train_loss):.1f} (training data)")
        self._record(step=self.step, epoch=round(self.step / len(self.data.train), 4),
                     valid_loss=loss, valid_ppl=math.exp(loss) if loss is not None else None,
                     train_loss=train_loss, lr=self.optimizer.lr)
        # Only the evaluations every eval_every steps drive the schedule, so the extra one at
        # the end of a run stopped early does not change what the resumed run does.
        if regular and self.schedule is not None and self.schedule.step(measured):
            line += f"; loss rose, learning rate halved to {self.optimizer.lr:.3g}"
        self._say(line)
        self.timing["valid"] += time.perf_counter() - start

    def _save(self) -> None:
        start = time.perf_counter()
        train_config = {"train": self.config.to_dict(), "model": self.model.config}
        extra = {"batcher": self.data.train.state_dict(), "fingerprint": self.data.fingerprint,
                 "hidden": None if self.hidden is None else to_host(self.hidden),
                 "schedule": self.schedule.state_dict() if self.schedule else None,
                 "skipped": self.skipped, "bad_in_a_row": self.bad_in_a_row,
                 "valid_history": self.valid_history}
        save_checkpoint(self.path, params=self.model.params,
                        optimizer_state=self.optimizer.state_dict(), vocab=self.data.vocab,
                        config=train_config, rng_state=self.rng.bit_generator.state,
                        step=self.step, extra=extra)
        self.timing["save"] += time.perf_counter() - start

    # ------------------------------------------------------------------------ the rest
    def _install_sigint(self):
        if threading.current_thread() is not threading.main_thread():
            return None  # signals reach only the main thread

        def on_sigint(signum, frame):
            if self._stop:
                raise KeyboardInterrupt  # a second Ctrl-C: stop at once
            self._stop = True
            self._say("interrupted: saving a checkpoint after this step "
                      "(Ctrl-C again to quit without saving)")
        return signal.signal(signal.SIGINT, on_sigint)

    def _overhead(self) -> float:
        step = self.timing["step"]
        return 1.0 - self.timing["engine"] / step if step else 0.0

    def _summary(self, result: TrainResult, seconds: float) -> None:
        history = self.valid_history
        steps = max(self.timed_steps, 1)
        self._record(event="end", step=self.step, interrupted=result.interrupted,
                     seconds=round(seconds, 3), step_ms=1e3 * self.timing["step"] / steps,
                     overhead=result.overhead, valid_seconds=self.timing["valid"],
                     save_seconds=self.timing["save"], skipped=self.skipped)
        if history:
            first, last = math.exp(history[0][1]), math.exp(history[-1][1])
            self._say(f"perplexity {first:.1f} (step {history[0][0]}) -> {last:.1f} "
                      f"(step {history[-1][0]})")
        self._say(f"{seconds:.1f} s: {1e3 * self.timing['step'] / steps:.2f} ms per step, "
                  f"{100 * result.overhead:.1f}% of it outside loss_and_grads and the update; "
                  f"validation {self.timing['valid']:.1f} s, checkpoints "
                  f"{self.timing['save']:.1f} s")
        for sentence in result.samples:
            self._say(f"  > {sentence}")
        if result.interrupted:
            print(f"stopped at step {self.step} of {self.total_steps}; checkpoint saved to "
                  f"{self.path}; continue with: gpurnn train --resume --checkpoint {self.path}",
                  file=self.out)
        else:
            self._say(f"checkpoint: {self.path}  (gpurnn generate {self.path})")


def _global_norm(grads: dict) -> float:
    xp = get_array_module(*grads.values())
    return float(xp.sqrt(sum(xp.vdot(g.ravel(), g.ravel()) for g in grads.values())))


def train(config: TrainConfig | None = None, **overrides) -> TrainResult:
    """Run :class:`Trainer` on ``config`` (default TrainConfig) with ``overrides`` applied."""
    config = merge_config(config or TrainConfig(), overrides, source="train")
    return Trainer(config).run()
