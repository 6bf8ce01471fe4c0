"""The solver table's dispatch tests measure a dense float64 problem of tests/dense_problems.py."""

from dense_problems import generic_problem

__all__ = ["generic_problem"]
