"""``hessian-lora methods``: the adapter methods this toolkit builds, one line each."""

from __future__ import annotations

import argparse

from hessian_lora.registry import METHODS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "methods",
        help="list the adapter methods (LoRA variants)",
        description="List the adapter methods: name, whether initialisation rewrites the base weights, whether "
        "the initial adapted model computes the base model's function, and what the method does.",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    width = max(len(name) for name in METHODS)
    print(f"{'method':<{width}}  rewrites-base  preserves-function  summary")
    for spec in METHODS.values():
        rewrites = "yes" if spec.rewrites_base else "no"
        preserves = "yes" if spec.preserves_function else "no"
        data = " (needs data)" if spec.needs_data else ""
        print(f"{spec.name:<{width}}  {rewrites:<13}  {preserves:<18}  {spec.summary}{data}")
    return 0
