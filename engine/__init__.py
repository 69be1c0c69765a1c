"""The training engine: LazyConfig, trainer and hooks, events, checkpoints, launch, optimizer and
lr schedule, and the training defaults. The inference side lives in ``predictor``."""
