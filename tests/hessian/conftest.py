"""The engine's tests share the dense float64 problems of tests/dense_problems.py."""

from dense_problems import generic_problem, init_problem, init_rank4_problem

__all__ = ["generic_problem", "init_problem", "init_rank4_problem"]
