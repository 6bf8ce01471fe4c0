"""Sweeps: the config, the store, one run, the backends, the runner and the adaptive search."""
