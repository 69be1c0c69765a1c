"""Command-line tools (dataset generation, evaluation, benchmarks)."""
