"""Training and evaluation engine: LazyConfig, trainer, hooks, checkpoints, metrics."""
