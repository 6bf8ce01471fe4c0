"""Synthetic sweep run directories with known answers, following docs/ARCHITECTURE.md ("Sweep run directory").

Each method's accuracy is an exact parabola in log10(LR) with a chosen vertex η*, so the analysis must recover
η* exactly; λ_max at initialisation is chosen per method, so the λ–η* relation is known too.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from hessian_lora.hessian import results

RUNS_SCHEMA = """
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY, method TEXT, lr REAL, seed INTEGER, rank INTEGER, batch_size INTEGER,
    status TEXT, train_loss REAL, eval_loss REAL, accuracy REAL, lambda_init REAL, lambda_final REAL,
    precond_lambda_final REAL, steps INTEGER, tokens INTEGER, wall_seconds REAL, checkpoint TEXT,
    history TEXT, error TEXT, updated_at TEXT
)
"""

QUARTER_DECADE_GRID = tuple(2e-5 * 10 ** (k / 4) for k in range(12))
MODULES = ("q_proj", "v_proj")
LAYERS = 2


@dataclass(frozen=True)
class SyntheticMethod:
    eta_star: float
    lambda_init: float
    peak: float = 0.6
    curvature: float = 0.05  # accuracy drop per squared decade away from η*
    module_ratio: float = 1.0  # per-module λ relative to the method's whole-adapter λ
    diverge_above: float | None = None


def accuracy_at(method: SyntheticMethod, lr: float, seed_shift: float = 0.0) -> float:
    return method.peak - method.curvature * (math.log10(lr) - math.log10(method.eta_star) - seed_shift) ** 2


def eigen_report(
    lambda_whole: float,
    module_ratio: float,
    *,
    seed: int,
    with_density: bool = True,
    precond: float | None = None,
    lr: float | None = None,
    beta1: float = 0.9,
) -> dict:
    """``EigenReport.to_dict()`` of a whole-adapter block plus per-module blocks (built with the engine's own
    result dataclasses, so a change of their JSON shape shows up here)."""
    blocks = [_block("adapter", lambda_whole, with_density=with_density, precond=precond, lr=lr, beta1=beta1)]
    for layer in range(LAYERS):
        for index, module in enumerate(MODULES):
            scale = module_ratio * (1 + 0.1 * layer + 0.05 * index + 0.01 * seed)
            name = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            blocks.append(_block(name, lambda_whole * scale))
    report = results.EigenReport(
        settings={"solver": "lanczos", "samples": 16, "batch_size": 4},
        blocks=tuple(blocks),
        source={"seed": seed},
    )
    return report.to_dict()


def _eigen(value: float, solver: str = "lanczos") -> results.EigenResult:
    estimates = [value * (1 - 0.6**k) for k in range(1, 9)] + [value]
    history = tuple(
        results.IterationRecord(iteration=k, hvps=k + 1, seconds=0.001 * k, values=(est, -est / 3))
        for k, est in enumerate(estimates)
    )
    return results.EigenResult(
        solver=solver,
        largest=(value,),
        largest_residuals=(1e-6 * value,),
        smallest=(-value / 3,),
        smallest_residuals=(1e-6 * value,),
        converged=True,
        stop_reason="tolerance",
        iterations=len(history),
        hvps=len(history),
        seconds=0.01,
        tol=1e-4,
        max_iter=100,
        size=1000,
        history=history,
    )


def _block(
    name: str,
    value: float,
    *,
    with_density: bool = False,
    precond: float | None = None,
    lr: float | None = None,
    beta1: float = 0.9,
) -> results.BlockReport:
    density = trace = preconditioned = None
    if with_density:
        nodes = tuple(tuple(value * x for x in (-0.3, -0.05, 0.0, 0.02, 0.2, 1.0)) for _ in range(2))
        weights = ((0.05, 0.2, 0.5, 0.2, 0.04, 0.01), (0.04, 0.25, 0.45, 0.2, 0.05, 0.01))
        density = results.DensityResult(
            nodes=nodes, weights=weights, steps=6, hvps=12, seconds=0.02, size=1000
        )
        trace = results.TraceResult(
            method="hutchinson", trace=3.0 * value, std_error=0.1, hvps=10, seconds=0.01, size=1000
        )
    if precond is not None:
        preconditioned = results.PreconditionedResult(
            sharpness=precond,
            lr=lr,
            beta1=beta1,
            eps=1e-8,
            step=10,
            gd_threshold=2 / lr if lr else None,
            adam_threshold=(2 + 2 * beta1) / ((1 - beta1) * lr) if lr else None,
            eigen=_eigen(precond, "lanczos"),
        )
    eigen = _eigen(value)
    return results.BlockReport(
        name=name,
        parameters=1000,
        parameter_names=(f"{name}.lora_A.default.weight",),
        lambda_max=value,
        lambda_min=-value / 3,
        residual=1e-6 * value,
        converged=True,
        hvps=eigen.hvps,
        seconds=eigen.seconds,
        tokens=512,
        batches=4,
        eigen=eigen,
        trace=trace,
        density=density,
        preconditioned=preconditioned,
    )


def write_run_dir(
    root: Path,
    methods: Mapping[str, SyntheticMethod],
    *,
    lrs: Sequence[float] = QUARTER_DECADE_GRID,
    seeds: Sequence[int] = (0,),
    seed_shift: float = 0.0,
    rank: int = 8,
    beta1: float = 0.9,
    reports: bool = True,
    final_reports: bool = True,
    batch_size: int = 4,
    append: bool = False,
    config: Mapping | None = None,
) -> Path:
    """Write config.yaml, results.sqlite and hessian/*.json for ``methods``; returns ``root``.

    ``seed_shift`` moves seed s's optimum by ``(s - mean(seeds)) * seed_shift`` decades: the seed-mean curve is
    then still a parabola with its vertex at η*, and each seed's own optimum is known. ``append``: add this
    (rank, batch size) setting to an existing directory (an ablation); ``config``: extra config.yaml settings.
    """
    centre = sum(seeds) / len(seeds)
    root.mkdir(parents=True, exist_ok=True)
    data = {
        "model": "tiny-llama",
        "task": "arith",
        "methods": list(methods),
        "lrs": list(lrs),
        "seeds": list(seeds),
        "ranks": [rank],
        "batch_sizes": [batch_size],
        "betas": [beta1, 0.999],
        "steps": 10,
        "max_length": 96,
        "data_seed": 0,
        "n_train": 64,
        "n_eval": 16,
        "hessian": {"init": reports, "final": final_reports, "samples": 8, "batch_size": 4},
        **(config or {}),
    }
    if append:
        old = yaml.safe_load((root / "config.yaml").read_text())
        data["ranks"] = sorted(set(old["ranks"]) | {rank})
        data["batch_sizes"] = sorted(set(old["batch_sizes"]) | {batch_size})
    (root / "config.yaml").write_text(yaml.safe_dump(data))
    hessian_dir = root / "hessian"
    hessian_dir.mkdir(exist_ok=True)
    connection = sqlite3.connect(root / "results.sqlite")
    if not append:
        connection.execute(RUNS_SCHEMA)
    for name, method in methods.items():
        for seed in seeds:
            lambda_seed = method.lambda_init * (1 + 0.01 * seed)
            if reports:
                report = eigen_report(lambda_seed, method.module_ratio, seed=seed)
                (hessian_dir / f"{name}_r{rank}_s{seed}_init.json").write_text(json.dumps(report))
            for step, lr in enumerate(lrs):
                run_id = f"{name}-lr{step}-s{seed}" + (f"-r{rank}-b{batch_size}" if append else "")
                diverged = method.diverge_above is not None and lr > method.diverge_above
                accuracy = None if diverged else accuracy_at(method, lr, (seed - centre) * seed_shift)
                history = [
                    {"step": k, "loss": 2.0 * math.exp(-k * lr * 100) + 0.1, "lr": lr} for k in range(10)
                ]
                lambda_final = 2 / lr * 1.1
                precond = 38 / lr * 0.9
                connection.execute(
                    "INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        run_id,
                        name,
                        lr,
                        seed,
                        rank,
                        batch_size,
                        "diverged" if diverged else "done",
                        None if diverged else history[-1]["loss"],
                        None if diverged else 1.0 - (accuracy or 0),
                        accuracy,
                        lambda_seed,
                        None if diverged else lambda_final,
                        None if diverged else precond,
                        10,
                        1000,
                        1.0,
                        None,
                        json.dumps(history),
                        None,
                        "2026-01-01T00:00:00",
                    ),
                )
                # Sharpness along training (hessian.during): λ̃ rises from 0.2 to 0.9 of Adam's limit 38/lr.
                sharpness = [
                    {
                        "step": k,
                        "lambda_max": lambda_seed * (1 + k),
                        "lr": lr,
                        "hvps": 3,
                        "precond_hvps": 3,
                        "seconds": 0.01,
                        "converged": True,
                        "preconditioned": None if k == 0 else 38 / lr * (0.2 + 0.1 * k),
                    }
                    for k in range(8)
                ]
                (root / "runs" / run_id).mkdir(parents=True, exist_ok=True)
                (root / "runs" / run_id / "sharpness.json").write_text(
                    json.dumps({"settings": {}, "beta1": beta1, "peak_lr": lr, "history": sharpness})
                )
                if final_reports and not diverged:
                    report = eigen_report(
                        lambda_final,
                        method.module_ratio,
                        seed=seed,
                        with_density=False,
                        precond=precond,
                        lr=lr,
                        beta1=beta1,
                    )
                    (hessian_dir / f"{run_id}_final.json").write_text(json.dumps(report))
    connection.commit()
    connection.close()
    return root


def noisy_runs(
    methods: Mapping[str, SyntheticMethod],
    *,
    lrs: Sequence[float],
    seeds: Sequence[int],
    n_examples: int,
    rng: np.random.Generator,
    seed_shift_sd: float = 0.0,
) -> list:
    """In-memory :class:`~hessian_lora.analysis.runs.RunRecord` rows with per-example Bernoulli outcomes drawn from each
    method's known accuracy curve (seed s's curve shifted by a N(0, seed_shift_sd) decades draw): a sweep with
    known noise, whose intervals can be checked against the true η*."""
    from hessian_lora.analysis.runs import RunRecord

    runs = []
    for name, method in methods.items():
        for seed in seeds:
            shift = float(rng.normal(0.0, seed_shift_sd)) if seed_shift_sd else 0.0
            for step, lr in enumerate(lrs):
                p = min(max(accuracy_at(method, lr, shift), 0.0), 1.0)
                scores = tuple(float(x) for x in (rng.random(n_examples) < p))
                runs.append(
                    RunRecord(
                        run_id=f"{name}-lr{step}-s{seed}",
                        method=name,
                        lr=lr,
                        seed=seed,
                        rank=8,
                        batch_size=4,
                        status="done",
                        accuracy=float(np.mean(scores)),
                        eval_scores=scores,
                    )
                )
    return runs


def write_eval_scores(root: Path, runs: Sequence) -> None:
    """runs/<run_id>/eval.json for in-memory rows (the layout the sweep writes)."""
    for run in runs:
        path = root / "runs" / run.run_id / "eval.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"metric": "accuracy", "scores": list(run.eval_scores)}))


def mark_uncertified(root: Path, init_key: str, block_name: str, *, residual: float = 0.02) -> None:
    """Make one block of ``hessian/<init_key>_init.json`` a λ_max its solver did not certify: not converged,
    stopped at ``max_iter``, relative residual ``residual`` (what a real report of a run that ran out of products
    holds)."""
    path = root / "hessian" / f"{init_key}_init.json"
    data = json.loads(path.read_text())
    for block in data["blocks"]:
        if block["name"] == block_name:
            block["converged"] = False
            block["residual"] = residual * block["lambda_max"]
            if block.get("eigen"):
                block["eigen"]["converged"] = False
                block["eigen"]["stop_reason"] = "max_iter"
    path.write_text(json.dumps(data))
