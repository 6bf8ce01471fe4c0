"""λ_max at initialisation against the Hessian's sample size (issue 20, item 2): how much do the numbers behind the
λ–η* relation move between 8, 32 and 128 training examples?

For each method (default LoRA, PiSSA, OLoRA: the flattest and two of the sharpest), the adapter is built once at
initialisation (the sweep's factory, the sweep's seed) and λ_max is measured, certified to ``--tol`` by Lanczos's
explicit residual, on the first n training examples for each n (nested samples: the 8 are the first 8 of the 32,
so a change is the data added, not another draw), for the whole adapter and for q_proj of a few layers. The table
gives each λ, its relative change against the largest sample, and each method's ratio to LoRA (what the relation
and the per-module figure use). A value that is not certified is marked; its change says less than its residual.

Resumable: every (size, kind, method) is written to ``--out`` (atomically) as soon as it is measured, smaller
sizes first and at each size the whole adapter before the modules, and a rerun with the same ``--out`` skips what
is there (its settings must match; ``--methods`` and ``--samples`` may grow); the figure goes beside it (.png).
``complete`` in the JSON says whether every requested value is in.

The verdict names the smallest sample whose whole-adapter λ and ratios to LoRA are all within ``--within`` of the
largest sample's: a statement relative to the largest sample measured, not to the population.

    # the long version (SmolLM2-135M, the demo's task and rank; estimate ≈ 2-3.5 h on 2 cores: per method 4 blocks ×
    # ~10 products at each n, a product ≈ 3-5 s per 8 examples as in the demo):
    .venv/bin/python bench/lambda_samples.py --threads 2 --out bench/results/lambda_samples.json
    # the table, verdict and figure again from what --out holds, measuring nothing:
    .venv/bin/python bench/lambda_samples.py --seed 1 --no-measure --out bench/results/lambda_samples.json
    # a tiny smoke run (random tiny Llama, a minute):
    .venv/bin/python bench/lambda_samples.py --model tiny-llama --task arith --rank 4 --samples 8,16,32 \\
        --batch-size 4 --max-length 96 --layers 0,1 --threads 1 --out /tmp/lambda_samples.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEMO_TASK = "arith:chain_sum,min_terms=2,max_terms=2,min_digits=1,max_digits=2"
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Measured:
    method: str
    block: str  # "adapter" (whole) or the module's name
    samples: int
    lambda_max: float
    certified: bool
    residual: float | None  # relative ‖Hy − θy‖/|θ|
    hvps: int
    seconds: float
    loss_tokens: int


def _ints(text: str, what: str, minimum: int = 1) -> tuple[int, ...]:
    try:
        values = tuple(int(item) for item in text.split(",") if item.strip())
    except ValueError:
        values = ()
    if not values or min(values) < minimum:
        raise SystemExit(f"--{what} must be comma-separated integers >= {minimum}, got {text!r}")
    return values


# The settings a measurement depends on: a resumed --out must have been made with the same ones (--methods,
# --samples, --within, --threads, --device and --out may change between runs, so a run can add methods or sizes).
MEASURED_WITH = (
    "model",
    "task",
    "rank",
    "seed",
    "batch_size",
    "max_length",
    "layers",
    "n_train",
    "data_seed",
    "tol",
    "max_iter",
)


def unit_done(rows: Sequence[Measured], method: str, size: int, kind: str, layers: Sequence[int]) -> bool:
    """Whether (method, size) already has its whole-adapter value (``kind`` "whole") or every chosen layer's
    q_proj value ("per-module") among ``rows``: a resumed run skips it."""
    from hessian_lora.hessian.filters import layer_index

    mine = [row for row in rows if row.method == method and row.samples == size]
    if kind == "whole":
        return any(row.block == "adapter" for row in mine)
    found = {layer_index(row.block) for row in mine if row.block.endswith("q_proj")}
    return set(layers) <= found


def measure_unit(
    method: str, size: int, kinds: Sequence[str], args: argparse.Namespace, layers: Sequence[int]
) -> list[Measured]:
    """Build ``method``'s adapter at initialisation and measure λ_max on the first ``size`` training examples,
    for the whole adapter and/or q_proj of ``layers`` (``kinds``)."""
    from hessian_lora.inputs.tasks import load_task
    from hessian_lora.measurement.measure import MeasureSettings, measure
    from hessian_lora.measurement.targets import AdaptedModule
    from hessian_lora.sweep.recommend import probe_batches
    from hessian_lora.training.adapters import AdapterConfig, adapter_at_initialisation
    from hessian_lora.training.train import TrainConfig

    n_train = max(args.n_train, max(args.sizes))  # one training set for every size: nested samples
    task = load_task(args.task, seed=args.data_seed, n_train=n_train, n_eval=0)
    config = AdapterConfig(
        method=method, rank=args.rank, alpha=None, dropout=0.0, targets=TARGETS, seed=args.seed
    )
    train = TrainConfig(
        lr=1.0, steps=1, batch_size=args.batch_size, max_length=args.max_length, seed=args.seed
    )
    started = time.perf_counter()
    model, tokenizer, _ = adapter_at_initialisation(
        args.model, config, device=args.device, train_examples=task.train, train_config=train
    )
    print(
        f"{method}: adapter at initialisation built in {time.perf_counter() - started:.1f} s", file=sys.stderr
    )
    batches = probe_batches(
        tokenizer,
        args.task,
        data_seed=args.data_seed,
        n_train=n_train,
        n_eval=0,
        samples=size,
        batch_size=args.batch_size,
        max_length=args.max_length,
    )
    tokens = sum(batch.loss_tokens for batch in batches)
    rows = []
    for kind in kinds:
        whole = kind == "whole"
        settings = MeasureSettings(
            blocks=kind,
            modules=None if whole else ("q_proj",),
            layers=None if whole else tuple(layers),
            smallest=False,
            tol=args.tol,
            max_iter=args.max_iter,
            max_length=args.max_length,
        )
        report = measure(AdaptedModule(model), settings, batches=batches, progress=False)
        for block in report.blocks:
            value = float(block.lambda_max)
            residual = None if block.residual is None or not value else float(block.residual) / abs(value)
            rows.append(
                Measured(
                    method,
                    block.name,
                    size,
                    value,
                    bool(block.converged),
                    residual,
                    int(block.hvps or 0),
                    float(block.seconds or 0.0),
                    tokens,
                )
            )
            print(
                f"  {method} n={size} ({tokens} loss tokens) {block.name}: λ_max {value:.5g} "
                f"{'certified' if block.converged else 'NOT certified'} "
                f"({block.hvps} products, {block.seconds:.1f} s)",
                file=sys.stderr,
            )
    return rows


def load_previous(path: Path | None, args: argparse.Namespace) -> list[Measured]:
    """The rows of an earlier run into ``path`` (none when it does not exist); its settings must match."""
    if path is None or not path.exists():
        return []
    try:
        previous = json.loads(path.read_text())
        settings, rows = previous["settings"], previous["rows"]
        loaded = [Measured(**row) for row in rows]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SystemExit(
            f"{path}: not a lambda_samples result ({error}): pass another --out or remove it"
        ) from None
    for name in MEASURED_WITH:
        if settings.get(name) != getattr(args, name):
            raise SystemExit(
                f"{path}: was measured with {name}={settings.get(name)!r}, this run has "
                f"{getattr(args, name)!r}: pass --{name.replace('_', '-')} {settings.get(name)} to "
                f"resume it, or another --out"
            )
    return loaded


def save(path: Path | None, args: argparse.Namespace, rows: Sequence[Measured], complete: bool) -> list[str]:
    """Write every row so far, the table and the verdict atomically; return the table's lines."""
    sizes = tuple(sorted({row.samples for row in rows}))
    lines, verdict = summarise(rows, sizes, args.within) if rows else ([], {})
    if path is not None:
        from hessian_lora.core.atomic import write_text_atomic

        settings = {
            key: (str(value) if isinstance(value, Path) else value)
            for key, value in vars(args).items()
            if key not in ("sizes", "no_measure")
        }  # how this run was asked for, not what it measured
        document = {
            "settings": settings,
            "complete": complete,
            "rows": [row.__dict__ for row in rows],
            "verdict": verdict,
            "table": lines,
        }
        write_text_atomic(path, json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    return lines


def summarise(
    rows: Sequence[Measured], sizes: Sequence[int], within: float, reference: str = "lora"
) -> tuple[list[str], dict[str, Any]]:
    """The markdown table and the verdict: λ per sample size, change against the largest sample, ratio to LoRA."""
    largest = max(sizes)
    by_key = {(row.method, row.block, row.samples): row for row in rows}
    methods = list(dict.fromkeys(row.method for row in rows))
    blocks = list(dict.fromkeys(row.block for row in rows))
    header = ["method", "block", *[f"λ n={n}" for n in sizes], *[f"Δ n={n}" for n in sizes if n != largest]]
    if reference in methods:
        header += [f"×{reference} n={n}" for n in sizes]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    changes: dict[int, list[float]] = {n: [] for n in sizes if n != largest}
    ratio_changes: dict[int, list[float]] = {n: [] for n in sizes if n != largest}
    for method in methods:
        for block in blocks:
            cells = [by_key.get((method, block, n)) for n in sizes]
            if not any(cells):
                continue
            text = [method, _short(block)]
            text += [
                "—" if cell is None else f"{cell.lambda_max:.4g}{'' if cell.certified else ' (uncert.)'}"
                for cell in cells
            ]
            top = by_key.get((method, block, largest))
            for n in sizes:
                if n == largest:
                    continue
                cell = by_key.get((method, block, n))
                if cell is None or top is None or not top.lambda_max:
                    text.append("—")
                    continue
                change = cell.lambda_max / top.lambda_max - 1
                text.append(f"{change:+.1%}")
                if block == "adapter":
                    changes[n].append(abs(change))
            if reference in methods:
                for n in sizes:
                    mine, theirs = by_key.get((method, block, n)), by_key.get((reference, block, n))
                    ratio = (
                        mine.lambda_max / theirs.lambda_max if mine and theirs and theirs.lambda_max else None
                    )
                    text.append("—" if ratio is None else f"{ratio:.3g}")
                    top_ratio = (
                        (
                            by_key[(method, block, largest)].lambda_max
                            / by_key[(reference, block, largest)].lambda_max
                        )
                        if (method, block, largest) in by_key
                        and (reference, block, largest) in by_key
                        and by_key[(reference, block, largest)].lambda_max
                        else None
                    )
                    if ratio is not None and top_ratio and n != largest and method != reference:
                        ratio_changes[n].append(abs(ratio / top_ratio - 1))
            lines.append("| " + " | ".join(text) + " |")
    enough = None
    for n in sorted(changes):
        worst = max(changes[n] + ratio_changes[n], default=math.inf)
        if worst <= within:
            enough = n
            break
    uncertified = sum(not row.certified for row in rows)
    # A run stopped part-way has some blocks without the largest sample: they take no part in the verdict.
    unjudged = [
        _short(block) for block in blocks if not any((method, block, largest) in by_key for method in methods)
    ]
    verdict = {
        "largest_sample": largest,
        "within": within,
        "smallest_sample_within": enough if enough is not None else largest,
        "worst_whole_change": {str(n): max(values, default=None) for n, values in changes.items()},
        "median_whole_change": {
            str(n): statistics.median(values) if values else None for n, values in changes.items()
        },
        "worst_ratio_change": {str(n): max(values, default=None) for n, values in ratio_changes.items()},
        "uncertified": uncertified,
        "not_judged": unjudged,
    }
    said = (
        f"the smallest sample whose whole-adapter λ_max and ratios to {reference} (every block) are all within "
        f"{within:.0%} of the {largest}-example values: {verdict['smallest_sample_within']} examples"
        + ("" if enough is not None else " (no smaller sample is)")
        + (f"; {uncertified} values not certified" if uncertified else "; every value certified")
        + (
            f"; left out, as they have no {largest}-example value yet: {', '.join(unjudged)}"
            if unjudged
            else ""
        )
    )
    return [*lines, "", said], verdict


def draw(rows: Sequence[Measured], path: Path, reference: str = "lora") -> None:
    """Two panels against the sample size (log axis): each block's λ_max relative to its value at the largest
    sample that block has (left), and each method's ratio to ``reference`` (right). The whole adapter is drawn
    thick, q_proj of each layer thin; a hollow marker is an uncertified value. Points are the sizes measured."""
    from hessian_lora.analysis.figures._style import method_style, new_figure
    from hessian_lora.methods.registry import method_label

    by_key = {(row.method, row.block, row.samples): row for row in rows}
    methods = list(dict.fromkeys(row.method for row in rows))
    blocks = list(dict.fromkeys(row.block for row in rows))
    figure = new_figure(12.0, 5.0)
    relative, ratio = figure.subplots(1, 2)
    line_styles = ("--", ":", "-.", (0, (5, 1)))
    for method in methods:
        for index, block in enumerate(blocks):
            mine = sorted(
                (row for row in rows if row.method == method and row.block == block),
                key=lambda row: row.samples,
            )
            if not mine:
                continue
            whole = block == "adapter"
            style = method_style(method)
            style.update(
                linewidth=2.6 if whole else 1.0,
                markersize=8 if whole else 5,
                linestyle="-" if whole else line_styles[index % len(line_styles)],
            )
            label = f"{method_label(method)}, {_short(block)}"
            uncertified = [row for row in mine if not row.certified]
            top = mine[-1].lambda_max
            relative.plot(
                [row.samples for row in mine], [row.lambda_max / top for row in mine], label=label, **style
            )
            if uncertified:
                relative.plot(
                    [row.samples for row in uncertified],
                    [row.lambda_max / top for row in uncertified],
                    linestyle="none",
                    marker="o",
                    markerfacecolor="white",
                    markeredgecolor="black",
                )
            if method == reference:
                continue
            pairs = [
                (row.samples, row.lambda_max / by_key[(reference, block, row.samples)].lambda_max)
                for row in mine
                if (reference, block, row.samples) in by_key
            ]
            if pairs:
                ratio.plot(*zip(*pairs, strict=True), label=label, **style)
    for axes in (relative, ratio):
        axes.set_xscale("log")
        axes.set_xlabel("training examples in the Hessian sample")
        axes.grid(alpha=0.3)
        sizes = sorted({row.samples for row in rows})
        axes.set_xticks(sizes, [str(n) for n in sizes])
        axes.minorticks_off()
    relative.axhline(1.0, color="grey", linewidth=0.8)
    relative.set_ylabel("λ_max / λ_max at that block's largest sample")
    relative.set_title("λ_max at initialisation against the sample")
    ratio.set_yscale("log")
    ratio.set_ylabel(f"λ_max / {method_label(reference)}'s (same block, same sample)")
    ratio.set_title(f"ratio to {method_label(reference)}")
    certified = "every value certified" if all(row.certified for row in rows) else "hollow: not certified"
    figure.suptitle(
        f"nested samples (the smaller are the first examples of the larger); {certified}", fontsize=9
    )
    handles, labels = relative.get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=4, fontsize=8)
    figure.savefig(path, dpi=110)


def _short(block: str) -> str:
    if block == "adapter":
        return "whole adapter"
    from hessian_lora.hessian.filters import layer_index

    layer = layer_index(block)
    return f"{block.rsplit('.', 1)[-1]} L{layer}" if layer is not None else block


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default=DEMO_TASK)
    parser.add_argument("--methods", default="lora,pissa,olora")
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="adapter seed (the demo's: 0)")
    parser.add_argument("--samples", default="8,32,128", help="sample sizes, comma-separated")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--layers", default="0,14,29", help="layers whose q_proj is measured on its own")
    parser.add_argument(
        "--n-train", type=int, default=2000, help="the task's training set (the demo's: 2000)"
    )
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--within", type=float, default=0.1, help="relative change the verdict accepts")
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="JSON with every measurement and the verdict")
    parser.add_argument(
        "--no-measure",
        action="store_true",
        help="measure nothing: rewrite --out's table, verdict and figure from its values",
    )
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.sizes = tuple(sorted(set(_ints(args.samples, "samples"))))
    layers = _ints(args.layers, "layers", minimum=0)
    methods = [name.strip() for name in args.methods.split(",") if name.strip()]
    rows = load_previous(args.out, args)
    if rows:
        print(f"resuming {args.out}: {len(rows)} values already measured", file=sys.stderr)
    started = time.perf_counter()
    # Sizes outer, then the whole adapter before the modules, methods inner: a run stopped part-way has every
    # method at the smaller sizes, and at a size every method's whole-adapter λ (what the relation uses) before
    # any per-module one; each (size, kind, method) is saved as soon as it is measured. The adapter is rebuilt
    # for each kind (seconds, against minutes of products).
    if args.no_measure and not rows:
        raise SystemExit(f"--no-measure: {args.out} holds no values: pass the --out of an earlier run")
    for size in () if args.no_measure else args.sizes:
        for kind in ("whole", "per-module"):
            for method in methods:
                if not unit_done(rows, method, size, kind, layers):
                    rows += measure_unit(method, size, [kind], args, layers)
                    save(args.out, args, rows, complete=False)
    complete = all(
        unit_done(rows, method, size, kind, layers)
        for size in args.sizes
        for method in methods
        for kind in ("whole", "per-module")
    )
    lines = save(args.out, args, rows, complete=complete)
    if args.out is not None and rows:
        draw(rows, args.out.with_suffix(".png"))
        print(f"figure: {args.out.with_suffix('.png')}", file=sys.stderr)
    print("\n".join(lines))
    print(f"total {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
