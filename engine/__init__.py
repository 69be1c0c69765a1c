"""Training engine: LazyConfig, trainer and hooks, events, checkpoints, launch and distributed
helpers, optimizer and lr schedule, the training defaults, and the inference predictor."""
