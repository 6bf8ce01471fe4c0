"""``hessian-lora methods``: the adapter methods this toolkit builds, one line each."""

from __future__ import annotations

import argparse

from hessian_lora.cli.commands import add_command
from hessian_lora.methods.registry import (
    METHODS,
    REFERENCE_LAYERS,
    REFERENCE_MODEL,
    reference_parameter_count,
)

REFERENCE_RANK = 128  # the paper's rank


HELP = "list the adapter methods (LoRA variants)"
DESCRIPTION = (
    "List the adapter methods: name, whether initialisation rewrites the base weights, whether "
    "the initial adapted model computes the base model's function, the trainable parameters on a reference "
    f"setting ({REFERENCE_MODEL}, all seven projections of its {REFERENCE_LAYERS} layers, r = {REFERENCE_RANK}, "
    "counted analytically), and what the method does."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    add_command(subparsers, "methods", HELP, DESCRIPTION, run)


def run(args: argparse.Namespace) -> int:
    width = max(len(name) for name in METHODS)
    params = f"params@{REFERENCE_MODEL},r={REFERENCE_RANK}"  # analytic count, see the description (--help)
    print(f"{'method':<{width}}  rewrites-base  preserves-function  {params}  summary")
    for spec in METHODS.values():
        rewrites = "yes" if spec.rewrites_base else "no"
        preserves = "yes" if spec.preserves_function else "no"
        data = " (needs data)" if spec.needs_data else ""
        count = f"{reference_parameter_count(spec.name, REFERENCE_RANK) / 1e6:.2f}M"
        print(
            f"{spec.name:<{width}}  {rewrites:<13}  {preserves:<18}  {count:>{len(params)}}  {spec.summary}{data}"
        )
    return 0
