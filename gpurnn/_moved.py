"""The module paths of gpurnn 0.1's flat layout, and of the engine's modules before it had
rooms, kept importable for one release.

``import gpurnn.optim`` (and every other old path below) gives the module at its new place
with a :class:`MovedModuleWarning` that names it. Two old paths name top-level functions
now, ``gpurnn.train`` and ``gpurnn.gradcheck``; importing them as modules would replace the
functions, so they fail with a message that names the new place instead.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__all__ = ["MovedModuleWarning", "MOVED", "install"]

# old module -> new module (gpurnn 0.1 -> 0.2, when the package was cut into layers)
MOVED = {f"gpurnn.{old}": f"gpurnn.{new}" for old, new in {
    "activations": "engine.recurrences.activations", "backend": "engine.arrays.backend",
    "bench": "tools.bench", "cells": "engine.recurrences.cells", "checkpoint": "training.checkpoint",
    "cli": "tools.cli", "config": "training.config", "corpus": "training.corpus",
    "data": "training.data", "diagnostics": "tools.diagnostics",
    "distributed": "training.distributed", "gated": "engine.recurrences.gated",
    "generate": "training.generate", "losses": "engine.models.losses", "model": "engine.models.model",
    "optim": "training.optim", "plot": "tools.plot", "reference_gated": "reference.gated",
    "stack": "engine.layers.stack", "torch_interop": "engine.models.torch_interop",
    "validation": "engine.arrays.validation", "workspace": "engine.arrays.workspace"}.items()}

# the engine's modules before it was given rooms (0.2.0.dev0): gpurnn.engine.X ->
# gpurnn.engine.<room>.X
_ROOMS = {"arrays": ("backend", "strict", "precision", "workspace", "host_threads",
                     "validation"),
          "recurrences": ("activations", "cells", "gated", "normalized", "diagonal"),
          "layers": ("stack", "bidirectional", "embedding", "dropout"),
          "sweeps": ("bptt", "recompute", "scan"),
          "gpu": ("fused", "persistent", "launches", "graphs", "kernels"),
          "models": ("model", "factory", "torch_interop", "parameters", "losses")}
MOVED.update({f"gpurnn.engine.{module}": f"gpurnn.engine.{room}.{module}"
              for room, modules in _ROOMS.items() for module in modules})

# old module paths that are names of functions now: (new module, what to write instead)
_NOW_FUNCTIONS = {
    "gpurnn.train": ("gpurnn.training.train",
                     "gpurnn.train is the function train(config) now: "
                     "`from gpurnn import TrainConfig, train`"),
    "gpurnn.gradcheck": ("gpurnn.tools.gradcheck",
                         "gpurnn.gradcheck is the function gradcheck(model, ...) now: "
                         "`from gpurnn import gradcheck`"),
}


class MovedModuleWarning(FutureWarning):
    """An old gpurnn module path was imported; the message names the new one. A
    FutureWarning, so that it is shown by default: it is meant for users' code."""


class _Alias(importlib.abc.Loader):
    """A module of the old name whose every attribute is read from the new module (PEP 562
    ``__getattr__``): the same classes and functions, and the new module keeps its own
    name and spec."""

    def __init__(self, target):
        self.target = target

    def exec_module(self, module):
        target = importlib.import_module(self.target)
        module.__doc__ = target.__doc__
        module.__getattr__ = lambda name: getattr(target, name)
        module.__dir__ = lambda: dir(target)


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in _NOW_FUNCTIONS:
            new, advice = _NOW_FUNCTIONS[fullname]
            raise ModuleNotFoundError(f"No module named {fullname!r}: {advice}; the module "
                                      f"is {new}", name=fullname)
        new = MOVED.get(fullname)
        if new is None:
            return None
        warnings.warn(f"{fullname} moved to {new}; import it from there (the old path goes "
                      f"in the next release)", MovedModuleWarning, stacklevel=2)
        return importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    """Put the finder on ``sys.meta_path`` once."""
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
