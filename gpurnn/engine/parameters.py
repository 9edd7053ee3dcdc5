"""Parameter names shared by stacks, torch interop and diagnostics."""
from __future__ import annotations

__all__ = ["layer_name"]


def layer_name(name: str, layer: int) -> str:
    """The model's name for a layer's parameter: ``name`` for layer 0, ``name_l{k}`` above
    (PyTorch's suffix, so stacked weights line up with ``torch.nn.RNN/GRU/LSTM``)."""
    return name if layer == 0 else f"{name}_l{layer}"
