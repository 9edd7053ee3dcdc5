"""When training stops: signals, a wall-clock limit, divergence; and the exit codes.

A stop asked for by a signal (Ctrl-C, SIGTERM, ``--stop-signal``) or by ``--time-limit``
takes effect at the next step boundary: the step under way finishes, a checkpoint is written
and ``gpurnn train`` exits with the code below. Under ``mpirun`` each process votes with the
gradients it sums (one slot per reason), so a signal that reaches any rank stops every rank
after the same step, and all of them exit with the same code.

Exit codes of ``gpurnn train`` (:class:`ExitCode`):

====  ================================================================================
0     finished: every step taken, checkpoint written
1     diverged: repeated non-finite steps or a non-finite model; the last checkpoint
      is untouched
2     bad input: flags, config, corpus, checkpoint, output paths, or another trainer
      holds the checkpoint
3     a checkpoint could not be written (disk full, I/O error, permission); the previous
      checkpoint is intact
75    stopped before ``--time-limit``, checkpoint written: continue with ``--resume``
128+N stopped by signal N, checkpoint written: 130 Ctrl-C (SIGINT), 143 SIGTERM,
      138 SIGUSR1 (Linux numbering); continue with ``--resume``
====  ================================================================================
"""
from __future__ import annotations

import enum
import math
import signal
import threading
import time
import warnings

from ..engine.arrays.backend import get_array_module
from .callbacks import Callback
from .config import parse_duration, signal_number
from .distributed import collective

__all__ = ["ExitCode", "StopConditions", "DivergenceGuard", "TrainingError",
           "NonFiniteStepWarning", "STOP_SLOTS"]


class ExitCode(enum.IntEnum):
    OK = 0
    DIVERGED = 1
    BAD_INPUT = 2
    SAVE_FAILED = 3
    TIME_LIMIT = 75  # EX_TEMPFAIL of sysexits.h: "try again later", i.e. with --resume
    SIGNAL_BASE = 128  # + the signal's number, as a shell reports a process a signal ended


class TrainingError(RuntimeError):
    """Training cannot go on (it diverged); the last checkpoint is untouched."""


class NonFiniteStepWarning(RuntimeWarning):
    """A step had a NaN/Inf loss or gradient and was skipped."""


# Reasons to stop, in the order that decides the exit code when ranks hold different ones;
# each takes one slot of the buffer summed across ranks.
_SIGINT, _SIGTERM, _OTHER_SIGNAL, _TIME_LIMIT = range(4)
STOP_SLOTS = 4


class StopConditions(Callback):
    """Signals and ``--time-limit``: asks for a stop at the next step boundary.

    ``requested`` is this process's own request; ``reason`` the agreed one, set by
    :meth:`agree` with the votes of every process (:meth:`votes` summed). One process agrees
    with itself at every step end.
    """

    def __init__(self, config, comm, say, *, clock=time.monotonic):
        self.comm, self.say, self.clock = comm, say, clock
        self.started = clock()
        self.limit = parse_duration(config.time_limit) if config.time_limit else None
        self.limit_text = config.time_limit
        self.slot_of = {signal.SIGINT: _SIGINT, signal.SIGTERM: _SIGTERM}
        self.other = signal_number(config.stop_signal) if config.stop_signal else None
        if self.other is not None:
            self.slot_of.setdefault(self.other, _OTHER_SIGNAL)
        self.requested = self.reason = None
        self.voters = 0
        self._announced = False
        self._previous = {}

    # ---------------------------------------------------------------------------- asking
    def _on_signal(self, signum, frame):
        # Only a flag is set here: printing from a handler can hit a stream in the middle of
        # a write (a reentrant-call RuntimeError); the loop reports it at the step boundary.
        if signum == signal.SIGINT and self.requested is not None:
            raise KeyboardInterrupt  # Ctrl-C while a stop is pending: quit now, without saving
        if self.requested is None:
            self.requested = self.slot_of[signum]

    def on_start(self, trainer) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach only the main thread
        for signum in self.slot_of:
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def on_close(self, trainer) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def time_left(self) -> float:
        return math.inf if self.limit is None else self.limit - (self.clock() - self.started)

    def on_step_end(self, trainer) -> None:
        # What must fit before the limit: the next step (and an evaluation, which may fall
        # on it), then the final checkpoint, counted twice for the file system's ups and
        # downs, and a second to spare. Nothing is decided before a checkpoint was measured.
        save = trainer.longest["save"]
        if self.limit is not None and self.requested is None and save:
            reserve = trainer.longest["step"] + trainer.longest["valid"] + 2 * save + 1.0
            if self.time_left() <= reserve:
                self.requested = _TIME_LIMIT
        if self.comm.size == 1:
            self.agree(self.votes())
        if self.reason is not None and not self._announced:
            self._announced = True
            self.say(self._announcement(trainer.step))

    # ---------------------------------------------------------------------------- agreeing
    def votes(self) -> list:
        """This process's request, one slot per reason (summed across processes)."""
        votes = [0.0] * STOP_SLOTS
        if self.requested is not None:
            votes[self.requested] = 1.0
        return votes

    def agree(self, votes) -> None:
        """Take the stop that ``votes`` (summed over every process) ask for, if any; the
        first reason asked keeps its place, so all processes stop for the same one."""
        if self.reason is None:
            for slot, count in enumerate(votes):
                if count > 0:
                    self.reason, self.voters = slot, int(round(count))
                    break

    @property
    def stopped(self) -> bool:
        return self.reason is not None

    # ---------------------------------------------------------------------------- telling
    def describe(self) -> str:
        """What stopped the run: ``"Ctrl-C (SIGINT)"``, ``"SIGTERM"``, ``"the time limit"``."""
        if self.reason == _SIGINT:
            return "Ctrl-C (SIGINT)"
        if self.reason == _TIME_LIMIT:
            return f"the time limit ({self.limit_text})"
        number = signal.SIGTERM if self.reason == _SIGTERM else self.other
        return signal.Signals(number).name

    @property
    def exit_code(self) -> int:
        if self.reason is None:
            return ExitCode.OK
        if self.reason == _TIME_LIMIT:
            return ExitCode.TIME_LIMIT
        number = {_SIGINT: signal.SIGINT, _SIGTERM: signal.SIGTERM}.get(self.reason, self.other)
        return ExitCode.SIGNAL_BASE + int(number)

    def _announcement(self, step: int) -> str:
        where = ""
        if self.comm.size > 1:
            where = f" on {self.voters} of {self.comm.size} processes"
        if self.reason == _TIME_LIMIT:
            line = (f"{self.describe()} is near ({self.time_left():.0f} s left){where}: "
                    f"saving a checkpoint after step {step} and stopping")
        else:
            line = f"{self.describe()}{where}: saving a checkpoint after step {step} and stopping"
        if self.reason == _SIGINT:
            line += " (Ctrl-C again to quit without saving)"
        return line


class DivergenceGuard:
    """Skips steps with a NaN/Inf loss or gradient, and stops a run that diverged.

    A run has diverged when ``max_bad_steps`` steps in a row are non-finite, or when the
    parameters themselves are no longer finite (skipping steps cannot bring them back).
    """

    def __init__(self, config, comm):
        self.config, self.comm = config, comm
        self.skipped = self.bad_in_a_row = 0
        self.last_good = None  # (step, loss) of the last finite step

    def state_dict(self) -> dict:
        return {"skipped": self.skipped, "bad_in_a_row": self.bad_in_a_row}

    def load_state_dict(self, state: dict) -> None:
        self.skipped, self.bad_in_a_row = int(state["skipped"]), int(state["bad_in_a_row"])

    def step_is_good(self, step: int, loss: float, norm: float, params: dict, kept: str,
                     lr: float) -> bool:
        """Whether step ``step`` (1-based) may update the parameters; raises TrainingError
        (on every rank alike: the numbers are global) when the run diverged."""
        if math.isfinite(loss) and math.isfinite(norm):
            self.bad_in_a_row = 0
            self.last_good = (step, loss)
            return True
        self.skipped += 1
        self.bad_in_a_row += 1
        what = "gradient" if math.isfinite(loss) else "loss"
        if self.comm.rank == 0:
            warnings.warn(f"step {step}: non-finite {what} (loss {loss}, gradient norm "
                          f"{norm}); step skipped ({self.bad_in_a_row} in a row, "
                          f"{self.skipped} in all)", NonFiniteStepWarning, stacklevel=4)
        if not params_finite(params):
            raise self.diverged(step, "the parameters hold NaN or Inf", kept, lr)
        if self.bad_in_a_row >= self.config.max_bad_steps:
            raise self.diverged(step, f"{self.bad_in_a_row} steps in a row had a non-finite "
                                      f"loss or gradient", kept, lr)
        return False

    def diverged(self, step: int, what: str, kept: str, lr: float) -> BaseException:
        """The TrainingError that says the run diverged at ``step``, and what to try."""
        config = self.config
        last = (f" (the last finite loss was {self.last_good[1]:.4g}, at step "
                f"{self.last_good[0]})" if self.last_good else "")
        clip = f"--clip (now {config.clip:g})" if config.clip else "--clip 1"
        return collective(TrainingError(
            f"training stopped at step {step}: {what}{last}, so the run diverged; try a "
            f"lower --lr (now {lr:.3g}) or {clip}; {kept}"))


def params_finite(params: dict) -> bool:
    return all(bool(get_array_module(p).isfinite(p).all()) for p in params.values())
