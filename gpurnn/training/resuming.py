"""What a checkpoint holds of a training run, both ways: the fields written for a trainer
(:func:`checkpoint_fields`) and a trainer put back where they left it (:func:`restore`).

Everything the next step depends on is saved: parameters, optimizer state, vocabulary,
config, the sampling RNG, the step, the batcher's position, the hidden state carried between
chunks (every rank's rows), the learning-rate schedule, the non-finite-step counters, the
float16 loss scale and the validation history; so a run stopped after N steps and resumed
ends bit-identical to one never stopped.
"""
from __future__ import annotations

import numpy

from ..engine.arrays.backend import to_device, to_host
from ..engine.models.factory import model_spec
from .checkpoint import CheckpointError
from .config import RESUMABLE_FIELDS, TrainConfig
from .distributed import params_digest

__all__ = ["check_same_run", "restore", "checkpoint_fields", "moved_position"]


def check_same_run(config: TrainConfig, saved, path) -> None:
    """Refuse a checkpoint trained with settings that make it another run."""
    theirs = saved.config.get("train") if isinstance(saved.config, dict) else None
    if not isinstance(theirs, dict):
        raise CheckpointError(f"{path}: not a language-model checkpoint of this gpurnn")
    ours = config.to_dict()
    theirs = {**TrainConfig().to_dict(), **theirs}  # settings added since: their defaults
    changed = [f"--{k.replace('_', '-')} {theirs.get(k)!r} -> {ours[k]!r}" for k in ours
               if k not in RESUMABLE_FIELDS and theirs.get(k) != ours[k]]
    if changed:
        raise CheckpointError(f"{path} was trained with other settings; resuming "
                              f"needs the same ones ({'; '.join(changed)})")


def restore(trainer, saved) -> None:
    """Put ``trainer`` (built from the same config) at the state ``saved`` holds."""
    model, comm = trainer.model, trainer.comm
    try:
        for name, param in model.params.items():
            value = saved.params.get(name)
            if value is None or value.shape != param.shape:
                raise ValueError(f"parameter {name} has shape "
                                 f"{None if value is None else value.shape}, expected "
                                 f"{param.shape}")
            setattr(model, name, value)
        extra = saved.extra
        if extra.get("fingerprint") != trainer.data.fingerprint:
            raise ValueError("its training data differs from this corpus (changed file, "
                             "other Python version for the built-in corpus?)")
        for slot, arrays in saved.optimizer_state.get("slots", {}).items():
            for name, array in arrays.items():
                expected = model.params[name].shape if name in model.params else None
                if array.shape != expected:
                    raise ValueError(f"optimizer state {slot}/{name} has shape {array.shape}, "
                                     f"expected {expected}")
        trainer.optimizer.load_state_dict(saved.optimizer_state)
        if trainer.config.lr is not None and trainer.config.lr != saved.config["train"]["lr"]:
            trainer.optimizer.lr = trainer.config.lr  # asked for a new rate on resuming
        position, hidden = extra["batcher"], extra["hidden"]
        world_size = extra.get("world_size", 1)
        if world_size != comm.size:
            # Another number of processes: another global batch, so other batches per
            # epoch and, in stream mode, other streams. Continue at the same share of
            # the epoch, the streams' hidden state starting again.
            trainer.moved_from = (world_size, position)
            position, hidden = moved_position(position, len(trainer.data.train)), None
        trainer.data.train.load_state_dict(position)
        if hidden is not None:  # the saved state holds every rank's rows, interleaved
            rows = hidden[comm.rank::comm.size]
            trainer.hidden = model.unpack_state(to_device(rows, trainer.device, model.dtype))
        if trainer.schedule is not None:
            trainer.schedule.load_state_dict(extra["schedule"])
        trainer.rng.bit_generator.state = saved.rng_state
        trainer.guard.load_state_dict(extra)
        if trainer.scaler is not None and extra.get("loss_scale") is not None:
            trainer.scaler.load_state_dict(extra["loss_scale"])
        trainer.valid_history = [list(item) for item in extra["valid_history"]]
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise CheckpointError(f"{trainer.path}: cannot resume from this checkpoint "
                              f"({type(error).__name__}: {error})") from None
    trainer.step = saved.step
    if trainer.moved_from is not None and trainer.config.epochs:
        batcher = trainer.data.train
        trainer.total_steps = trainer.step + ((trainer.config.epochs - batcher.epoch)
                                              * len(batcher) - batcher.index)


def checkpoint_fields(trainer) -> dict | None:
    """The keyword arguments of ``save_checkpoint`` for ``trainer`` now, on rank 0 (None on
    the others). Every rank must call it: the carried state is gathered, and the ranks'
    parameters are checked not to have drifted apart."""
    comm = trainer.comm
    hidden = _hidden_of_all_rows(trainer)
    if comm.size > 1:
        comm.agree(f"the parameters at step {trainer.step}",
                   {"parameters (a hash)": params_digest(trainer.model.params)})
    if comm.rank != 0:
        return None
    extra = {"batcher": trainer.data.train.state_dict(),
             "fingerprint": trainer.data.fingerprint, "hidden": hidden,
             "schedule": trainer.schedule.state_dict() if trainer.schedule else None,
             **trainer.guard.state_dict(),
             "valid_history": trainer.valid_history, "world_size": comm.size,
             "total_steps": trainer.total_steps,  # what a cosine schedule ran over
             "warmup": trainer.data.warmup,  # read by gpurnn generate before sampling
             # float16's dynamic loss scale (gpurnn.training.scaling), None without one
             "loss_scale": None if trainer.scaler is None else trainer.scaler.state_dict()}
    return dict(params=trainer.model.params, optimizer_state=trainer.optimizer.state_dict(),
                vocab=trainer.data.vocab,
                config={"train": trainer.config.to_dict(), "model": model_spec(trainer.model)},
                rng_state=trainer.rng.bit_generator.state, step=trainer.step, extra=extra)


def _hidden_of_all_rows(trainer):
    """The carried hidden state of the whole global batch on the host, packed as
    (batch, size) rows (rank 0's; rows interleaved as the trainer shares them out), or None."""
    comm, model = trainer.comm, trainer.model
    mine = None if trainer.hidden is None else to_host(model.pack_state(trainer.hidden))
    if comm.size == 1:
        return mine
    parts = comm.gather(mine)
    if comm.rank != 0 or any(part is None for part in parts):
        return None
    rows = numpy.empty((sum(map(len, parts)),) + parts[0].shape[1:], parts[0].dtype)
    for rank, part in enumerate(parts):
        rows[rank::comm.size] = part
    return rows


def moved_position(position: dict, num_batches: int) -> dict:
    """A batcher position (``state_dict``) moved to a batcher of ``num_batches`` per epoch:
    the same share of the epoch done, rounded to a whole batch."""
    index = round(position["index"] * num_batches / position["num_batches"])
    epoch = position["epoch"]
    if index >= num_batches:
        epoch, index = epoch + 1, 0
    return {**position, "epoch": epoch, "index": index, "num_batches": num_batches}
