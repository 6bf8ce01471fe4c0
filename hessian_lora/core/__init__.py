"""Torch-free foundations every layer may use: the one-line ``UserError``, atomic writes, bounded numbers,
output paths, YAML reading, the run directory's layout and its results store, the metrics a run records."""
