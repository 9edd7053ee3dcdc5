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

Under ``mpirun -n N`` (see :mod:`gpurnn.distributed`) each of the N processes trains on its
rows of every global batch of N × ``batch_size``; the gradients, the loss and the token
count are summed across them in one call per step, so every process takes the same step.
Rank 0 alone writes the checkpoint and the metrics and shows the progress.
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

from .._version import __version__
from ..engine.backend import get_array_module, get_device, to_device, to_host
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import DEFAULT_STEPS, RESUMABLE_FIELDS, TrainConfig, merge_config
from .corpus import cross_entropy, cross_entropy_sums, load_data
from .data import Batch, Vocabulary
from .distributed import (Communicator, FlatGradients, abort_all_on_failure, collective,
                          device_for_rank, params_digest, world)
from ..engine.factory import make_model, model_spec
from .optim import HalveOnPlateau, clip_grad_norm, global_norm, make_optimizer

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
# Settings the ranks of one run may hold differently: each its own GPU, and what only rank 0
# uses (the corpus is compared by a hash of its content instead of its path).
_PER_RANK_FIELDS = ("device", "quiet", "checkpoint", "metrics", "corpus")


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

    def __init__(self, config: TrainConfig, *, out=None, comm: Communicator | None = None):
        self.config = config = config.validate()
        self.out = out if out is not None else sys.stdout
        # The processes of this run (gpurnn.distributed.world(): one, unless under mpirun).
        self.comm = comm = comm if comm is not None else world()
        self.path = Path(config.checkpoint)
        self.metrics_path = Path(config.metrics or self.path.with_suffix(".jsonl"))
        # Every set-up error is raised by all ranks together, so that none waits for another.
        saved = comm.on_root(self._read_checkpoint)  # only rank 0 touches the files
        comm.collectively(lambda: self._build(saved))
        comm.agree("their settings and data", self._identity())

    # ------------------------------------------------------------------------ set-up
    def _read_checkpoint(self):
        for path in (self.path, self.metrics_path):
            if not path.parent.is_dir():
                raise FileNotFoundError(f"folder {path.parent} for {path.name} does not exist")
        return load_checkpoint(self.path) if self.config.resume else None

    def _build(self, saved) -> None:
        config, comm = self.config, self.comm
        self.device = get_device(device_for_rank(config.device, comm))
        if saved is not None:
            self._check_same_run(saved)
        self.data = load_data(config, Vocabulary.from_list(saved.vocab) if saved else None,
                              world_size=comm.size)
        size = len(self.data.vocab)
        self.model = make_model(config.cell, size, config.hidden, size, num_layers=config.layers,
                                dtype=config.dtype, device=self.device, seed=config.seed)
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
        self.timing = dict.fromkeys(("step", "engine", "allreduce", "valid", "save"), 0.0)
        self.timed_steps = 0
        # Ctrl-C asks for a stop (on this rank); with several ranks the request travels with
        # the gradients and all of them stop after the same step.
        self._stop_requested, self._stop_agreed = False, False
        # One buffer for everything summed across ranks each step: the gradients, then the
        # loss, the token count and the stop requests.
        self.flat = FlatGradients(self.model.params, extra=3) if comm.size > 1 else None
        self.moved_from = None  # (world size, position) of a checkpoint from another world size
        if saved is not None:
            self._restore(saved)

    def _identity(self) -> dict:
        """What every rank of a run must share (compared across ranks at start-up)."""
        facts = {f"--{name.replace('_', '-')}": value
                 for name, value in self.config.to_dict().items() if name not in _PER_RANK_FIELDS}
        facts.update({"the data (a hash)": self.data.fingerprint, "gpurnn": __version__,
                      "the device kind": self.device.kind, "the step resumed at": self.step})
        return facts

    @property
    def _stop(self) -> bool:
        return self._stop_requested if self.comm.size == 1 else self._stop_agreed

    def _lr(self) -> float:
        config = self.config
        if config.lr is not None:
            return config.lr
        lr = DEFAULT_LR[config.optimizer]
        if config.reduction == "sum" and config.optimizer not in _SCALE_FREE:
            # the summed gradient is as much larger as the global batch has tokens
            lr /= config.batch_size * self.comm.size * config.seq_len
        return lr

    def _check_same_run(self, saved) -> None:
        theirs = saved.config.get("train") if isinstance(saved.config, dict) else None
        if not isinstance(theirs, dict):
            raise CheckpointError(f"{self.path}: not a language-model checkpoint of this gpurnn")
        ours = self.config.to_dict()
        theirs = {**TrainConfig().to_dict(), **theirs}  # settings added since: their defaults
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
            position, hidden = extra["batcher"], extra["hidden"]
            world_size = extra.get("world_size", 1)
            if world_size != self.comm.size:
                # Another number of processes: another global batch, so other batches per
                # epoch and, in stream mode, other streams. Continue at the same share of
                # the epoch, the streams' hidden state starting again.
                self.moved_from = (world_size, position)
                position, hidden = _moved_position(position, len(self.data.train)), None
            self.data.train.load_state_dict(position)
            if hidden is not None:  # the saved state holds every rank's rows, interleaved
                rows = hidden[self.comm.rank::self.comm.size]
                self.hidden = self.model.unpack_state(
                    to_device(rows, self.device, self.model.dtype))
            if self.schedule is not None:
                self.schedule.load_state_dict(extra["schedule"])
            self.rng.bit_generator.state = saved.rng_state
            self.skipped, self.bad_in_a_row = extra["skipped"], extra["bad_in_a_row"]
            self.valid_history = [list(item) for item in extra["valid_history"]]
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"{self.path}: cannot resume from this checkpoint "
                                  f"({type(error).__name__}: {error})") from None
        self.step = saved.step
        if self.moved_from is not None and self.config.epochs:
            batcher = self.data.train
            self.total_steps = self.step + ((self.config.epochs - batcher.epoch) * len(batcher)
                                            - batcher.index)

    # ------------------------------------------------------------------------ output
    def _say(self, message: str) -> None:
        if not self.config.quiet and self.comm.rank == 0:
            from tqdm import tqdm
            tqdm.write(message, file=self.out)

    def _record(self, **record) -> None:
        if self._metrics is None:  # not rank 0
            return
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()

    def _open_metrics(self) -> None:
        self._metrics = None
        if self.comm.rank != 0:
            return
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
                     config=self.config.to_dict(), **self._world_record())

    def _world_record(self) -> dict:
        record = {}
        if self.comm.size > 1:
            record = {"world_size": self.comm.size,
                      "global_batch": self.comm.size * self.config.batch_size,
                      "communicator": self.comm.name, "allreduce_bytes": self.flat.nbytes}
        if self.moved_from is not None:
            record["resumed_from_world_size"] = self.moved_from[0]
        return record

    # ------------------------------------------------------------------------ the loop
    def run(self) -> TrainResult:
        """Train to ``total_steps`` (or Ctrl-C), evaluate, save, sample; see TrainResult."""
        start = time.perf_counter()
        # one rank failing stops all; on a GPU, this rank's is the current device throughout
        with abort_all_on_failure(self.comm, "gpurnn train"), self.device.use():
            self._open_metrics()
            try:
                return self._run(start)
            finally:
                if self._metrics is not None:
                    self._metrics.close()

    def _run(self, start: float) -> TrainResult:
        config = self.config
        if self.step >= self.total_steps:
            if self.comm.rank == 0:
                print(f"{self.path} is at step {self.step}, the end of a run of "
                      f"{self.total_steps} steps: nothing to train (raise --steps or --epochs)",
                      file=self.out)
            return TrainResult(self.step, False, self.path, self.valid_history)
        if not self.data.valid and self.comm.rank == 0:
            warnings.warn("the corpus is too small for a validation set; the schedule and "
                          "the reports use the training loss", stacklevel=2)
        self._say(f"training {self.model!r} on {self.data.train_tokens} tokens "
                  f"({len(self.data.train)} batches per epoch), steps {self.step} -> "
                  f"{self.total_steps}; loss = mean cross-entropy per token, ppl = exp(loss)")
        for line in self._world_lines():
            self._say(line)
        previous = self._install_sigint()
        from tqdm import tqdm
        bar = tqdm(total=self.total_steps, initial=self.step, unit="step", dynamic_ncols=True,
                   disable=True if config.quiet or self.comm.rank else None, file=sys.stderr)
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
        if not result.interrupted and config.samples and self.comm.rank == 0:
            from .generate import sample
            result.samples = sample(self.model, self.data.vocab, num=config.samples,
                                    level=config.level, rng=self.rng, warmup=self.data.warmup)
        self._summary(result, time.perf_counter() - start)
        return result

    def _train_step(self, batch) -> None:
        config, model, dev, comm = self.config, self.model, self.device, self.comm
        if comm.size > 1:  # this rank's rows of the global batch
            batch = _rows(batch, slice(comm.rank, None, comm.size), config.mode == "sentence")
        local = len(batch.inputs) > 0  # the last sentence batch may have fewer rows than ranks
        if local:
            inputs, targets = to_device(batch.inputs, dev), to_device(batch.targets, dev)
            mask = to_device(batch.mask, dev) if config.mode == "sentence" else None
        tokens = float(batch.mask.sum())
        if config.mode == "stream" and batch.index == 0:
            self.hidden = None  # a new epoch starts the streams again
        t0 = time.perf_counter()
        loss, grads, last = 0.0, None, None
        if local:
            # Several ranks sum over their tokens here; the mean is taken over all ranks' tokens.
            loss, grads, last = model.loss_and_grads(
                inputs, targets, truncate=config.truncate, mask=mask, h0=self.hidden,
                reduction=config.reduction if comm.size == 1 else "sum")
        t1 = time.perf_counter()
        if comm.size > 1:
            loss, grads, tokens = self._all_reduce(loss, grads, tokens)
        t_reduced = time.perf_counter()
        norm = clip_grad_norm(grads, config.clip) if config.clip else global_norm(grads)
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
            if last is not None and not _finite_state(last):
                last = None
        self.timing["engine"] += (t1 - t0) + (time.perf_counter() - t2)
        self.timing["allreduce"] += t_reduced - t1
        self._window[2] += tokens
        if config.mode == "stream":
            self.hidden = last
        self.step += 1

    def _all_reduce(self, loss: float, grads: dict | None, tokens: float):
        """Sum the gradients, the loss, the token count and the stop requests of all ranks,
        in one call on one flat buffer; returns the global (loss, grads, tokens), the loss
        and the gradients divided by the global token count for ``--reduction mean``."""
        flat = self.flat
        if grads is None:
            flat.zero()
        else:
            flat.pack(grads)
        flat.set_extra([loss, tokens, float(self._stop_requested)])
        self.comm.allreduce_(flat.buffer)
        loss, tokens, stops = flat.get_extra()
        if self.config.reduction == "mean":
            flat.values *= 1.0 / tokens
            loss /= tokens
        if stops and not self._stop_agreed and not self._stop_requested:
            self._say(f"a stop was asked on {int(stops)} of {self.comm.size} processes: "
                      f"saving a checkpoint after this step")
        self._stop_agreed = self._stop_agreed or stops > 0
        return loss, flat.grads, tokens

    def _skip(self, loss, norm) -> None:
        self.skipped += 1
        self.bad_in_a_row += 1
        what = "gradient" if math.isfinite(loss) else "loss"
        if self.comm.rank == 0:  # every rank skips the same steps (the numbers are global)
            warnings.warn(f"step {self.step + 1}: non-finite {what} "
                          f"(loss {loss}, gradient norm {norm}); step skipped "
                          f"({self.bad_in_a_row} in a row, {self.skipped} in all)",
                          NonFiniteStepWarning, stacklevel=3)
        if self.bad_in_a_row >= self.config.max_bad_steps:
            kept = (f"the last checkpoint, {self.path}, is unchanged" if self.path.exists()
                    else "no checkpoint was written")
            raise collective(TrainingError(
                f"training stopped at step {self.step + 1}: {self.bad_in_a_row} steps in a row "
                f"had a non-finite loss or gradient; try a lower --lr or --clip; {kept}"))

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
        comm = self.comm
        if comm.size == 1:
            return cross_entropy(self.model, self.data.valid, carry_state=self.data.carry_state)
        # each rank measures its rows of every validation batch, and the sums are added up
        sums = numpy.array(cross_entropy_sums(self.model, self.data.valid,
                                              carry_state=self.data.carry_state,
                                              rows=slice(comm.rank, None, comm.size)))
        total, count = comm.allreduce_(sums)
        return total / count if count else None

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
        hidden = self._hidden_of_all_rows()
        if self.comm.size > 1:  # the ranks' parameters must not have drifted apart
            self.comm.agree(f"the parameters at step {self.step}",
                            {"parameters (a hash)": params_digest(self.model.params)})
        if self.comm.rank == 0:
            train_config = {"train": self.config.to_dict(), "model": model_spec(self.model)}
            extra = {"batcher": self.data.train.state_dict(),
                     "fingerprint": self.data.fingerprint, "hidden": hidden,
                     "schedule": self.schedule.state_dict() if self.schedule else None,
                     "skipped": self.skipped, "bad_in_a_row": self.bad_in_a_row,
                     "valid_history": self.valid_history, "world_size": self.comm.size,
                     "warmup": self.data.warmup}  # read by gpurnn generate before sampling
            save_checkpoint(self.path, params=self.model.params,
                            optimizer_state=self.optimizer.state_dict(), vocab=self.data.vocab,
                            config=train_config, rng_state=self.rng.bit_generator.state,
                            step=self.step, extra=extra)
        self.timing["save"] += time.perf_counter() - start

    def _hidden_of_all_rows(self):
        """The carried hidden state of the whole global batch on the host, packed as
        (batch, size) rows (rank 0's; rows interleaved as :meth:`_train_step` shares them
        out), or None."""
        comm = self.comm
        mine = None if self.hidden is None else to_host(self.model.pack_state(self.hidden))
        if comm.size == 1:
            return mine
        parts = comm.gather(mine)
        if comm.rank != 0 or any(part is None for part in parts):
            return None
        rows = numpy.empty((sum(map(len, parts)),) + parts[0].shape[1:], parts[0].dtype)
        for rank, part in enumerate(parts):
            rows[rank::comm.size] = part
        return rows

    # ------------------------------------------------------------------------ the rest
    def _install_sigint(self):
        if threading.current_thread() is not threading.main_thread():
            return None  # signals reach only the main thread

        def on_sigint(signum, frame):
            if self._stop_requested:
                raise KeyboardInterrupt  # a second Ctrl-C: stop at once
            self._stop_requested = True
            self._say("interrupted: saving a checkpoint after this step "
                      "(Ctrl-C again to quit without saving)")
        return signal.signal(signal.SIGINT, on_sigint)

    def _overhead(self) -> float:
        step = self.timing["step"]
        return 1.0 - (self.timing["engine"] + self.timing["allreduce"]) / step if step else 0.0

    def _world_lines(self) -> list:
        comm, config, lines = self.comm, self.config, []
        if comm.size > 1:
            lines.append(f"data-parallel over {comm.name}: each process takes "
                         f"{config.batch_size} of the {comm.size * config.batch_size} sequences "
                         f"of a global batch; {self.flat.nbytes / 1e3:.1f} kB summed per step")
        if self.moved_from is not None:
            size, before = self.moved_from
            now = self.data.train.state_dict()
            lines.append(f"the checkpoint was written by {size} process(es), this run has "
                         f"{comm.size}: other global batches, so the data position moved from "
                         f"batch {before['index']} of {before['num_batches']} to "
                         f"{now['index']} of {now['num_batches']} (epoch {now['epoch']})"
                         + ("; the streams' hidden state starts again"
                            if config.mode == "stream" else ""))
        return lines

    def _summary(self, result: TrainResult, seconds: float) -> None:
        history = self.valid_history
        steps = max(self.timed_steps, 1)
        self._record(event="end", step=self.step, interrupted=result.interrupted,
                     seconds=round(seconds, 3), step_ms=1e3 * self.timing["step"] / steps,
                     overhead=result.overhead, valid_seconds=self.timing["valid"],
                     save_seconds=self.timing["save"], skipped=self.skipped,
                     **({"allreduce_seconds": self.timing["allreduce"]}
                        if self.comm.size > 1 else {}))
        if history:
            first, last = math.exp(history[0][1]), math.exp(history[-1][1])
            self._say(f"perplexity {first:.1f} (step {history[0][0]}) -> {last:.1f} "
                      f"(step {history[-1][0]})")
        reduce = ""
        if self.comm.size > 1:
            share = self.timing["allreduce"] / self.timing["step"] if self.timing["step"] else 0
            reduce = (f", {100 * share:.1f}% summing the gradients of the {self.comm.size} "
                      f"processes")
        self._say(f"{seconds:.1f} s: {1e3 * self.timing['step'] / steps:.2f} ms per step, "
                  f"{100 * result.overhead:.1f}% of it outside loss_and_grads and the "
                  f"update{reduce}; validation {self.timing['valid']:.1f} s, checkpoints "
                  f"{self.timing['save']:.1f} s")
        for sentence in result.samples:
            self._say(f"  > {sentence}")
        if result.interrupted and self.comm.rank == 0:
            print(f"stopped at step {self.step} of {self.total_steps}; checkpoint saved to "
                  f"{self.path}; continue with: gpurnn train --resume --checkpoint {self.path}",
                  file=self.out)
        else:
            self._say(f"checkpoint: {self.path}  (gpurnn generate {self.path})")


def _rows(batch: Batch, rows: slice, trim: bool) -> Batch:
    """The rows ``rows`` of ``batch``; with ``trim``, cut to the longest of those rows (the
    masks are right-padded), so a rank of short sentences does not loop over padding."""
    mask = batch.mask[rows]
    steps = int(mask.sum(axis=1).max()) if trim and len(mask) else mask.shape[1]
    inputs, targets = batch.inputs[rows, :steps], batch.targets[rows, :steps]
    return Batch(numpy.ascontiguousarray(inputs), numpy.ascontiguousarray(targets),
                 numpy.ascontiguousarray(mask[:, :steps]), batch.epoch, batch.index)


def _moved_position(position: dict, num_batches: int) -> dict:
    """A batcher position (``state_dict``) moved to a batcher of ``num_batches`` per epoch:
    the same share of the epoch done, rounded to a whole batch."""
    index = round(position["index"] * num_batches / position["num_batches"])
    epoch = position["epoch"]
    if index >= num_batches:
        epoch, index = epoch + 1, 0
    return {**position, "epoch": epoch, "index": index, "num_batches": num_batches}


def _finite_state(state) -> bool:
    """Whether a carried state (an array, or an LSTM's (h, c) pair) holds no NaN/Inf."""
    parts = state if isinstance(state, tuple) else (state,)
    return all(bool(get_array_module(p).isfinite(p).all()) for p in parts)


def train(config: TrainConfig | None = None, *, comm: Communicator | None = None,
          **overrides) -> TrainResult:
    """Run :class:`Trainer` on ``config`` (default TrainConfig) with ``overrides`` applied.

    Under ``mpirun -n N python script.py`` every process calls this alike and they train
    together; ``comm`` picks another set of processes (default ``distributed.world()``).
    """
    comm = comm if comm is not None else world()
    with abort_all_on_failure(comm, "gpurnn train"):
        merged = comm.collectively(
            lambda: merge_config(config or TrainConfig(), overrides, source="train"))
        return Trainer(merged, comm=comm).run()
