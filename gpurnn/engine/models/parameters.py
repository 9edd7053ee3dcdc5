"""Parameter names shared by stacks, torch interop and diagnostics; the checked parameter
dict; the size check made before parameters are allocated."""
from __future__ import annotations

import os
import re

__all__ = ["layer_name", "is_recurrent_weight", "direction_name", "REVERSE", "elman_aliases",
           "ELMAN_ALIASES", "LEGACY_ELMAN_NAMES", "Parameters", "check_memory"]


def is_recurrent_weight(name: str) -> bool:
    """True for a layer's ``weight_hh`` (``weight_hh``, ``weight_hh_l1``, ..., and their
    ``_reverse`` twins): the matrices weight-drop masks."""
    return re.fullmatch(r"weight_hh(_l[0-9]+)?(_reverse)?", name) is not None


def layer_name(name: str, layer: int) -> str:
    """The model's name for a layer's parameter: ``name`` for layer 0, ``name_l{k}`` above
    (PyTorch's suffix, so stacked weights line up with ``torch.nn.RNN/GRU/LSTM``)."""
    return name if layer == 0 else f"{name}_l{layer}"


REVERSE = "_reverse"  # PyTorch's suffix of a bidirectional layer's reverse direction


def direction_name(name: str, direction: int) -> str:
    """A layer's parameter name (:func:`layer_name`) for direction 0 (forward) or 1 (the
    reverse direction of a bidirectional layer: ``weight_ih_reverse``, ``weight_hh_l1_reverse``)."""
    return name + REVERSE if direction else name


# Every cell's parameters carry PyTorch's names (weight_ih, weight_hh, bias_ih, bias_hh);
# an Elman layer's are also reachable by the seeds' names, U x_t + W h_{t-1} + b.
LEGACY_ELMAN_NAMES = {"U": "weight_ih", "W": "weight_hh", "b": "bias_ih"}


def elman_aliases(num_layers: int) -> dict:
    """``{"U": "weight_ih", ..., "U_l1": "weight_ih_l1", ...}`` for ``num_layers`` layers."""
    return {layer_name(old, layer): layer_name(new, layer)
            for layer in range(num_layers) for old, new in LEGACY_ELMAN_NAMES.items()}


ELMAN_ALIASES = elman_aliases(1)


class Parameters(dict):
    """A model's live parameter dict. Optimizers update its arrays in place; assigning an
    entry (``model.params["weight_hh"] = array``) is checked as assigning the attribute is
    (shape, dtype, device), and entries cannot be added or removed, so a wrong array fails
    here, naming the parameter, not later inside a product."""

    __slots__ = ("_check", "_aliases")

    def __init__(self, values: dict, check, aliases: dict | None = None):
        super().__init__(values)
        self._check = check  # (name, value) -> the array to store, or raises
        self._aliases = aliases or {}

    def __setitem__(self, name, value):
        if name not in self:
            alias = self._aliases.get(name)
            hint = (f" (the seeds' name {name} is the attribute model.{name}; its key here "
                    f"is {alias!r})") if alias in self else ""
            raise KeyError(f"{name!r} is not a parameter of this model{hint}; its parameters "
                           f"are {', '.join(self)}")
        super().__setitem__(name, self._check(name, value))

    def update(self, *args, **kwargs):
        for name, value in dict(*args, **kwargs).items():
            self[name] = value

    def setdefault(self, name, value=None):
        return self[name] if name in self else self.__setitem__(name, value)

    def _refuse(self, *args, **kwargs):
        raise TypeError("a model's parameters cannot be removed; build the model without "
                        "them (bias=False) instead")

    __delitem__ = pop = popitem = clear = _refuse

    def __reduce__(self):  # pickled and copied as the plain dict it is
        return dict, (dict(self),)


def host_memory_bytes() -> int | None:
    """This machine's physical memory, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(what: str, nbytes: int) -> None:
    """Refuse, before allocating, parameters that could never fit this machine's memory
    (NumPy would raise a MemoryError from deep inside, or the OS kill the process)."""
    available = host_memory_bytes()
    if available is not None and nbytes > available:
        raise ValueError(f"{what} would need {_size(nbytes)} for its parameters (drawn on the "
                         f"host in float64), more than this machine's {_size(available)} of "
                         f"memory; choose smaller sizes")


def _size(nbytes: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if nbytes < 1024 or unit == "PiB":
            return f"{nbytes:,.0f} {unit}" if unit == "bytes" else f"{nbytes:,.1f} {unit}"
        nbytes /= 1024
