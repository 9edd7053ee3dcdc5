"""The language-model trainer: corpus in, trained RNN language model out, nothing lost on
interruption.

    from gpurnn.training.config import TrainConfig
    from gpurnn.training.train import train
    result = train(TrainConfig(hidden=64, steps=500, checkpoint="lm.npz"))

Each step takes the next batch, runs BPTT (``model.loss_and_grads``), clips the global
gradient norm and updates the parameters. The loss shown is the mean cross-entropy per
predicted token in nats, and perplexity is exp of it.

The :class:`Trainer` holds the run's state and its loop: the step, the all-reduce and the
evaluation. Everything around the loop happens in callbacks it calls at defined events
(:mod:`gpurnn.training.callbacks`): when to stop (signals, ``--time-limit``:
:mod:`~gpurnn.training.stopping`), where and how to save (:mod:`~gpurnn.training.saving`,
with the fields of :mod:`~gpurnn.training.resuming`) and what to report
(:mod:`~gpurnn.training.reporting`). A run stopped after N steps and resumed ends
bit-identical to one never stopped.

Under ``mpirun -n N`` (see :mod:`gpurnn.training.distributed`) each of the N processes trains
on its rows of every global batch of N × ``batch_size``; the gradients, the loss, the token
count and the stop requests are summed across them in one call per step, so every process
takes the same step and stops after the same one. Rank 0 alone writes the checkpoint and the
metrics and shows the progress.
"""
from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy

from .._version import __version__
from ..engine.arrays.backend import get_device, to_device
from ..engine.layers.dropout import DROPOUT_KINDS
from ..engine.models.factory import make_model
from .callbacks import Callbacks
from .checkpoint import CheckpointError, load_checkpoint
from .config import DEFAULT_STEPS, TrainConfig, merge_config
from .corpus import cross_entropy, cross_entropy_sums, finite_state, load_data
from .data import Batch, Vocabulary
from .distributed import (Communicator, FlatGradients, abort_all_on_failure, device_for_rank,
                          world)
from .optim import (HalveOnPlateau, clip_grad_norm, clip_grad_value, global_norm,
                    make_optimizer, scheduled_lr)
from .reporting import Reporter, perplexity
from .scaling import DEFAULT_LOSS_SCALE, LossScaler
from .resuming import check_same_run, restore
from .saving import (CheckpointSaver, FileLock, check_existing_outputs, check_output_paths,
                     stale_temporaries)
from .sizing import check_fits
from .stopping import (STOP_SLOTS, DivergenceGuard, ExitCode, NonFiniteStepWarning,
                       StopConditions, TrainingError)

__all__ = ["DEFAULT_LR", "TrainingError", "NonFiniteStepWarning", "TrainResult", "ExitCode",
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


@dataclass
class TrainResult:
    step: int                  # steps taken by the whole run
    interrupted: bool          # stopped (signal, time limit) before the last step
    checkpoint: Path
    valid_history: list        # [step, mean validation loss per token] at each evaluation
    samples: list = field(default_factory=list)  # sentences sampled at the end
    overhead: float = 0.0      # fraction of step time outside loss_and_grads and the update
    stopped_by: str | None = None  # what stopped it: "SIGTERM", "Ctrl-C (SIGINT)", ...
    exit_code: int = 0         # what ``gpurnn train`` exits with (see stopping.ExitCode)
    seconds: float = 0.0       # wall-clock time of run()


def read_train_config(path) -> TrainConfig:
    """The TrainConfig saved in a checkpoint (what ``--resume`` starts from)."""
    saved = load_checkpoint(path).config
    try:
        # how the run that wrote it was started (--resume, --overwrite) is not a setting of
        # the run: the command that resumes it says its own
        return TrainConfig.from_dict({key: value for key, value in saved["train"].items()
                                      if key not in ("resume", "overwrite")})
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
        self.locks, self.removed_temporaries = [], []
        self.reporter = Reporter(config, comm, self.out, self.metrics_path)
        self.stopper = StopConditions(config, comm, self.reporter.say)  # its clock starts now
        self.saver = CheckpointSaver(config, self.path, comm)
        self.events = Callbacks(self.stopper, self.saver, self.reporter)
        self.guard = DivergenceGuard(config, comm)
        try:
            # Every set-up error is raised by all ranks together, so that none waits for another.
            saved = comm.on_root(self._claim_outputs)  # only rank 0 touches the files
            comm.collectively(lambda: self._build(saved))
            comm.agree("their settings and data", self._identity())
        except BaseException:
            self._release()
            raise

    # ------------------------------------------------------------------------ set-up
    def _claim_outputs(self):
        """Check the output paths, lock them, clear this checkpoint's stale temporaries and
        read it when resuming (rank 0)."""
        config = self.config
        check_output_paths(config, self.path, self.metrics_path)
        for path, flag in ((self.path, "--checkpoint"), (self.metrics_path, "--metrics")):
            self.locks.append(FileLock(path, flag).acquire())
        check_existing_outputs(config, self.path, self.metrics_path)
        self.removed_temporaries = stale_temporaries(self.path)
        for temporary in self.removed_temporaries:
            temporary.unlink(missing_ok=True)
        return load_checkpoint(self.path) if config.resume else None

    def _release(self) -> None:
        for lock in getattr(self, "locks", ()):
            lock.release()
        self.locks = []

    def __del__(self):  # a Trainer built but never run still lets go of its files
        try:
            self._release()
        except Exception:  # at interpreter exit: the kernel releases the locks anyway
            pass

    def _build(self, saved) -> None:
        config, comm = self.config, self.comm
        self.device = get_device(device_for_rank(config.device, comm))
        if saved is not None:
            check_same_run(config, saved, self.path)
        self.data = load_data(config, Vocabulary.from_list(saved.vocab) if saved else None,
                              world_size=comm.size)
        size = len(self.data.vocab)
        check_fits(config, size, self.device, comm.size)
        self.model = make_model(config.cell, size, config.hidden, size, num_layers=config.layers,
                                embedding_size=config.embedding_size,
                                layer_norm=config.layer_norm, dtype=config.dtype,
                                device=self.device, seed=config.seed,
                                **({"newton_tol": config.newton_tol}
                                   if config.newton_tol is not None else {}),
                                **{kind: getattr(config, kind) for kind in DROPOUT_KINDS
                                   if getattr(config, kind) > 0})
        if hasattr(self.model, "dropout_stream"):
            self.model.dropout_stream.stream = comm.rank   # each rank its own masks
        self.model.plan = self.model.plan.replace(memory_budget=config.memory_budget,
                                                  kernels=config.kernels,
                                                  precision=config.precision,
                                                  time=config.time)
        # float16's dynamic loss scale (gpurnn.training.scaling); None: no scaling
        first_scale = config.loss_scale if config.loss_scale is not None else (
            DEFAULT_LOSS_SCALE if config.precision == "fp16-mixed" else None)
        self.scaler = (None if first_scale is None else
                       LossScaler(first_scale, config.loss_scale_window))
        self.base_lr = lr = self._lr()
        self.optimizer = make_optimizer(config.optimizer, lr, **optimizer_options(config, lr))
        self.optimizer.plan = self.model.plan
        halve = config.schedule == "halve" or (config.schedule == "auto" and
                                               config.optimizer == "sgd")
        self.schedule = HalveOnPlateau(self.optimizer) if halve else None
        # cosine, and any warm-up: the rate is a function of the step, set before each one
        self.by_step = config.schedule == "cosine" or config.warmup_steps > 0
        self.rng = numpy.random.default_rng(config.seed)  # for the samples at the end
        self.step, self.hidden = 0, None
        self.valid_history: list = []
        self.total_steps = config.steps or (config.epochs * len(self.data.train)
                                            if config.epochs else DEFAULT_STEPS)
        self.timing = dict.fromkeys(("step", "engine", "allreduce", "valid", "save"), 0.0)
        self.longest = dict.fromkeys(("step", "valid", "save"), 0.0)  # for --time-limit
        self.timed_steps = 0
        self.last_step = (0.0, 0.0, 0.0, False)  # loss, gradient norm, tokens, applied
        self._since_eval = [0.0, 0]
        # One buffer for everything summed across ranks each step: the gradients, then the
        # loss, the token count and the stop requests (one slot per reason).
        self.flat = (FlatGradients(self.model.params, extra=2 + STOP_SLOTS)
                     if comm.size > 1 else None)
        self.moved_from = None  # (world size, position) of a checkpoint from another world size
        if saved is not None:
            restore(self, saved)
        if self.by_step:
            self._check_schedule(saved)

    def _check_schedule(self, saved) -> None:
        """The ends of a rate set by the step, against the rate and this run's total."""
        config, lr = self.config, self.base_lr
        if config.min_lr is not None and config.min_lr > lr:  # --lr not given: the default
            raise ValueError(f"--min-lr {config.min_lr} is above the learning rate {lr:g} "
                             f"({config.optimizer}'s default); lower it or give --lr")
        if config.warmup_steps >= self.total_steps and self.comm.rank == 0:
            warnings.warn(f"--warmup-steps {config.warmup_steps} is not below the run's "
                          f"{self.total_steps} steps: the rate never reaches {lr:g}",
                          stacklevel=2)
        before = saved.extra.get("total_steps") if saved is not None else None
        if config.schedule == "cosine" and before is not None and before != self.total_steps:
            # the curve is over the run's total: a longer run is higher at every step
            self.reporter.say(
                f"the cosine schedule now runs over {self.total_steps} steps, not {before}: "
                f"the rate at step {self.step} is "
                f"{self._scheduled(self.step):.3g}, not {self._scheduled(self.step, before):.3g}")

    def _scheduled(self, step: int, total_steps: int | None = None) -> float:
        """The rate of the update after ``step`` updates (warm-up and cosine)."""
        config = self.config
        return scheduled_lr(step, self.base_lr, warmup_steps=config.warmup_steps,
                            total_steps=self.total_steps if total_steps is None else total_steps,
                            min_lr=config.min_lr, cosine=config.schedule == "cosine")

    def _identity(self) -> dict:
        """What every rank of a run must share (compared across ranks at start-up)."""
        facts = {f"--{name.replace('_', '-')}": value
                 for name, value in self.config.to_dict().items() if name not in _PER_RANK_FIELDS}
        facts.update({"the data (a hash)": self.data.fingerprint, "gpurnn": __version__,
                      "the device kind": self.device.kind, "the step resumed at": self.step})
        return facts

    def _lr(self) -> float:
        config = self.config
        if config.lr is not None:
            return config.lr
        lr = DEFAULT_LR[config.optimizer]
        if config.reduction == "sum" and config.optimizer not in _SCALE_FREE:
            # the summed gradient is as much larger as the global batch has tokens
            lr /= config.batch_size * self.comm.size * config.seq_len
        return lr

    # ------------------------------------------------------------------------ the loop
    def run(self) -> TrainResult:
        """Train to ``total_steps`` or a stop (signal, time limit); evaluate, save, sample,
        report; see TrainResult. Raises TrainingError when the run diverges and
        saving.CheckpointWriteError when a checkpoint cannot be written."""
        start = time.perf_counter()
        # one rank failing stops all; on a GPU, this rank's is the current device throughout
        with abort_all_on_failure(self.comm, "gpurnn train"), self.device.use():
            try:
                if self.step >= self.total_steps:
                    self.reporter.final(
                        f"{self.path} is at step {self.step}, the end of a run of "
                        f"{self.total_steps} steps: nothing to train (raise --steps or --epochs)")
                    return TrainResult(self.step, False, self.path, self.valid_history)
                self.events.on_start(self)
                for temporary in self.removed_temporaries if self.comm.rank == 0 else ():
                    self.reporter.say(f"removed {temporary.name}, left by a writer of "
                                      f"{self.path.name} that did not finish")
                self._loop()
                stopped = self.stopper.stopped and self.step < self.total_steps
                if not stopped and (not self.valid_history
                                    or self.valid_history[-1][0] != self.step):
                    self._evaluate(regular=False)
                result = TrainResult(
                    self.step, stopped, self.path, self.valid_history, overhead=self._overhead(),
                    stopped_by=self.stopper.describe() if stopped else None,
                    exit_code=self.stopper.exit_code if stopped else ExitCode.OK)
                result.seconds = time.perf_counter() - start
                self.events.on_end(self, result)  # saves, then samples and reports
                return result
            finally:
                try:
                    self.events.on_close(self)
                finally:
                    self._release()

    def _loop(self) -> None:
        # A stop saves at once (a preempted job has seconds): no extra evaluation before.
        if self.step == 0:
            self._evaluate(regular=True)  # the untrained model's perplexity, ~ vocab size
        while self.step < self.total_steps and not self.stopper.stopped:
            for batch in self.data.train:
                start, aside = time.perf_counter(), self.timing["valid"] + self.timing["save"]
                self._train_step(batch)
                if self.step % self.config.eval_every == 0:
                    self._evaluate(regular=True)
                self.events.on_step_end(self)
                # A step's time: everything but evaluation and checkpoints, timed on their own.
                seconds = (time.perf_counter() - start
                           - (self.timing["valid"] + self.timing["save"] - aside))
                self.timing["step"] += seconds
                self.longest["step"] = max(self.longest["step"], seconds)
                self.timed_steps += 1
                if self.step >= self.total_steps or self.stopper.stopped:
                    break

    def _train_step(self, batch) -> None:
        config, model, dev, comm = self.config, self.model, self.device, self.comm
        if self.by_step:
            self.optimizer.lr = self._scheduled(self.step)
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
            if hasattr(model, "dropout_stream"):
                # the masks of step n are draw n of this rank's stream: a resumed run draws
                # the same ones, and a rank without rows in one batch falls out of step with
                # no other
                model.dropout_stream.draws = self.step
            # Several ranks sum over their tokens here; the mean is taken over all ranks' tokens.
            loss, grads, last = model.loss_and_grads(
                inputs, targets, truncate=config.truncate, mask=mask, h0=self.hidden,
                reduction=config.reduction if comm.size == 1 else "sum",
                **({} if self.scaler is None else {"loss_scale": self.scaler.scale}))
        t1 = time.perf_counter()
        if comm.size > 1:
            loss, grads, tokens = self._all_reduce(loss, grads, tokens)
        t_reduced = time.perf_counter()
        norm = clip_grad_norm(grads, config.clip) if config.clip else global_norm(grads)
        if config.clip_value:                 # after the norm is measured: Inf still shows
            clip_grad_value(grads, config.clip_value)
        loss = loss if config.reduction == "mean" else loss / tokens
        t2 = time.perf_counter()
        overflow = self.scaler is not None and self.scaler.is_overflow(loss, norm)
        if self.scaler is not None:          # an overflow: skipped, the scale backs off
            self.scaler.update(overflow)
        good = not overflow and self.guard.step_is_good(self.step + 1, loss, norm,
                                                        model.params, self.saver.kept(),
                                                        self.optimizer.lr)
        if good:
            self.optimizer.step(model.params, grads)
            self._since_eval[0] += loss
            self._since_eval[1] += 1
        elif last is not None and not finite_state(last):
            last = None
        self.timing["engine"] += (t1 - t0) + (time.perf_counter() - t2)
        self.timing["allreduce"] += t_reduced - t1
        self.last_step = (loss, norm, tokens, good)
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
        flat.set_extra([loss, tokens, *self.stopper.votes()])
        self.comm.allreduce_(flat.buffer)
        loss, tokens, *votes = flat.get_extra()
        if self.config.reduction == "mean":
            flat.values *= 1.0 / tokens
            loss /= tokens
        self.stopper.agree(votes)
        return loss, flat.grads, tokens

    # ------------------------------------------------------------------ evaluation
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
        if not math.isfinite(measured):  # the same global number on every rank
            raise self.guard.diverged(self.step, f"the validation loss is {measured}",
                                      self.saver.kept(), self.optimizer.lr)
        self.valid_history.append([self.step, measured])
        # Only the evaluations every eval_every steps drive the schedule, so the extra one at
        # the end of a run stopped early does not change what the resumed run does.
        halved = bool(regular and self.schedule is not None and self.schedule.step(measured))
        self.events.on_eval(self, {
            "step": self.step, "epoch": round(self.step / len(self.data.train), 4),
            "valid_loss": loss, "valid_ppl": perplexity(loss), "train_loss": train_loss,
            "lr": self.optimizer.lr, **({"lr_halved": True} if halved else {})})
        seconds = time.perf_counter() - start
        self.timing["valid"] += seconds
        self.longest["valid"] = max(self.longest["valid"], seconds)

    def _overhead(self) -> float:
        step = self.timing["step"]
        return 1.0 - (self.timing["engine"] + self.timing["allreduce"]) / step if step else 0.0


def optimizer_options(config: TrainConfig, lr: float) -> dict:
    """The optimizer's constructor options that the settings name, besides the rate."""
    options = {"weight_decay": config.weight_decay}
    if config.optimizer == "rprop":
        options["step_max"] = RPROP_STEP_MAX * lr
    if config.optimizer in ("adagrad", "rmsprop"):
        options["eps_placement"] = config.eps_placement
    if config.eps is not None:
        options["eps"] = config.eps
    return options


def _rows(batch: Batch, rows: slice, trim: bool) -> Batch:
    """The rows ``rows`` of ``batch``; with ``trim``, cut to the longest of those rows (the
    masks are right-padded), so a rank of short sentences does not loop over padding."""
    mask = batch.mask[rows]
    steps = int(mask.sum(axis=1).max()) if trim and len(mask) else mask.shape[1]
    inputs, targets = batch.inputs[rows, :steps], batch.targets[rows, :steps]
    return Batch(numpy.ascontiguousarray(inputs), numpy.ascontiguousarray(targets),
                 numpy.ascontiguousarray(mask[:, :steps]), batch.epoch, batch.index)


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
