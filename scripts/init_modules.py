"""Per-module λ_max at initialisation for a sweep's run directory: the paper's per-layer view (its q_proj figure).

    python scripts/init_modules.py results/smollm2 --modules q_proj --layers all --seeds 1 [--samples 8]

For each method (and rank, seed) of RUN_DIR's config.yaml, the adapter at initialisation is built exactly as the
sweep built it (the demo's code: same seed, LoRA-GA on the same first batch), and the λ_max of each chosen module
kind on each chosen layer is measured with the sweep's own Hessian settings (samples, batch size, tol), blocks
solved side by side. Each (method, rank, seed) goes to ``hessian/<key>_init_modules.json``, which the analysis
(the per-module median) and ``hessian-lora plot`` (figure c, one marker per measured layer) merge with the
whole-adapter report. A key whose file exists is skipped, so a rerun resumes; ``--samples`` measures on fewer
(or more) training examples than the sweep's probe, and the report records the number it used.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

from hessian_lora.demo import InitExtras, measure_init_reports
from hessian_lora.errors import UserError
from hessian_lora.sweep.config import load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a sweep's --out directory (its config.yaml is read)")
    parser.add_argument("--modules", nargs="+", default=["q_proj"], help="module kinds (default: q_proj)")
    parser.add_argument("--layers", default="all",
                        help="'all', or a number of evenly spaced layers (first and last included)")
    parser.add_argument("--methods", nargs="+", help="default: every method of the config")
    parser.add_argument("--seeds", nargs="+", type=int, help="default: every seed of the config")
    parser.add_argument("--samples", type=int, help="training examples of the probe (default: the config's)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        config = load_config(args.run_dir / "config.yaml")
        layers = None if args.layers == "all" else int(args.layers)
        unknown = sorted(set(args.methods or ()) - set(config.methods))
        if unknown:
            raise UserError(f"{args.run_dir / 'config.yaml'}: methods {', '.join(unknown)} are not in the sweep "
                            f"(it has {', '.join(config.methods)}): pick from those")
        changes: dict[str, object] = {}
        if args.methods:
            changes["methods"] = tuple(m for m in config.methods if m in args.methods)
        if args.seeds:
            changes["seeds"] = tuple(args.seeds)
        if args.samples:
            # HessianSettings cuts the batches by its samples, the report records measure's: both change.
            changes["hessian"] = replace(config.hessian, samples=args.samples,
                                         measure=replace(config.hessian.measure, samples=args.samples))
        config = replace(config, **changes)  # the sweep's axes narrowed, as the adaptive search narrows them
        extras = InitExtras(config, args.run_dir, modules=tuple(args.modules), layers=layers, density_steps=0)
        measure_init_reports(extras)
    except (UserError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in extras.written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
