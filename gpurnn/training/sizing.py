"""How much memory a training run will take, estimated from its settings before anything is
allocated, so that ``--hidden 100000000`` is refused in one line rather than by an allocator.

The estimate is a lower bound of what a step holds: the parameters, their gradients, the
optimizer's slots (and, under mpirun, the flat buffer the gradients are summed in), plus the
states of every layer for the backward sweep and one batch of output-layer rows.
"""
from __future__ import annotations

import os

__all__ = ["GATES", "OPTIMIZER_SLOTS", "parameter_count", "training_bytes", "available_bytes",
           "check_fits", "format_bytes"]

GATES = {"elman": 1, "gru": 3, "lstm": 4, "mingru": 2, "minlstm": 3, "lru": 1, "paragru": 3}
# no dense weight_hh (gpurnn.engine.recurrences.diagonal; the ParaGRU's is a diagonal)
DIAGONAL = ("mingru", "minlstm", "lru", "paragru")
OPTIMIZER_SLOTS = {"sgd": 0, "momentum": 1, "adagrad": 1, "rmsprop": 1, "adam": 2, "rprop": 2}


def parameter_count(config, vocab_size: int) -> int:
    gates, hidden, layers = GATES[config.cell], config.hidden, config.layers
    first = vocab_size * gates * hidden  # the input rows of the first layer
    biases = hidden if config.cell == "elman" else 2 * gates * hidden  # b; or b_ih and b_hh
    if config.cell in DIAGONAL:  # bias_ih (the LRU: ν, γ_log; the ParaGRU: weight_hh, both biases)
        biases = {"lru": 2 * hidden, "paragru": 3 * gates * hidden}.get(config.cell,
                                                                        gates * hidden)
    per_layer = hidden * gates * hidden * (config.cell not in DIAGONAL) + biases
    deeper = (layers - 1) * hidden * gates * hidden
    return first + layers * per_layer + deeper + hidden * vocab_size + vocab_size


def training_bytes(config, vocab_size: int, world_size: int = 1) -> int:
    itemsize = 8 if config.dtype == "float64" else 4
    copies = 2 + OPTIMIZER_SLOTS[config.optimizer] + (1 if world_size > 1 else 0)
    batch, time = config.batch_size, config.seq_len
    states = batch * time * config.layers * config.hidden * (GATES[config.cell] + 2)
    return itemsize * (copies * parameter_count(config, vocab_size) + 2 * states
                       + batch * time * vocab_size)


def available_bytes(device) -> int | None:
    """Free memory where ``device`` computes: the GPU's free memory, or the host's available
    memory (Linux's MemAvailable, else physical memory); None when unknown."""
    if getattr(device, "kind", "cpu") != "cpu":
        try:
            with device.use():
                return int(device.xp.cuda.runtime.memGetInfo()[0])
        except Exception:  # no driver API to ask: do not guess
            return None
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if size < 1024 or unit == "PiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} EiB"


def check_fits(config, vocab_size: int, device, world_size: int = 1) -> None:
    """Raise ValueError naming the sizes when the estimate exceeds the free memory."""
    need = training_bytes(config, vocab_size, world_size)
    free = available_bytes(device)
    if free is not None and need > free:
        raise ValueError(
            f"--hidden {config.hidden} --layers {config.layers} --vocab-size {vocab_size} "
            f"--batch-size {config.batch_size} --seq-len {config.seq_len} ({config.cell}, "
            f"{config.dtype}, {config.optimizer}) needs at least {format_bytes(need)}, more "
            f"than the {format_bytes(free)} free on {device}; lower --hidden, --layers, "
            f"--batch-size or --seq-len")
