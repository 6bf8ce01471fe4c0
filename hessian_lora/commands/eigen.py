"""``hessian-lora eigen``: loss-Hessian eigenvalues of an adapter, per block, with residual certificates.

Estimate the extreme eigenvalues of the Hessian of the token-weighted mean loss with respect to adapter
parameters (all of them, or each module's lora_A/lora_B[/magnitude] block), by Lanczos or power iteration on
exact Hessian-vector products, each value with its residual ||Hv - λv||. Analyse a CHECKPOINT directory
(hessian-lora's, or a plain peft adapter directory on the base model its adapter_config.json names, or
--model), a hub adapter repo id (--revision), or an adapter at initialisation with --method/--model. Before the
first product it prints what it measures on (data, prompt template, examples, loss tokens) and the memory plan
(model, block, activations per batch, Krylov vectors and where they will live; a plan that cannot fit is refused
in one line). A per-module scan written to --out resumes: blocks already in the file are skipped. Under torchrun
the products run data-parallel (each process its share of the batches).

Exit status: 0 when every requested value is certified to --tol, 3 when the report was written but some value
is not (the summary says which and why, and what helps), 2 for bad input, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from hessian_lora._io import remove_stale_temporaries
from hessian_lora._numbers import tolerance
from hessian_lora._paths import check_output_file
from hessian_lora.commands import add_command
from hessian_lora.commands._prompt import add_prompt_template_argument
from hessian_lora.commands._threads import add_threads_argument, apply_threads
from hessian_lora.errors import UserError
from hessian_lora.registry import check_method_rank

HELP = "loss-Hessian eigenvalues (λ_max, λ_min, top-k) of an adapter, whole or per module"
# Exit status when the report was written but a requested value is not certified to --tol (documented in the
# README): scripts can tell "measured and certified" (0) from "measured, read the residuals" (3).
UNCERTIFIED_EXIT = 3
# What helps, by the solver's stop reason (hessian/lanczos.py).
_UNCERTIFIED_HELP = {
    "max_iter": "the iteration cap came first: raise --max-iter (or loosen --tol)",
    "verification_failed": "the recurrence reached --tol but the explicit residual of the returned vector did not, "
                           "at the products' round-off: more products do not help; loosen --tol (the report "
                           "keeps the explicit residual)",
    "memory": "the Krylov basis filled its memory budget: raise --krylov-memory, free memory on the device, or "
              "measure smaller blocks (--blocks per-module)",
    "relative_change": "PyHessian's stop rule fired on a value whose residual exceeds --tol: use --solver lanczos",
    "other": "read the residual in the report; raise --max-iter or use --solver lanczos",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "eigen", HELP, __doc__, run)
    parser.add_argument("checkpoint", nargs="?", default=None, help="checkpoint or plain peft adapter directory, or a "
                        "hub adapter repo id such as user/my-lora (omit with --method)")
    parser.add_argument("--revision", default=None, help="hub adapter: branch, tag or commit (default main)")
    source = parser.add_argument_group("adapter at initialisation (instead of CHECKPOINT)")
    source.add_argument("--method", default=None, help="build this method's adapter at initialisation")
    source.add_argument("--model", default=None, help="base model for --method (default smollm2-135m), or for a "
                        "plain peft adapter CHECKPOINT (default: its base_model_name_or_path)")
    source.add_argument("--rank", type=int, default=8, help="LoRA rank for --method (default 8)")
    source.add_argument("--alpha", type=float, default=None, help="LoRA alpha for --method (default: the rank)")
    source.add_argument("--targets", default=None, help="modules to adapt for --method (default: all seven projections)")
    source.add_argument("--seed", type=int, default=0, help="adapter initialisation seed for --method (default 0)")
    source.add_argument("--model-seed", type=int, default=0, help="seed of a random base (tiny-llama) (default 0)")
    data = parser.add_argument_group("data")
    choice = data.add_mutually_exclusive_group()
    choice.add_argument("--task", default=None, help="task spec (default: the checkpoint's task, else arith)")
    choice.add_argument("--data", default=None, help="a .json/.jsonl file of examples (PATH[::PROMPT,RESPONSE])")
    data.add_argument("--samples", type=int, default=64, help="examples to average the loss over (default 64; "
                      "the paper used 500)")
    data.add_argument("--batch-size", type=int, default=8, help="examples per batch (default 8)")
    data.add_argument("--max-length", type=int, default=512, help="token limit per example (default 512)")
    data.add_argument("--data-seed", type=int, default=0, help="seed that picks the examples (default 0)")
    add_prompt_template_argument(data, default=None,
                                 purpose="use the one the adapter was trained with (default: the one the checkpoint "
                                 "records, else chat)")
    blocks = parser.add_argument_group("blocks and solver")
    blocks.add_argument("--blocks", choices=("whole", "per-module"), default="whole",
                        help="one block for the whole adapter (default) or one per adapted module")
    blocks.add_argument("--modules", default=None, help="per-module: module names, e.g. q_proj,v_proj (default all)")
    blocks.add_argument("--layers", default=None, help="per-module: layers a:b (a <= i < b), 3, or 0,5,10 (default all)")
    blocks.add_argument("--solver", choices=("lanczos", "power", "pyhessian"), default="lanczos",
                        help="lanczos (default; λ_max and λ_min), power (shifted, largest algebraic), or "
                        "pyhessian (PyHessian 0.1's power iteration, for comparison)")
    blocks.add_argument("--top-k", type=int, default=1, help="eigenvalues per end (default 1)")
    blocks.add_argument("--tol", type=float, default=1e-3, help="relative residual ||Hv - λv|| <= tol·|λ| (default 1e-3)")
    blocks.add_argument("--max-iter", type=int, default=100, help="iteration cap per block (default 100)")
    blocks.add_argument("--no-min", action="store_true", help="lanczos: skip λ_min (fewer products)")
    blocks.add_argument("--solver-seed", type=int, default=0, help="seed of the start vectors (default 0)")
    blocks.add_argument("--block-size", default=None, metavar="P|rank",
                        help="lanczos: start vectors per block (default --top-k); 'rank' takes the block's LoRA rank "
                        "r, the width of the cluster λ_max sits in at initialisation (r products a step)")
    blocks.add_argument("--one-at-a-time", action="store_true",
                        help="per-module: solve the blocks one after another instead of side by side on shared passes")
    extras = parser.add_argument_group("extra measurements")
    extras.add_argument("--trace", action="store_true", help="Hutch++ estimate of tr(H)")
    extras.add_argument("--trace-hvps", type=int, default=30, help="Hutch++ budget in products (default 30)")
    extras.add_argument("--density", action="store_true", help="spectral density by stochastic Lanczos quadrature")
    extras.add_argument("--density-steps", type=int, default=30, help="Lanczos steps per SLQ run (default 30)")
    extras.add_argument("--density-runs", type=int, default=1, help="SLQ runs (default 1)")
    extras.add_argument("--preconditioned", action="store_true",
                        help="Adam-preconditioned sharpness λ1(P^-1 H) from the checkpoint's optimizer state, with the "
                        "thresholds 2/lr and (2+2β1)/((1-β1)lr)")
    extras.add_argument("--lr", type=float, default=None, help="learning rate for the thresholds (default: the "
                        "checkpoint's)")
    engine = parser.add_argument_group("engine")
    engine.add_argument("--backend", choices=("auto", "double_backward", "forward_over_reverse", "finite_difference"),
                        default="auto", help="Hessian-vector product backend (default: the fastest exact one)")
    engine.add_argument("--dora-norm", choices=("detached", "differentiated"), default="detached",
                        help="DoRA: the Hessian of peft's surrogate with the column norm detached (default; what DoRA "
                        "trains with) or of the true loss with the norm differentiated")
    engine.add_argument("--no-reuse", action="store_true",
                        help="do not keep each batch's first-order graph between products (saves memory)")
    engine.add_argument("--krylov-memory", type=float, default=None, metavar="GIB",
                        help="GiB the Krylov vectors may take on the device (on a GPU as much again in pinned host "
                        "memory); beyond it kept products are dropped, then the basis stops growing (default: "
                        "sized from the free memory; the memory plan is printed before the first product)")
    engine.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--out", required=True, help="JSON report to write (and to resume from)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_threads_argument(parser)


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    from hessian_lora.measure import eigen

    if args.checkpoint is None and args.method is None:
        raise UserError("pass a CHECKPOINT directory, or --method (and --model) to analyse an adapter at initialisation.")
    if args.checkpoint is not None and args.method is not None:
        raise UserError("give either a CHECKPOINT or --method, not both.")
    if args.data is not None and not Path(args.data.split("::", 1)[0]).is_file():
        raise UserError(f"--data {args.data}: no such file; pass a .json or .jsonl file of examples.")
    if args.blocks == "whole" and (args.modules or args.layers):
        raise UserError("--modules/--layers pick per-module blocks: add --blocks per-module.")
    tolerance(args.tol, "--tol", fix="use e.g. --tol 1e-3 (a tolerance of 1 or more certifies anything).")
    if args.method is not None:
        check_method_rank(args.method, args.rank)
    out = check_output_file(args.out, "--out")
    # Temporary files a killed write of this report left; only this report's, since a sweep or another eigen
    # may be writing beside it.
    remove_stale_temporaries(out.parent, name=out.name)
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip()) if args.targets else None
    report = eigen(
        args.checkpoint,
        model=args.model, method=args.method, rank=args.rank, alpha=args.alpha, targets=targets,
        adapter_seed=args.seed, model_seed=args.model_seed,
        task=args.data or args.task, samples=args.samples, batch_size=args.batch_size,
        max_length=args.max_length, data_seed=args.data_seed,
        blocks=args.blocks, modules=args.modules, layers=args.layers,
        solver=args.solver, top_k=args.top_k, smallest=not args.no_min, tol=args.tol, max_iter=args.max_iter,
        seed=args.solver_seed, trace=args.trace, trace_hvps=args.trace_hvps, density=args.density,
        density_steps=args.density_steps, density_runs=args.density_runs, preconditioned=args.preconditioned,
        lr=args.lr, backend=args.backend, reuse=False if args.no_reuse else "auto",
        prompt_template=args.prompt_template, dora_norm=args.dora_norm, krylov_memory=args.krylov_memory,
        block_size=args.block_size, together=not args.one_at_a_time, device=args.device, out=args.out, progress=not args.quiet, revision=args.revision,
    )
    from hessian_lora.hessian import distributed

    if distributed.is_main_process():
        _print_summary(report, args.out)
    return 0 if all(block.converged for block in report.blocks) else UNCERTIFIED_EXIT


def _uncertified_by_reason(blocks: object) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for block in blocks:  # type: ignore[attr-defined]
        if not block.converged:
            reason = block.eigen.stop_reason if block.eigen is not None else "other"
            grouped.setdefault(reason if reason in _UNCERTIFIED_HELP else "other", []).append(block.name)
    return grouped


def _print_summary(report: object, out: str) -> None:
    blocks = report.blocks  # type: ignore[attr-defined]
    width = max([len(b.name) for b in blocks] + [5])
    print(f"{'block':<{width}}  {'lambda_max':>11}  {'lambda_min':>11}  {'residual':>9}  conv  {'hvps':>5}  "
          f"{'seconds':>8}", file=sys.stdout)
    for block in blocks:
        lambda_min = f"{block.lambda_min:11.5g}" if block.lambda_min is not None else f"{'-':>11}"
        residual = f"{block.residual:9.2e}" if block.residual is not None else f"{'-':>9}"
        extra = ""
        if block.preconditioned is not None:
            p = block.preconditioned
            extra = f"  P^-1H {p.sharpness:.5g}" + (f" (Adam EoS {p.adam_threshold:.4g})" if p.adam_threshold else "")
        if block.trace is not None:
            extra += f"  trace {block.trace.trace:.5g}"
        print(f"{block.name:<{width}}  {block.lambda_max:11.5g}  {lambda_min}  {residual}  "
              f"{'yes ' if block.converged else 'NO  '}  {block.hvps:5d}  {block.seconds:8.1f}{extra}", file=sys.stdout)
    values = [b.lambda_max for b in blocks if b.lambda_max is not None]
    if len(values) > 1:
        print(f"median lambda_max over {len(values)} blocks: {statistics.median(values):.5g}", file=sys.stdout)
    for reason, names in _uncertified_by_reason(blocks).items():
        print(f"not certified ({reason}): {', '.join(names)}: {_UNCERTIFIED_HELP.get(reason, _UNCERTIFIED_HELP['other'])}",
              file=sys.stdout)
    note = report.source.get("preconditioner_note")  # type: ignore[attr-defined]
    if note:
        print(f"preconditioned sharpness not computed: {note}", file=sys.stdout)
    print(f"report: {out}", file=sys.stdout)
