"""Ablations: one analysis per setting (rank, batch size, and whatever differs between run directories), and the
tables that compare settings.

Why settings are analysed apart: η* moves with the rank and the batch size, so pooling them would blur every
curve; :func:`~hessian_lora.analysis.summary.analyze` therefore analyses one (rank, batch size) at a time, and this
module runs it once per setting and lines the results up: η* per method against the setting, the peak against
the setting, and the paper's batch-size × LR table per method.

Rank and batch size are grid axes of one sweep. Training-set size, epochs (or any other shared setting) are not:
changing them under a run directory is refused, because its rows would stop being comparable. The design here is
the least invasive one: run one sweep directory per value (``n_train: 500`` in one config, ``n_train: 2000`` in
another) and compare them with ``hessian-lora analyze DIR1 DIR2 ...``. The settings that differ between the
directories' config.yaml files become axes of the comparison, so run ids, the config schema and existing run
directories are untouched.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hessian_lora.analysis.censoring import bound_text
from hessian_lora.analysis.report import markdown_table
from hessian_lora.analysis.runs import load_runs
from hessian_lora.analysis.summary import Analysis, analyze, jsonable
from hessian_lora.core.atomic import write_text_atomic
from hessian_lora.core.errors import UserError
from hessian_lora.core.metrics import SCORE_METRICS
from hessian_lora.core.rundir import RunLayout
from hessian_lora.methods.registry import method_sort_key
from hessian_lora.settings.schemas import read_config

# Config keys that are grid axes, bookkeeping or measurement options: never an ablation axis between directories.
_NOT_AXES = frozenset(
    {
        "name",
        "methods",
        "method",
        "lr",
        "lrs",
        "seeds",
        "seed",
        "ranks",
        "rank",
        "batch_sizes",
        "batch_size",
        "checkpoints",
        "ray",
        "hessian",
        "eval",
        "search",
    }
)


@dataclass(frozen=True)
class Setting:
    """One analysed configuration: a run directory's runs of one rank and batch size."""

    run_dir: str
    rank: int | None
    batch_size: int | None
    values: Mapping[
        str, Any
    ]  # the axes that vary across the compared settings, e.g. {"rank": 8, "n_train": 500}

    @property
    def label(self) -> str:
        """The setting's name in tables and figures: its varying values (``r=8, b=16``), or ``all runs``."""
        short = {"rank": "r", "batch_size": "b"}
        return ", ".join(f"{short.get(key, key)}={value}" for key, value in self.values.items()) or "all runs"


def find_settings(
    run_dirs: Sequence[str | os.PathLike[str]], *, rank: int | None = None, batch_size: int | None = None
) -> list[Setting]:
    """Every (run directory, rank, batch size) present, optionally narrowed to one rank / batch size, labelled by
    the axes that actually vary."""
    check_distinct(run_dirs)
    found: list[tuple[str, int | None, int | None, Mapping[str, Any]]] = []
    for run_dir in run_dirs:
        runs = load_runs(run_dir)
        config = read_config(RunLayout(run_dir).config)
        pairs = sorted({(run.rank, run.batch_size) for run in runs}, key=lambda p: (p[0] or 0, p[1] or 0))
        for run_rank, run_batch in pairs:
            if (rank is None or run_rank == rank) and (batch_size is None or run_batch == batch_size):
                found.append((str(run_dir), run_rank, run_batch, config))
    if not found:
        raise UserError(
            f"no run with rank={rank} batch_size={batch_size}: check `hessian-lora results RUN_DIR`."
        )
    configs = [config for *_, config in found]
    keys = sorted({key for config in configs for key in config} - _NOT_AXES)
    varying = [
        key for key in keys if len({json.dumps(c.get(key), sort_keys=True, default=str) for c in configs}) > 1
    ]
    settings = []
    for run_dir, run_rank, run_batch, config in found:
        values: dict[str, Any] = {}
        if len({item[1] for item in found}) > 1:
            values["rank"] = run_rank
        if len({item[2] for item in found}) > 1:
            values["batch_size"] = run_batch
        values.update({key: config.get(key) for key in varying})
        if len(run_dirs) > 1 and not varying:
            values["dir"] = Path(run_dir).name
        settings.append(Setting(run_dir, run_rank, run_batch, values))
    return settings


@dataclass(frozen=True)
class Ablation:
    """One :class:`Analysis` per :class:`Setting`, in the same order."""

    settings: tuple[Setting, ...]
    analyses: tuple[Analysis, ...]

    @property
    def axes(self) -> tuple[str, ...]:
        """The settings' varying keys (rank, batch size, or config keys), in first-seen order."""
        return tuple(dict.fromkeys(key for setting in self.settings for key in setting.values))

    @property
    def methods(self) -> list[str]:
        """Every method any setting analysed, in display order."""
        names = {name for analysis in self.analyses for name in analysis.methods}
        return sorted(names, key=method_sort_key)

    def to_dict(self) -> dict[str, Any]:
        """The comparison as JSON-able data (``ablation.json``)."""
        return jsonable(
            {
                "axes": list(self.axes),
                "settings": [
                    {
                        "label": s.label,
                        "run_dir": s.run_dir,
                        "rank": s.rank,
                        "batch_size": s.batch_size,
                        "values": dict(s.values),
                    }
                    for s in self.settings
                ],
                "analyses": [analysis.to_dict() for analysis in self.analyses],
            }
        )


def check_distinct(run_dirs: Sequence[str | os.PathLike[str]]) -> None:
    """Refuse a run directory given twice (also through another spelling or a link): it would be compared with
    itself, as two settings that differ in nothing but their name."""
    seen: dict[Path, str] = {}
    for run_dir in run_dirs:
        key = Path(run_dir).resolve()
        if key in seen:
            same = f" (as {seen[key]} and {run_dir})" if seen[key] != str(run_dir) else ""
            raise UserError(
                f"run directory {run_dir} is given twice{same}: a directory compared with itself "
                "shows nothing; give each RUN_DIR once."
            )
        seen[key] = str(run_dir)


def analyze_ablation(
    run_dirs: Sequence[str | os.PathLike[str]],
    *,
    rank: int | None = None,
    batch_size: int | None = None,
    **options: Any,
) -> Ablation:
    """:func:`analyze` once per setting (rank, batch size, run directory) of ``run_dirs``.

    Args:
        run_dirs: one or more sweep run directories; one given twice is refused.
        rank: analyse only this rank (default: every rank the runs hold).
        batch_size: analyse only this batch size (default: every one).
        **options: :func:`analyze`'s options (metric, λ source, bootstrap, ...).

    Returns:
        An :class:`Ablation`: one :class:`Analysis` per setting and the cross-setting tables.

    Raises:
        UserError: a run directory is missing, unreadable or given twice, or an option is invalid.
    """
    settings = find_settings(run_dirs, rank=rank, batch_size=batch_size)
    analyses = tuple(analyze(s.run_dir, rank=s.rank, batch_size=s.batch_size, **options) for s in settings)
    return Ablation(tuple(settings), analyses)


def _cell(analysis: Analysis, method: str, what: str) -> str:
    summary = analysis.methods.get(method)
    if summary is None:
        return "–"
    if what == "eta":
        text = bound_text(summary.censored, summary.eta_star)
        if summary.eta_ci and not summary.censored:
            text += f" [{summary.eta_ci[0]:.2g}, {summary.eta_ci[1]:.2g}]"
        return text
    scale = 100.0 if analysis.metric in SCORE_METRICS else 1.0
    text = f"{summary.peak_metric * scale:.3g}" + (" (edge)" if summary.censored else "")
    if summary.peak_ci:
        text += f" [{summary.peak_ci[0] * scale:.3g}, {summary.peak_ci[1] * scale:.3g}]"
    return text


def lr_table(ablation: Ablation, method: str) -> tuple[list[float], list[tuple[str, list[float | None]]]]:
    """The seed-mean metric of ``method`` per setting (rows) and learning rate (columns): with batch size as the
    varying axis, the paper's batch-size × LR table."""
    lrs = sorted(
        {
            lr
            for analysis in ablation.analyses
            if method in analysis.methods
            for lr in analysis.methods[method].lrs
        }
    )
    rows = []
    for setting, analysis in zip(ablation.settings, ablation.analyses):
        summary = analysis.methods.get(method)
        if summary is None:
            continue
        values = dict(zip(summary.lrs, summary.metric_mean))
        rows.append((setting.label, [values.get(lr) for lr in lrs]))
    return lrs, rows


def ablation_markdown(ablation: Ablation) -> str:
    """Cross-setting tables (η*, peak, metric per setting × LR for each method), then each setting's analysis."""
    metric = ablation.analyses[0].metric
    scale = 100.0 if metric in SCORE_METRICS else 1.0
    methods = ablation.methods
    header = "| setting | " + " | ".join(methods) + " |"
    rule = "|---" * (len(methods) + 1) + "|"
    level = ablation.analyses[0].level
    lines = [
        f"# Ablation over {', '.join(ablation.axes) or 'settings'} ({len(ablation.settings)} settings)",
        "",
        f"## η* per method ({level:.0%} CI; ≥/≤: censored at the grid edge)",
        "",
        header,
        rule,
    ]
    for setting, analysis in zip(ablation.settings, ablation.analyses):
        lines.append(f"| {setting.label} | " + " | ".join(_cell(analysis, m, "eta") for m in methods) + " |")
    unit = " (points)" if metric in SCORE_METRICS else ""
    lines += ["", f"## Peak {metric}{unit} per method ({level:.0%} CI)", "", header, rule]
    for setting, analysis in zip(ablation.settings, ablation.analyses):
        lines.append(f"| {setting.label} | " + " | ".join(_cell(analysis, m, "peak") for m in methods) + " |")
    for method in methods:
        lrs, rows = lr_table(ablation, method)
        lines += [
            "",
            f"## {method}: {metric}{unit} per setting × learning rate (* = best LR of the row)",
            "",
            "| setting | " + " | ".join(f"{lr:.3g}" for lr in lrs) + " |",
            "|---" * (len(lrs) + 1) + "|",
        ]
        for label, values in rows:
            finite = [v for v in values if v is not None]
            best = (max if ablation.analyses[0].higher_is_better else min)(finite) if finite else None
            cells = ["–" if v is None else f"{v * scale:.3g}{'*' if v == best else ''}" for v in values]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for setting, analysis in zip(ablation.settings, ablation.analyses):
        lines += ["", f"## Setting {setting.label} ({setting.run_dir})", "", markdown_table(analysis)]
    return "\n".join(lines)


def write_ablation(ablation: Ablation, out_dir: str | os.PathLike[str] | None = None) -> tuple[Path, Path]:
    """``ablation.json`` and ``ablation.md`` in ``out_dir`` (default: the first run directory)."""
    layout = RunLayout(out_dir or ablation.settings[0].run_dir)
    json_path, md_path = layout.ablation_json, layout.ablation_md
    write_text_atomic(json_path, json.dumps(ablation.to_dict(), indent=2, ensure_ascii=False) + "\n")
    write_text_atomic(md_path, ablation_markdown(ablation) + "\n")
    return json_path, md_path


def is_ablation(
    run_dirs: Sequence[str | os.PathLike[str]], *, rank: int | None, batch_size: int | None
) -> bool:
    """Whether the runs hold more than one setting (several directories, ranks or batch sizes)."""
    return len(run_dirs) > 1 or len(find_settings(run_dirs, rank=rank, batch_size=batch_size)) > 1
