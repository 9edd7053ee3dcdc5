"""Training on top of the engine: text and batches (``corpus``, ``data``), optimizers
(``optim``), checkpoints, the trainer and its settings (``train``, ``config``), sampling
(``generate``) and data parallelism over MPI (``distributed``). Imports the engine, never
the tools.
"""
