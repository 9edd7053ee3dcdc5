"""The GPU fast path: the fused per-step kernels (``fused``), the persistent kernels
(``persistent``), the launch audit and cost model (``launches``), the captured training step
(``graphs``) and the CUDA sources with their loader and host emulation (``kernels``)."""
