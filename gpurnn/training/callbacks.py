"""The events of a training run, and the objects that act on them.

The trainer's loop only trains and evaluates; what happens around it (when to stop, when and
how to save, what to report) lives in small objects that the loop calls at defined events,
in the order they were given, as Keras callbacks and PyTorch-Ignite's event handlers do:

==================  ==============================================================
``on_start``        before the first step (files opened, signal handlers installed)
``on_step_end``     after every optimizer step, skipped ones included
``on_eval``         after each evaluation, with its metrics record
``on_end``          after the last step of a run that ended without an exception
                    (finished or stopped), with its :class:`TrainResult`
``on_close``        always, last, even after an exception: release what on_start took
==================  ==============================================================
"""
from __future__ import annotations

__all__ = ["Callback", "Callbacks"]


class Callback:
    """Base class: every event does nothing until a subclass says otherwise."""

    def on_start(self, trainer) -> None:
        pass

    def on_step_end(self, trainer) -> None:
        pass

    def on_eval(self, trainer, record: dict) -> None:
        pass

    def on_end(self, trainer, result) -> None:
        pass

    def on_close(self, trainer) -> None:
        pass


class Callbacks(Callback):
    """Several callbacks called as one, in order; ``on_close`` reaches all of them even when
    one of them fails (the first error is raised after)."""

    def __init__(self, *callbacks: Callback):
        self.callbacks = list(callbacks)

    def on_start(self, trainer) -> None:
        for callback in self.callbacks:
            callback.on_start(trainer)

    def on_step_end(self, trainer) -> None:
        for callback in self.callbacks:
            callback.on_step_end(trainer)

    def on_eval(self, trainer, record: dict) -> None:
        for callback in self.callbacks:
            callback.on_eval(trainer, record)

    def on_end(self, trainer, result) -> None:
        for callback in self.callbacks:
            callback.on_end(trainer, result)

    def on_close(self, trainer) -> None:
        failure = None
        for callback in reversed(self.callbacks):  # released in the reverse order of taking
            try:
                callback.on_close(trainer)
            except BaseException as error:  # noqa: B902 - every callback must be closed
                failure = failure or error
        if failure is not None:
            raise failure
