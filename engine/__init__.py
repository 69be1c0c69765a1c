"""Training engine: LazyConfig, trainer and hooks, events, checkpoints, launch and distributed
helpers, optimizer and lr schedule, the training defaults, the inference predictor and foreground
colours."""
