"""hessian-lora: which learning rate each LoRA variant needs, and why.

The public API, importable from the package's top (``import hessian_lora as h; h.eigen(...)``):

- measurement: :func:`eigen` (λ_max of a checkpoint, a peft directory or an adapter at initialisation),
  :class:`MeasureSettings`, :class:`DuringSettings`; what is measured, as a typed target for ``eigen`` and the
  one entry ``hessian_lora.measurement.measure.measure``: :class:`Checkpoint`, :class:`PeftAdapter`,
  :class:`AtInitialisation`, :class:`AdaptedModule`, :func:`as_target` (a path's kind); their results
  :class:`EigenReport`, :class:`BlockReport`, :class:`EigenResult`;
- along training: :class:`SharpnessCallback` (transformers ``Trainer`` / TRL ``SFTTrainer``),
  :class:`SharpnessProbe` (the project's own loop);
- sweeps: :func:`run_sweep`, :func:`load_config`, :class:`SweepConfig`, :class:`SweepSummary`;
- analysis and figures: :func:`analyze`, :class:`Analysis`, :func:`analyze_ablation`, :func:`plot_run`,
  :func:`plot_ablation`;
- recommendation: :class:`Recommendation`, :func:`load_calibration` (the function ``recommend`` shares its
  name with the module ``hessian_lora.sweep.recommend``, which shadows it here:
  ``from hessian_lora.sweep.recommend import recommend``);
- settings and models: :class:`AdapterConfig`, :class:`TrainConfig`, :class:`EvalConfig`, :func:`load_model`;
- errors: :class:`UserError` (one line naming the file, the field and the fix).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Name → the module that owns it (its one home). Loaded on first use: ``import hessian_lora`` (so the CLI's
# start-up) stays free of torch, seconds during which a Ctrl-C would otherwise end in a traceback.
# No name may be a submodule's: importing ``hessian_lora.measurement.measure`` sets the package attribute ``measure``
# to the module, whatever this table says (a test checks).
_PUBLIC: dict[str, str] = {
    "eigen": "hessian_lora.measurement.measure",
    "MeasureSettings": "hessian_lora.settings.measurement",
    "DuringSettings": "hessian_lora.settings.measurement",
    "Checkpoint": "hessian_lora.measurement.targets",
    "PeftAdapter": "hessian_lora.measurement.targets",
    "AtInitialisation": "hessian_lora.measurement.targets",
    "AdaptedModule": "hessian_lora.measurement.targets",
    "as_target": "hessian_lora.measurement.targets",
    "EigenReport": "hessian_lora.hessian.results",
    "BlockReport": "hessian_lora.hessian.results",
    "EigenResult": "hessian_lora.hessian.results",
    "SharpnessCallback": "hessian_lora.measurement.trainer_callback",
    "SharpnessProbe": "hessian_lora.measurement.training_probe",
    "run_sweep": "hessian_lora.sweep.runner",
    "SweepSummary": "hessian_lora.sweep.runner",
    "load_config": "hessian_lora.settings.sweep",
    "SweepConfig": "hessian_lora.settings.sweep",
    "analyze": "hessian_lora.analysis.summary",
    "Analysis": "hessian_lora.analysis.summary",
    "analyze_ablation": "hessian_lora.analysis.ablation",
    "plot_run": "hessian_lora.analysis.figures.plots",
    "plot_ablation": "hessian_lora.analysis.figures.ablation",
    "Recommendation": "hessian_lora.sweep.recommend",
    "load_calibration": "hessian_lora.sweep.recommend",
    "AdapterConfig": "hessian_lora.settings.adapter",
    "TrainConfig": "hessian_lora.settings.training",
    "EvalConfig": "hessian_lora.settings.evaluation",
    "load_model": "hessian_lora.inputs.models",
    "UserError": "hessian_lora.core.errors",
}

__all__ = ["__version__", *_PUBLIC]

if TYPE_CHECKING:  # pragma: no cover  (what type checkers and editors see; the same names as _PUBLIC)
    from hessian_lora.analysis.ablation import analyze_ablation as analyze_ablation
    from hessian_lora.analysis.figures.ablation import plot_ablation as plot_ablation
    from hessian_lora.analysis.figures.plots import plot_run as plot_run
    from hessian_lora.analysis.summary import Analysis as Analysis
    from hessian_lora.analysis.summary import analyze as analyze
    from hessian_lora.core.errors import UserError as UserError
    from hessian_lora.hessian.results import BlockReport as BlockReport
    from hessian_lora.hessian.results import EigenReport as EigenReport
    from hessian_lora.hessian.results import EigenResult as EigenResult
    from hessian_lora.inputs.models import load_model as load_model
    from hessian_lora.measurement.measure import eigen as eigen
    from hessian_lora.measurement.targets import AdaptedModule as AdaptedModule
    from hessian_lora.measurement.targets import AtInitialisation as AtInitialisation
    from hessian_lora.measurement.targets import Checkpoint as Checkpoint
    from hessian_lora.measurement.targets import PeftAdapter as PeftAdapter
    from hessian_lora.measurement.targets import as_target as as_target
    from hessian_lora.measurement.trainer_callback import SharpnessCallback as SharpnessCallback
    from hessian_lora.measurement.training_probe import SharpnessProbe as SharpnessProbe
    from hessian_lora.settings.adapter import AdapterConfig as AdapterConfig
    from hessian_lora.settings.evaluation import EvalConfig as EvalConfig
    from hessian_lora.settings.measurement import DuringSettings as DuringSettings
    from hessian_lora.settings.measurement import MeasureSettings as MeasureSettings
    from hessian_lora.settings.sweep import SweepConfig as SweepConfig
    from hessian_lora.settings.sweep import load_config as load_config
    from hessian_lora.settings.training import TrainConfig as TrainConfig
    from hessian_lora.sweep.recommend import Recommendation as Recommendation
    from hessian_lora.sweep.recommend import load_calibration as load_calibration
    from hessian_lora.sweep.runner import SweepSummary as SweepSummary
    from hessian_lora.sweep.runner import run_sweep as run_sweep


def __getattr__(name: str) -> Any:
    home = _PUBLIC.get(name)
    if home is None:
        raise AttributeError(f"module 'hessian_lora' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
