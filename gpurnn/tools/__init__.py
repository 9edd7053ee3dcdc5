"""What users run around the engine and the trainer: the ``gpurnn`` command (``cli``), the
throughput harness (``bench``), gradient checks and diagnostics, metric plots. The top
layer: nothing below imports it.
"""
