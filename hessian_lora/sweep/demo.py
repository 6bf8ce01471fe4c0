"""The one-command demo: sweep, sharpness at initialisation, analysis and figures.

``run_demo()`` runs ``experiments/smollm2_arith.yaml`` (``quick=True``: ``experiments/tiny.yaml``) through the
sweep API into a resumable run directory (with the config's ``search: adaptive``: each method's best LR found by
the λ-guided search, λ_max at initialisation measured once as its centre; ``full=True`` runs the whole grid), then
measures what the figures need and the sweep's config did not ask for, each written under the run-directory contract:

- ``hessian/<method>_r<rank>_s<seed>_init.json``: λ_max of the whole adapter at initialisation with its
  spectral density (when the sweep did not measure at init; otherwise the density goes to
  ``..._init_density.json``);
- ``hessian/<method>_r<rank>_s<seed>_init_modules.json``: per-module λ_max at initialisation (a subset of
  modules and layers, see :data:`QUICK_MODULES`/:data:`FULL_MODULES`);
- ``hessian/<run_id>_final.json``: raw and Adam-preconditioned λ_max at the end of each method's best run
  (from its checkpoint), when the sweep did not measure at the end.

Then ``analyze`` and ``plot``. Every step resumes: a rerun skips finished runs and existing reports.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from hessian_lora.analysis.figures.plots import FIGURE_NAMES, PlotResult, plot_run
from hessian_lora.analysis.report import markdown_table, write_analysis
from hessian_lora.analysis.runs import load_runs
from hessian_lora.analysis.summary import Analysis, analyze
from hessian_lora.core.errors import UserError
from hessian_lora.core.rundir import InitKey
from hessian_lora.inputs.models import load_tokenizer
from hessian_lora.inputs.tasks import load_task
from hessian_lora.measurement.measure import measure
from hessian_lora.measurement.targets import AdaptedModule, Checkpoint
from hessian_lora.settings.sweep import load_config
from hessian_lora.sweep import runner
from hessian_lora.sweep.recommend import probe_batches
from hessian_lora.training.adapters import adapter_at_initialisation

if TYPE_CHECKING:
    from hessian_lora.core.rundir import InitKey
    from hessian_lora.measurement.measure import MeasureSettings
    from hessian_lora.settings.sweep import SweepConfig
    from hessian_lora.training.adapters import AdapterAtInit

REPO_ROOT = Path(__file__).resolve().parents[2]
FULL_CONFIG = REPO_ROOT / "experiments" / "smollm2_arith.yaml"
QUICK_CONFIG = REPO_ROOT / "experiments" / "tiny.yaml"
DEFAULT_OUT = {True: Path("runs") / "demo-tiny", False: Path("runs") / "demo-smollm2"}
# Per-module scan at initialisation: q_proj and v_proj on every layer of the tiny model; q_proj (the paper's
# Figure C3 module) on evenly spaced layers of a real model, where every block costs a full Lanczos run.
QUICK_MODULES = ("q_proj", "v_proj")
FULL_MODULES = ("q_proj",)
FULL_LAYER_SAMPLES = 3  # first, middle and last layer: what the README's SmolLM2 run measured
DENSITY_STEPS = {True: 15, False: 12}  # SLQ Lanczos steps (quick, full; full as in the README run)
# The main job (an adaptive config) leaves the density out: ~12 HVPs per method that no η* needs (--density-steps).
ADAPTIVE_DENSITY_STEPS = 0


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` produced: the run directory, its analysis and the figures written."""

    run_dir: Path
    analysis: Analysis
    plots: PlotResult
    wall_seconds: float
    measured: tuple[str, ...]  # reports written by this call

    def summary(self) -> str:
        """The demo's closing lines: the analysis table and where each figure is."""
        lines = [markdown_table(self.analysis), "", f"Figures in {self.run_dir / 'figures'}:"]
        for key, paths in self.plots.written.items():
            lines.append(f"  ({key}) {paths[0]}")
        for key, reason in self.plots.skipped.items():
            lines.append(f"  ({key}) {FIGURE_NAMES[key]}: skipped, {reason}")
        lines.append(
            f"Analysis: {self.run_dir / 'analysis.md'} and analysis.json; demo wall time "
            f"{self.wall_seconds:.0f} s."
        )
        return "\n".join(lines)


def run_demo(
    *,
    quick: bool = False,
    out: str | os.PathLike[str] | None = None,
    config: str | os.PathLike[str] | None = None,
    measure_final: bool = True,
    modules: Sequence[str] | None = None,
    layer_samples: int = FULL_LAYER_SAMPLES,
    density_steps: int | None = None,
    progress: bool = True,
    device: str | None = None,
    full: bool = False,
    bars: bool | None = None,
) -> DemoResult:
    """Sweep, λ_max at init (and at the end of the best runs unless ``measure_final`` is off), analysis, figures.

    ``full``: run the config's whole LR grid even when it sets ``search: adaptive``. ``bars``: the overall
    progress line and the per-run bars (None: when stderr is a terminal; never without ``progress``).

    ``modules`` are the projections of the per-module scan at init (default :data:`QUICK_MODULES` or
    :data:`FULL_MODULES`), on every layer with ``quick`` and on ``layer_samples`` evenly spaced layers otherwise;
    ``density_steps`` sets the SLQ steps of the spectral density (0: no density).
    """
    started = time.perf_counter()
    config_path = Path(config) if config is not None else (QUICK_CONFIG if quick else FULL_CONFIG)
    if not config_path.is_file():
        raise UserError(
            f"demo config {config_path} is missing: pass --config with a sweep YAML file "
            "(e.g. experiments/tiny.yaml)."
        )
    if layer_samples < 2:
        raise UserError(f"--layer-samples must be at least 2, got {layer_samples}.")
    if density_steps is not None and density_steps < 0:
        raise UserError(f"--density-steps must be >= 0, got {density_steps}.")
    sweep_config = load_config(config_path)
    if full:
        sweep_config = replace(sweep_config, search=None)
    adaptive = sweep_config.search is not None
    run_dir = Path(out) if out is not None else DEFAULT_OUT[quick]
    say = _Clock(progress, started)
    overall = OverallProgress(enabled=progress and bars is not False, started=started)
    try:
        return _demo_steps(
            sweep_config,
            config_path,
            run_dir,
            say,
            overall,
            quick=quick,
            adaptive=adaptive,
            measure_final=measure_final,
            modules=modules,
            layer_samples=layer_samples,
            density_steps=density_steps,
            progress=progress and bars is not False,
            device=device,
            started=started,
        )
    finally:
        overall.close()


def _demo_steps(
    sweep_config: SweepConfig,
    config_path: Path,
    run_dir: Path,
    say: _Clock,
    overall: OverallProgress,
    *,
    quick: bool,
    adaptive: bool,
    measure_final: bool,
    modules: Sequence[str] | None,
    layer_samples: int,
    density_steps: int | None,
    progress: bool,
    device: str | None,
    started: float,
) -> DemoResult:
    how = "adaptive LR search" if adaptive else "LR grid"
    overall.phase(f"[1/4] sweep ({how})")
    say(f"[1/4] sweep {config_path.name} ({how}) into {run_dir}")
    if density_steps is None:
        density_steps = ADAPTIVE_DENSITY_STEPS if adaptive and not quick else DENSITY_STEPS[quick]
    extras = InitExtras(
        sweep_config,
        run_dir,
        modules=tuple(modules) if modules else (QUICK_MODULES if quick else FULL_MODULES),
        layers=None if quick else layer_samples,
        density_steps=density_steps,
        progress=progress,
    )
    # The search's centres build each method's adapter at initialisation: the per-module scan rides along.
    summary = runner.run_sweep(
        sweep_config,
        run_dir,
        progress=progress,
        device=device,
        on_run=overall.runs,
        at_init=extras.measure,
        source=str(config_path),
    )
    say(summary.line())

    overall.phase("[2/4] λ_max at init")
    say(
        "[2/4] λ_max per method at initialisation (whole adapter, spectral density, per-module), where missing"
    )
    measure_init_reports(extras, device=device)
    measured = list(extras.written)
    analysis = analyze(run_dir)
    if measure_final:
        overall.phase("[3/4] λ_max at the end")
        say("[3/4] raw and Adam-preconditioned λ_max at the end of each method's best run")
        measured += measure_final_reports(sweep_config, run_dir, analysis, progress=progress, device=device)
        analysis = analyze(run_dir)
    overall.phase("[4/4] analysis and figures")
    say("[4/4] analysis and figures")
    write_analysis(analysis)
    plots = plot_run(run_dir, run_dir / "figures", analysis=analysis)
    return DemoResult(run_dir, analysis, plots, time.perf_counter() - started, tuple(measured))


def _say(text: str, progress: bool) -> None:
    if progress:
        tqdm.write(text, file=sys.stderr)  # above any open bars, which it redraws


class OverallProgress:
    """The demo's one overall line (tqdm on stderr, above the per-run bars): phase, runs done of planned,
    elapsed and an estimate of the sweep's remaining time (mean seconds per finished run x runs left; the
    adaptive search's planned count is an upper bound until its searches end). Off when ``enabled`` is false
    or stderr is not a terminal."""

    def __init__(self, *, enabled: bool, started: float) -> None:
        self.started = started
        self.text = ""
        self.done = 0
        self.planned: int | None = None
        self.sweep_started: float | None = None
        self.bar = tqdm(
            total=0,
            file=sys.stderr,
            position=0,
            leave=False,
            bar_format="{desc}",
            dynamic_ncols=True,
            disable=None if enabled else True,
        )

    def phase(self, text: str) -> None:
        """Start a new phase (a line of text) of the overall progress line."""
        self.text = text
        self.refresh()

    def runs(self, done: int, planned: int) -> None:
        """``run_sweep``'s ``on_run``: runs finished by this sweep so far, and planned."""
        if self.sweep_started is None:
            self.sweep_started = time.perf_counter()
        self.done, self.planned = done, planned
        self.refresh()

    def line(self) -> str:
        """The overall progress line: the phase, runs done of planned and the time left."""
        now = time.perf_counter()
        parts = [f"demo {self.text}"]
        if self.planned is not None:
            parts.append(f"runs {self.done}/{self.planned}")
        parts.append(f"elapsed {_minutes(now - self.started)}")
        if self.planned and self.done and self.sweep_started is not None and self.done < self.planned:
            per_run = (now - self.sweep_started) / self.done
            parts.append(f"sweep ~{_minutes(per_run * (self.planned - self.done))} left")
        return " | ".join(parts)

    def refresh(self) -> None:
        """Redraw the progress line."""
        self.bar.set_description_str(self.line(), refresh=True)

    def close(self) -> None:
        """Close the progress line."""
        self.bar.close()


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


class _Clock:
    """Phase messages with the seconds elapsed since the demo started."""

    def __init__(self, progress: bool, started: float) -> None:
        self.progress, self.started = progress, started

    def __call__(self, text: str) -> None:
        _say(f"[{time.perf_counter() - self.started:6.1f} s] {text}", self.progress)


def _measurement(sweep_config: SweepConfig) -> MeasureSettings:
    """The sweep's measurement settings as the demo's reports start from them: one whole-adapter block and no
    extras; each report then says what it adds (density, per-module blocks, preconditioning)."""
    return replace(
        sweep_config.hessian.measure, blocks="whole", modules=None, layers=None, density=False, trace=False
    )


def _hessian_batches(sweep_config: SweepConfig, tokenizer: Any) -> list[Any]:
    return probe_batches(
        tokenizer,
        sweep_config.task,
        data_seed=sweep_config.data_seed,
        n_train=sweep_config.n_train,
        n_eval=sweep_config.n_eval,
        samples=sweep_config.hessian.samples,
        batch_size=sweep_config.hessian.batch_size,
        max_length=sweep_config.max_length,
        prompt_template=sweep_config.prompt_template,
    )


def _adapter_like_the_sweep(
    sweep_config: SweepConfig, method: str, rank: int, seed: int, device: str | None
) -> AdapterAtInit:
    """Base model + adapter at initialisation exactly as the sweep builds it (LoRA-GA: on the run's first global
    batch, that of the grid's first batch size)."""
    config = sweep_config.adapter_for(method, rank, seed)
    train_examples = None
    if config.spec.needs_data:
        train_examples = load_task(
            sweep_config.task,
            seed=sweep_config.data_seed,
            n_train=sweep_config.n_train,
            n_eval=sweep_config.n_eval,
        ).train
    train_config = sweep_config.train_for(sweep_config.lrs[0], sweep_config.batch_sizes[0], seed)
    return adapter_at_initialisation(
        sweep_config.model,
        config,
        model_seed=sweep_config.model_seed,
        attention=sweep_config.attention,
        device=device,
        train_examples=train_examples,
        train_config=train_config,
    )


# A per-module report still being measured (hessian/*.json lists finished reports only).
PARTIAL_SUFFIX = ".partial"


@dataclass(frozen=True)
class InitExtras:
    """What the demo measures at initialisation beyond the sweep's own λ_max, per (method, rank, seed): per-module
    λ_max of ``modules`` on ``layers`` evenly spaced layers (None: all) and, with ``density_steps``, the whole
    adapter's spectral density."""

    sweep_config: SweepConfig
    run_dir: Path
    modules: tuple[str, ...]
    layers: int | None
    density_steps: int
    progress: bool = True
    written: list[str] = field(default_factory=list)  # reports written so far, by the hook and by the demo

    def paths(self, key: InitKey) -> tuple[Path, Path]:
        """(whole-adapter report, per-module report) of ``key``. The sweep owns ``<key>_init.json`` when it
        measures at init (it resumes from that file with its own settings); the density then goes to a file of
        its own."""
        hessian_dir = self.run_dir / "hessian"
        whole = hessian_dir / (
            f"{key}_init_density.json" if self.sweep_config.hessian.init else f"{key}_init.json"
        )
        return whole, hessian_dir / f"{key}_init_modules.json"

    def missing(self, key: InitKey) -> list[Path]:
        """The report files of ``key``'s adapter at initialisation still to be measured."""
        whole, modules = self.paths(key)
        wanted = [modules] + ([whole] if self.density_steps or not self.sweep_config.hessian.init else [])
        return [path for path in wanted if not path.is_file()]

    def measure(self, peft_model: Any, tokenizer: Any, key: InitKey) -> None:
        """Measure what is missing for ``key`` on its adapter at initialisation (added to ``written``). Also the
        sweep's :data:`~hessian_lora.sweep.adaptive.AtInit` hook: the search's centre hands over the adapter it
        built, so each method's adapter is built once for both."""
        todo = self.missing(key)
        if not todo:
            return
        whole_path, modules_path = self.paths(key)
        settings = _measurement(self.sweep_config)
        batches = _hessian_batches(self.sweep_config, tokenizer)
        if whole_path in todo:
            whole = replace(
                settings, density=self.density_steps > 0, density_steps=max(self.density_steps, 1)
            )
            measure(AdaptedModule(peft_model), whole, batches=batches, out=whole_path, progress=self.progress)
            self.written.append(str(whole_path))
        if modules_path in todo:
            targets = [module for module in self.modules if module in self.sweep_config.adapter.targets] or [
                self.sweep_config.adapter.targets[0]
            ]
            chosen = None if self.layers is None else _spread_layers(peft_model, self.layers)
            per_module = replace(settings, blocks="per-module", modules=tuple(targets), layers=chosen)
            # measure() rewrites its report after every block so that it can resume; under the final name a
            # report cut short would read as done (``missing`` looks at the name only) and lose its other
            # layers. It grows under a name no reader lists and takes the final name once every block is in.
            partial = modules_path.with_name(modules_path.name + PARTIAL_SUFFIX)
            measure(
                AdaptedModule(peft_model), per_module, batches=batches, out=partial, progress=self.progress
            )
            os.replace(partial, modules_path)
            self.written.append(str(modules_path))
        _say(f"  {key}: λ_max at init measured", self.progress)


def measure_init_reports(extras: InitExtras, *, device: str | None = None) -> None:
    """Whole-adapter λ_max with density and per-module λ_max at initialisation, per (method, rank, seed), where
    missing (building the adapter only for keys with something missing; ``extras.written`` lists the reports)."""
    config = extras.sweep_config
    for method in config.methods:
        for rank in config.ranks:
            for seed in config.seeds:
                key = InitKey(method, rank, seed)
                if extras.missing(key):
                    peft_model, tokenizer, _ = _adapter_like_the_sweep(config, method, rank, seed, device)
                    extras.measure(peft_model, tokenizer, key)


def _spread_layers(model: Any, count: int) -> list[int] | None:
    layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if not layers:
        return None
    return sorted({round(i * (layers - 1) / (count - 1)) for i in range(count)}) if layers > count else None


def measure_final_reports(
    sweep_config: SweepConfig,
    run_dir: Path,
    analysis: Analysis,
    *,
    progress: bool = True,
    device: str | None = None,
) -> list[str]:
    """Raw and preconditioned λ_max from the checkpoint of each method's best grid run, where missing."""
    written = []
    settings = _measurement(sweep_config)
    runs = load_runs(run_dir)
    for name, summary in analysis.methods.items():
        for run in runs:
            if run.method != name or run.lr != summary.eta_grid or run.status != "done":
                continue
            path = run_dir / "hessian" / f"{run.run_id}_final.json"
            checkpoint = run_dir / "runs" / run.run_id
            if path.is_file() or not (checkpoint / "hessian_lora.json").is_file():
                continue
            batches = _hessian_batches(sweep_config, load_tokenizer(sweep_config.model))
            measure(
                Checkpoint(checkpoint),
                replace(settings, preconditioned=True, lr=run.lr),
                batches=batches,
                device=device,
                out=path,
                progress=progress,
            )
            written.append(str(path))
            _say(f"  {run.run_id}: λ_max and preconditioned λ_max at the end measured", progress)
    return written
