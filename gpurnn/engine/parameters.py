"""Parameter names shared by stacks, torch interop and diagnostics."""
from __future__ import annotations

__all__ = ["layer_name", "elman_aliases", "ELMAN_ALIASES", "LEGACY_ELMAN_NAMES"]


def layer_name(name: str, layer: int) -> str:
    """The model's name for a layer's parameter: ``name`` for layer 0, ``name_l{k}`` above
    (PyTorch's suffix, so stacked weights line up with ``torch.nn.RNN/GRU/LSTM``)."""
    return name if layer == 0 else f"{name}_l{layer}"


# Every cell's parameters carry PyTorch's names (weight_ih, weight_hh, bias_ih, bias_hh);
# an Elman layer's are also reachable by the seeds' names, U x_t + W h_{t-1} + b.
LEGACY_ELMAN_NAMES = {"U": "weight_ih", "W": "weight_hh", "b": "bias_ih"}


def elman_aliases(num_layers: int) -> dict:
    """``{"U": "weight_ih", ..., "U_l1": "weight_ih_l1", ...}`` for ``num_layers`` layers."""
    return {layer_name(old, layer): layer_name(new, layer)
            for layer in range(num_layers) for old, new in LEGACY_ELMAN_NAMES.items()}


ELMAN_ALIASES = elman_aliases(1)
