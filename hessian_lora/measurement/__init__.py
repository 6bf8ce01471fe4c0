"""Measuring an adapter's loss Hessian: the typed targets, the one entry (``measure``), eigen reports read back,
Adam's preconditioner, and the probes inside a training run. Importing the package loads none of them."""
