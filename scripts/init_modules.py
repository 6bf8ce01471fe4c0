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

from hessian_lora.cli.commands._threads import apply_threads
from hessian_lora.core.errors import UserError
from hessian_lora.settings.sweep import load_config
from hessian_lora.sweep.demo import InitExtras, measure_init_reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a sweep's --out directory (its config.yaml is read)")
    parser.add_argument("--modules", nargs="+", default=["q_proj"], help="module kinds (default: q_proj)")
    parser.add_argument(
        "--layers", default="all", help="'all', or a number of evenly spaced layers (first and last included)"
    )
    parser.add_argument("--methods", nargs="+", help="default: every method of the config")
    parser.add_argument("--seeds", nargs="+", type=int, help="default: every seed of the config")
    parser.add_argument("--samples", type=int, help="training examples of the probe (default: the config's)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        apply_threads(args)
        config_path = args.run_dir / "config.yaml"
        config = load_config(config_path)
        layers = _layer_count(args.layers)
        # Each choice must name what the sweep has: anything else would be measured silently in its place
        # (an untargeted module was replaced by the first target; a seed the sweep never ran got a report).
        for flag, chosen, available in (
            ("--methods", args.methods, config.methods),
            ("--seeds", args.seeds, config.seeds),
            ("--modules", args.modules, config.adapter.targets),
        ):
            unknown = sorted({str(item) for item in chosen or ()} - {str(item) for item in available})
            if unknown:
                raise UserError(
                    f"{config_path}: {flag} {', '.join(unknown)} not in the sweep (it has "
                    f"{', '.join(str(item) for item in available)}): pick from those"
                )
        if args.samples is not None and args.samples < 1:
            raise UserError(
                f"--samples must be at least 1 (training examples of the probe), got {args.samples}"
            )
        changes: dict[str, object] = {}
        if args.methods:
            changes["methods"] = tuple(m for m in config.methods if m in args.methods)
        if args.seeds:
            changes["seeds"] = tuple(args.seeds)
        if args.samples is not None:
            # HessianSettings cuts the batches by its samples, the report records measure's: both change.
            changes["hessian"] = replace(
                config.hessian,
                samples=args.samples,
                measure=replace(config.hessian.measure, samples=args.samples),
            )
        config = replace(config, **changes)  # the sweep's axes narrowed, as the adaptive search narrows them
        extras = InitExtras(config, args.run_dir, modules=tuple(args.modules), layers=layers, density_steps=0)
        measure_init_reports(extras)
    except (UserError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in extras.written:
        print(f"wrote {path}")
    return 0


def _layer_count(text: str) -> int | None:
    """``--layers``: None for 'all', else a count of at least 2 evenly spaced layers (the first and the last)."""
    if text.strip().lower() == "all":
        return None
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 2:
        raise UserError(
            f"--layers {text!r}: give 'all' or a number >= 2 of evenly spaced layers (the first and "
            "the last included)"
        )
    return count


if __name__ == "__main__":
    sys.exit(main())
