"""Every setting of the toolkit, once: frozen, typed, validated dataclasses that import no torch.

One home per concept, composed rather than copied: an adapter is an :class:`AdapterConfig`, a training run a
:class:`TrainConfig`, an evaluation an :class:`EvalConfig`, a Hessian measurement a :class:`MeasureSettings`
and an in-run probe a :class:`DuringSettings` (built on the measurement's vocabularies and checks). A sweep
(:class:`hessian_lora.settings.sweep.SweepConfig`) contains them, and a checkpoint's metadata
(:class:`hessian_lora.training.checkpoint.CheckpointMeta`) holds the :class:`AdapterConfig` it was built with.

Being torch-free is the point of the package: loading a sweep YAML, validating a flag or reading a run directory
must not pay for torch (seconds) or load the engine. The import-linter contracts in ``setup.cfg`` keep it so.
"""

from hessian_lora.settings.adapter import DEFAULT_TARGETS, AdapterConfig
from hessian_lora.settings.evaluation import EvalConfig
from hessian_lora.settings.measurement import (
    BACKENDS,
    BLOCKS,
    DORA_NORMS,
    ENGINE_BACKENDS,
    PROBE_BACKENDS,
    PROBE_SOLVERS,
    SOLVERS,
    Backend,
    Blocks,
    DoraNorm,
    DuringSettings,
    EngineBackend,
    MeasureSettings,
    ProbeSolver,
    Solver,
    parse_layers,
    parse_modules,
)
from hessian_lora.settings.prompts import DEFAULT_PROMPT_TEMPLATE, PROMPT_TEMPLATES, check_prompt_template
from hessian_lora.settings.training import PRECISIONS, Precision, TrainConfig, warmup_steps

__all__ = [
    "BACKENDS",
    "BLOCKS",
    "DEFAULT_PROMPT_TEMPLATE",
    "DEFAULT_TARGETS",
    "DORA_NORMS",
    "ENGINE_BACKENDS",
    "PRECISIONS",
    "PROBE_BACKENDS",
    "PROBE_SOLVERS",
    "PROMPT_TEMPLATES",
    "SOLVERS",
    "AdapterConfig",
    "Backend",
    "Blocks",
    "DoraNorm",
    "DuringSettings",
    "EngineBackend",
    "EvalConfig",
    "MeasureSettings",
    "Precision",
    "ProbeSolver",
    "Solver",
    "TrainConfig",
    "check_prompt_template",
    "parse_layers",
    "parse_modules",
    "warmup_steps",
]
