"""Sweep configuration: a YAML file, validated into a frozen :class:`SweepConfig`, expanded into runs.

A run is keyed by (method, lr, seed, rank, batch_size): the grid axes. Everything else (model, task, steps,
evaluation, ...) is shared by every run of a sweep and must not change under an existing run directory, or its
rows would no longer be comparable; the grid axes may grow with ``--extend``.

Learning rates are a list, or a log range in one of two forms::

    lr: [1e-4, 3e-4, 1e-3]
    lr: {min: 1e-5, max: 1e-2, num: 7}              # geometric, both ends included
    lr: {base: 2e-5, per_decade: 4, k: [-1, 10]}    # base * 10**(k / per_decade), k = -1 .. 10 (the paper's grid)

``search: adaptive`` (or a mapping of :class:`~hessian_lora.settings.search.AdaptiveSearch` settings with
``mode: adaptive``) runs only the learning rates an adaptive search asks for instead of every ``lr`` (the
grid then only gives the search's centre when no calibration applies); ``search: grid`` (the default) runs the
grid. It changes which runs happen, not what a run produces, so it is not a shared setting.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from hessian_lora.core.errors import UserError
from hessian_lora.core.rundir import InitKey, run_id
from hessian_lora.core.yaml_reader import is_number, numbers_from_strings, plain, settings_from_mapping
from hessian_lora.methods.registry import METHODS, check_method_rank
from hessian_lora.settings import AdapterConfig, DuringSettings, EvalConfig, MeasureSettings, TrainConfig
from hessian_lora.settings.prompts import check_prompt_template
from hessian_lora.settings.search import AdaptiveSearch, search_from_config
from hessian_lora.settings.training import BASE_DTYPES, PRECISIONS, BaseDtype, steps_for_epochs

GRID_AXES = ("methods", "lrs", "seeds", "ranks", "batch_sizes")
Attention = Literal["eager", "sdpa"]  # the kernels a sweep may train with (eigen picks its own for HVPs)
ATTENTION_IMPLEMENTATIONS: tuple[str, ...] = get_args(Attention)
# keep each finished run's checkpoint, none, or only the best run's per (method, rank, batch size, seed)
CheckpointMode = Literal["final", "none", "best"]
CHECKPOINT_MODES: tuple[str, ...] = get_args(CheckpointMode)
# Settings whose values are numbers (strings such as "1e-4" are read as numbers there).
_NUMERIC_KEYS = (
    "lr",
    "lrs",
    "epochs",
    "alpha",
    "max_grad_norm",
    "dropout",
    "warmup_ratio",
    "weight_decay",
    "eps",
    "loraplus_ratio",
    "divergence_factor",
    "betas",
)


@dataclass(frozen=True)
class HessianSettings:
    """λ_max measurements (:func:`hessian_lora.measurement.measure.measure`): at initialisation (once per method, rank
    and seed) and at the end of each finished run, on the first ``samples`` training examples in batches of
    ``batch_size``. ``measure`` says how (its ``max_length`` is the sweep's unless the block sets one).

    In YAML the block's other keys (tol, max_iter, blocks, ...) are ``measure``'s, beside or under ``options:``.
    ``during: {every: N, ...}`` (:class:`~hessian_lora.measurement.training_probe.DuringSettings`) also probes λ_max
    and the Adam-preconditioned sharpness inside every run, every N optimizer steps.
    """

    init: bool = False
    final: bool = False
    samples: int = 32
    batch_size: int = 8
    measure: MeasureSettings = field(default_factory=MeasureSettings)
    during: DuringSettings | None = None

    @property
    def enabled(self) -> bool:
        """Whether any λ_max measurement (at initialisation or at the end) is asked for."""
        return self.init or self.final


@dataclass(frozen=True)
class RaySettings:
    """Resources of each Ray task (the ``ray:`` block); only the Ray backend reads them."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0


@dataclass(frozen=True)
class RunSpec:
    """One point of the grid."""

    method: str
    lr: float
    seed: int
    rank: int
    batch_size: int

    @property
    def run_id(self) -> str:
        """The run's key (directory name and primary key), formatted by :func:`hessian_lora.core.rundir.run_id`."""
        return run_id(self.method, self.lr, self.seed, self.rank, self.batch_size)

    @property
    def init_key(self) -> InitKey:
        """Which adapter at initialisation the run starts from (its λ_max report's key): the same for every LR and
        batch size."""
        return InitKey(self.method, self.rank, self.seed)


# The YAML keeps its flat keys; these are the ones that live in the nested adapter and training settings (the
# rest are SweepConfig's own fields or sections), and FLAT_ORDER is the order config.yaml has always listed them in.
ADAPTER_KEYS = ("targets", "alpha", "dropout", "loraplus_ratio", "pissa_niter")
TRAIN_KEYS = (
    "micro_batch_size",
    "max_length",
    "warmup_ratio",
    "betas",
    "weight_decay",
    "eps",
    "max_grad_norm",
    "precision",
    "gradient_checkpointing",
    "divergence_factor",
    "divergence_window",
    "prompt_template",
)
FLAT_ORDER = (
    "name",
    "model",
    "task",
    "methods",
    "seeds",
    "ranks",
    "batch_sizes",
    "micro_batch_size",
    "steps",
    "epochs",
    "n_train",
    "n_eval",
    "data_seed",
    "model_seed",
    "max_length",
    "targets",
    "alpha",
    "dropout",
    "loraplus_ratio",
    "pissa_niter",
    "warmup_ratio",
    "betas",
    "weight_decay",
    "eps",
    "max_grad_norm",
    "precision",
    "base_dtype",
    "gradient_checkpointing",
    "attention",
    "divergence_factor",
    "divergence_window",
    "checkpoints",
    "prompt_template",
    "eval_task",
    "eval",
    "hessian",
    "ray",
    "search",
    "lr",
)


@dataclass(frozen=True)
class SweepConfig:
    """A validated sweep: the grid axes (methods, lrs, seeds, ranks, batch_sizes) and the shared settings.

    The shared settings are the nested records each run is built from, not copies of their fields: ``adapter``
    (an :class:`AdapterConfig`), ``train`` (a :class:`TrainConfig`), ``eval`` and ``hessian`` (whose ``measure``
    is a :class:`MeasureSettings`). ``adapter`` and ``train`` are the first grid point's; a run's own are
    :meth:`adapter_for` and :meth:`train_for` (the grid axes replaced), so every caller builds the same adapter.

    Attributes:
        name: the sweep's name.
        model: the base model spec.
        task: the training task spec.
        methods: the methods swept.
        lrs: the learning rates swept.
        adapter: the first grid point's adapter settings.
        train: the first grid point's training settings.
        seeds: the seeds swept.
        ranks: the ranks swept.
        batch_sizes: the global batch sizes swept.
        steps: optimizer steps per run (None: from ``epochs``).
        epochs: epochs over ``n_train`` examples (None: ``steps`` given).
        n_train: training examples.
        n_eval: held-out evaluation examples.
        data_seed: the seed that picks the examples.
        model_seed: the seed of a random base's weights (tiny-llama).
        base_dtype: the dtype the frozen base weights train in.
        attention: the attention implementation.
        checkpoints: which checkpoints are kept (``final``, ``none``, ``best``).
        eval_task: evaluation sets scored per run (``gsm8k:PATH``, ``math:PATH``, ``mbpp:PATH``, ``humaneval``).
        eval: the evaluation settings.
        hessian: the Hessian settings (``measure`` at init/final, ``during`` in the loop).
        ray: the Ray backend's settings.
        search: the adaptive search (None: run the whole grid).
    """

    name: str
    model: str
    task: str
    methods: tuple[str, ...]
    lrs: tuple[float, ...]
    adapter: AdapterConfig
    train: TrainConfig
    seeds: tuple[int, ...] = (0,)
    ranks: tuple[int, ...] = (8,)
    batch_sizes: tuple[int, ...] = (16,)
    steps: int | None = None
    epochs: float | None = None
    n_train: int = 1000
    n_eval: int = 200
    data_seed: int = 0
    model_seed: int = 0
    base_dtype: BaseDtype = (
        "fp32"  # the frozen base weights' dtype in training (hessian_lora.training.precision)
    )
    attention: Attention = "eager"
    checkpoints: CheckpointMode = "final"
    eval_task: tuple[
        str, ...
    ] = ()  # evaluation sets scored per run: gsm8k:PATH, math:PATH, mbpp:PATH, humaneval
    eval: EvalConfig = field(default_factory=EvalConfig)
    hessian: HessianSettings = field(default_factory=HessianSettings)
    ray: RaySettings = field(default_factory=RaySettings)
    search: AdaptiveSearch | None = None  # None: run the whole grid

    @property
    def max_length(self) -> int:
        """The token limit of every example a run trains, measures or evaluates on (``train.max_length``)."""
        return self.train.max_length

    @property
    def prompt_template(self) -> str:
        """The template every example of the sweep is formatted with (``train.prompt_template``)."""
        return self.train.prompt_template

    def adapter_for(self, method: str, rank: int, seed: int) -> AdapterConfig:
        """The adapter of grid point (method, rank, seed): the one execute_run, the search's centres, preflight and
        the demo build."""
        return dataclasses.replace(self.adapter, method=method, rank=rank, seed=seed)

    def train_for(self, lr: float, batch_size: int, seed: int) -> TrainConfig:
        """The training run of grid point (lr, batch size, seed)."""
        return dataclasses.replace(
            self.train, lr=lr, steps=self.steps_for(batch_size), batch_size=batch_size, seed=seed
        )

    def runs(self) -> list[RunSpec]:
        """Every grid point, in a stable order: method, rank, seed, batch size, then increasing LR."""
        return [
            RunSpec(method, lr, seed, rank, batch_size)
            for method in self.methods
            for rank in self.ranks
            for seed in self.seeds
            for batch_size in self.batch_sizes
            for lr in sorted(self.lrs)
        ]

    def steps_for(self, batch_size: int) -> int:
        """Optimizer steps of a run with this global batch: ``steps``, or ``epochs`` over ``n_train``."""
        if self.steps is not None:
            return self.steps
        assert self.epochs is not None
        return steps_for_epochs(self.n_train, batch_size, self.epochs)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-able data that :func:`config_from_dict` reads back to an equal config."""
        nested = dataclasses.asdict(self)
        adapter, train = nested.pop("adapter"), nested.pop("train")
        flat = {
            **nested,
            **{key: adapter[key] for key in ADAPTER_KEYS},
            **{key: train[key] for key in TRAIN_KEYS},
            "lr": [float(lr) for lr in nested.pop("lrs")],
        }
        data = {key: flat[key] for key in FLAT_ORDER}
        # The YAML form: ``options`` holds the measurement settings that differ from the sweep's defaults.
        data["hessian"].pop("measure")
        data["hessian"]["options"] = self.hessian.measure.options(MeasureSettings(max_length=self.max_length))
        if self.search is None:  # the default, left out so grid sweeps write the config they always wrote
            data.pop("search")
        if not self.eval.allow_unconfined_code:  # likewise: only a sweep that accepted the risk says so
            data["eval"].pop("allow_unconfined_code")
        else:
            data["search"] = {"mode": "adaptive", **data["search"]}
        return plain(data)

    def shared_settings(self) -> dict[str, Any]:
        """What every run of a sweep directory must agree on: everything but the grid axes and the settings that
        cannot change a result (name, checkpoint keeping, Ray resources, the search: which runs, not what a run
        produces; gradient checkpointing: the same gradients, bit for bit, so a sweep may resume with it switched
        on where memory is short; whether generated code may run unconfined: how, not what, it scores)."""
        data = self.to_dict()
        for key in (*GRID_AXES, "lr", "name", "checkpoints", "ray", "search", "gradient_checkpointing"):
            data.pop(key, None)
        data["eval"].pop("allow_unconfined_code", None)
        return data


def load_config(path: str | os.PathLike[str]) -> SweepConfig:
    """Read and validate a sweep YAML file.

    Args:
        path: the YAML file (``experiments/*.yaml`` are examples); its stem is the sweep's name unless the file
            sets ``name:``.

    Returns:
        The validated, frozen :class:`SweepConfig`.

    Raises:
        UserError: the file is missing, not UTF-8, not YAML, not a mapping, or a setting is invalid (one line
            naming the file, the field and the fix).
    """
    file = Path(path)
    if not file.is_file():
        raise UserError(
            f"sweep config {file} does not exist: pass a YAML file such as experiments/tiny.yaml."
        )
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{file} is not UTF-8 text (byte {exc.start}): is it the sweep YAML? Fix the file."
        ) from exc
    except yaml.YAMLError as exc:
        raise UserError(f"{file} is not valid YAML ({str(exc).splitlines()[0]}): fix the file.") from exc
    if not isinstance(data, Mapping):
        raise UserError(f"{file} must hold a mapping of settings (model:, task:, methods:, lr:, ...).")
    data = dict(data)
    data.setdefault("name", file.stem)
    return config_from_dict(data, source=str(file))


def config_from_dict(data: Mapping[str, Any], *, source: str = "config") -> SweepConfig:
    """Validate plain data (as YAML gives it) into a :class:`SweepConfig`; every problem is a :class:`UserError`."""
    data = {key: numbers_from_strings(item) if key in _NUMERIC_KEYS else item for key, item in data.items()}
    sections = {"lr", "eval", "hessian", "ray", "search"}
    simple = set(FLAT_ORDER) - sections
    # Singular spellings of the grid axes are accepted for one-value grids.
    for singular, plural in (
        ("method", "methods"),
        ("seed", "seeds"),
        ("rank", "ranks"),
        ("batch_size", "batch_sizes"),
    ):
        if singular in data:
            if plural in data:
                raise UserError(f"{source}: give either {singular} or {plural}, not both.")
            data[plural] = [data.pop(singular)]
    if "lrs" in data and "lr" not in data:
        data["lr"] = data.pop("lrs")
    unknown = sorted(set(data) - simple - sections)
    if unknown:
        raise UserError(
            f"{source}: unknown setting(s) {', '.join(unknown)}: check the spelling "
            f"(known: {', '.join(sorted(simple | sections))})."
        )
    for required in ("model", "task", "methods", "lr"):
        if required not in data:
            raise UserError(f"{source}: missing setting {required!r}: add it (see experiments/tiny.yaml).")
    values: dict[str, Any] = {
        "name": _text(data.get("name", "sweep"), "name", source),
        "model": _text(data["model"], "model", source),
        "task": _text(data["task"], "task", source),
        "methods": _methods(data["methods"], source),
        "lrs": parse_lr_grid(data["lr"], source=source),
    }
    for key in ("seeds", "ranks", "batch_sizes"):
        if key in data:
            values[key] = _int_list(data[key], key, source, minimum=0 if key == "seeds" else 1)
    for key in (
        "micro_batch_size",
        "steps",
        "n_train",
        "n_eval",
        "max_length",
        "divergence_window",
        "pissa_niter",
    ):
        if key in data and data[key] is not None:
            values[key] = _integer(data[key], key, source, minimum=0 if key == "n_eval" else 1)
    for key in ("data_seed", "model_seed"):
        if key in data:
            values[key] = _integer(data[key], key, source, minimum=0)
    for key in ("epochs", "alpha", "max_grad_norm"):
        if key in data and data[key] is not None:
            values[key] = _number(data[key], key, source, positive=True)
    for key in ("dropout", "warmup_ratio", "weight_decay", "eps", "loraplus_ratio", "divergence_factor"):
        if key in data:
            values[key] = _number(data[key], key, source, positive=key in ("eps", "loraplus_ratio"))
    if "max_grad_norm" in data and data["max_grad_norm"] is None:
        values["max_grad_norm"] = None
    if "targets" in data:
        targets = data["targets"]
        if isinstance(targets, str):
            targets = [item.strip() for item in targets.split(",") if item.strip()]
        if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
            raise UserError(f"{source}: targets must be a list of module names, e.g. [q_proj, v_proj].")
        values["targets"] = tuple(targets)
    if "betas" in data:
        betas = data["betas"]
        if not (
            isinstance(betas, list) and len(betas) == 2 and all(is_number(b) and 0 <= b < 1 for b in betas)
        ):
            raise UserError(f"{source}: betas must be two numbers in [0, 1), e.g. [0.9, 0.999].")
        values["betas"] = (float(betas[0]), float(betas[1]))
    for key, allowed in (
        ("precision", PRECISIONS),
        ("base_dtype", BASE_DTYPES),
        ("attention", ATTENTION_IMPLEMENTATIONS),
        ("checkpoints", CHECKPOINT_MODES),
    ):
        if key in data:
            if data[key] not in allowed:
                raise UserError(f"{source}: {key} must be one of {', '.join(allowed)}, got {data[key]!r}.")
            values[key] = data[key]
    if "gradient_checkpointing" in data:
        if not isinstance(data["gradient_checkpointing"], bool):
            raise UserError(
                f"{source}: gradient_checkpointing must be true or false, got "
                f"{data['gradient_checkpointing']!r}."
            )
        values["gradient_checkpointing"] = data["gradient_checkpointing"]
    if "prompt_template" in data:
        try:
            values["prompt_template"] = check_prompt_template(data["prompt_template"])
        except UserError as exc:
            raise UserError(f"{source}: {exc}") from exc
    if "eval_task" in data and data["eval_task"] is not None:
        values["eval_task"] = eval_task_specs(data["eval_task"], source=source)
    values["eval"] = _section(EvalConfig, data.get("eval"), "eval", source)
    if values.get("precision") and values["eval"].precision != values["precision"]:
        values["eval"] = dataclasses.replace(values["eval"], precision=values["precision"])
    values["hessian"] = _hessian(data.get("hessian"), source, max_length=values.get("max_length", 512))
    values["ray"] = _section(RaySettings, data.get("ray"), "ray", source)
    values["search"] = search_from_config(data.get("search"), source=source)
    if (values.get("steps") is None) == (values.get("epochs") is None):
        raise UserError(f"{source}: give exactly one of steps or epochs.")
    # The flat keys become the nested settings of the first grid point, checked by their own classes.
    first = {"seed": values.get("seeds", (0,))[0], "batch_size": values.get("batch_sizes", (16,))[0]}
    adapter_values = {key: values.pop(key) for key in ADAPTER_KEYS if key in values}
    train_values = {key: values.pop(key) for key in TRAIN_KEYS if key in values}
    steps = values.get("steps") or steps_for_epochs(
        values.get("n_train", 1000), first["batch_size"], values["epochs"]
    )
    try:
        values["adapter"] = AdapterConfig(
            method=values["methods"][0],
            rank=values.get("ranks", (8,))[0],
            seed=first["seed"],
            **adapter_values,
        )
        values["train"] = TrainConfig(lr=values["lrs"][0], steps=steps, **first, **train_values)
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from exc
    config = SweepConfig(**values)
    _check_consistency(config, source)
    return config


EVAL_SET_NAMES = ("gsm8k", "math", "mbpp", "humaneval")


def eval_task_specs(value: Any, *, source: str = "config") -> tuple[str, ...]:
    """``eval_task`` as a tuple of specs (``gsm8k:PATH``, ``math:PATH``, ``mbpp:PATH``, ``humaneval``), from a list
    or a comma-separated string. Only the form is checked here: the files are read when the sweep starts."""
    items = [item.strip() for item in value.split(",")] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) and item.strip() for item in items):
        raise UserError(
            f"{source}: eval_task must be a list of specs such as gsm8k:PATH, math:PATH, mbpp:PATH, "
            "humaneval."
        )
    specs = tuple(item.strip() for item in items)
    for spec in specs:
        name, _, path = spec.partition(":")
        if name.lower() not in EVAL_SET_NAMES or (name.lower() == "humaneval") == bool(path):
            raise UserError(
                f"{source}: bad eval_task {spec!r}: write gsm8k:PATH, math:PATH, mbpp:PATH or humaneval."
            )
    names = [spec.partition(":")[0].lower() for spec in specs]
    if len(set(names)) != len(names):
        raise UserError(
            f"{source}: eval_task names one set twice ({', '.join(names)}): each set has one column."
        )
    return specs


def parse_lr_grid(value: Any, *, source: str = "config") -> tuple[float, ...]:
    """A list of LRs, or ``{min, max, num}`` / ``{base, per_decade, k: [first, last]}``; sorted, distinct."""
    if is_number(value):
        value = [value]
    if isinstance(value, list):
        if not value or not all(is_number(lr) for lr in value):
            raise UserError(f"{source}: lr must be a non-empty list of numbers, e.g. [1e-4, 1e-3].")
        lrs = [float(lr) for lr in value]
    elif isinstance(value, Mapping):
        keys = set(value)
        if keys == {"min", "max", "num"}:
            low, high, num = value["min"], value["max"], value["num"]
            if not (
                is_number(low) and is_number(high) and 0 < low <= high and isinstance(num, int) and num >= 1
            ):
                raise UserError(f"{source}: lr range needs 0 < min <= max and an integer num >= 1.")
            if num == 1:
                lrs = [float(low)]
            else:
                ratio = math.log10(high / low) / (num - 1)
                lrs = [float(low) * 10 ** (ratio * i) for i in range(num)]
        elif keys == {"base", "per_decade", "k"}:
            base, per_decade, k = value["base"], value["per_decade"], value["k"]
            if not (
                is_number(base)
                and base > 0
                and is_number(per_decade)
                and per_decade > 0
                and isinstance(k, list)
                and len(k) == 2
                and all(isinstance(i, int) for i in k)
                and k[0] <= k[1]
            ):
                raise UserError(
                    f"{source}: lr grid needs base > 0, per_decade > 0 and k: [first, last] integers."
                )
            lrs = [float(base) * 10 ** (i / per_decade) for i in range(k[0], k[1] + 1)]
        else:
            raise UserError(
                f"{source}: lr must be a list, {{min, max, num}} or {{base, per_decade, k}}; "
                f"got keys {', '.join(sorted(map(str, keys)))}."
            )
    else:
        raise UserError(f"{source}: lr must be a list of numbers or a log range, got {value!r}.")
    if any(not (lr > 0 and math.isfinite(lr)) for lr in lrs):
        raise UserError(f"{source}: every learning rate must be a positive finite number.")
    ordered = sorted(set(lrs))
    names = [f"{lr:.4e}" for lr in ordered]
    if len(set(names)) != len(names):
        raise UserError(
            f"{source}: two learning rates agree to 5 significant digits: space them further apart."
        )
    return tuple(ordered)


def _check_consistency(config: SweepConfig, source: str) -> None:
    if config.n_train < 1:
        raise UserError(f"{source}: n_train must be at least 1.")
    micro = config.train.micro_batch_size
    if micro is not None and any(b % micro for b in config.batch_sizes):
        raise UserError(f"{source}: every batch size must be a multiple of micro_batch_size {micro}.")
    if config.base_dtype != "fp32" and config.hessian.during is not None:
        # The in-run probe measures the model that trains, whose base is then bf16; the Hessian is fp32 only.
        raise UserError(
            f"{source}: hessian.during measures the training model, whose base is {config.base_dtype} "
            "with that base_dtype, and the Hessian is measured in fp32 only: drop hessian.during or "
            "set base_dtype: fp32."
        )
    if config.search is not None and config.search.metric == "accuracy" and not config.eval.accuracy:
        raise UserError(
            f"{source}: search.metric is accuracy, but eval.accuracy is false, so no run records it: "
            "set eval.accuracy: true, or search.metric: eval_loss."
        )
    for method in config.methods:
        for rank in config.ranks:
            try:
                check_method_rank(method, rank)
            except UserError as exc:
                raise UserError(f"{source}: ranks: {exc}") from exc


def _hessian(value: Any, source: str, *, max_length: int) -> HessianSettings:
    """The ``hessian:`` block; ``max_length`` (the sweep's) is the measurement's unless the block sets one."""
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise UserError(f"{source}: hessian must be a mapping, e.g. {{init: true, final: true}}.")
    settings: dict[str, Any] = {}
    options = value.get("options") or {}
    if not isinstance(options, Mapping):
        raise UserError(
            f"{source}: hessian.options must be a mapping of measurement settings, e.g. {{tol: 1e-3}}."
        )
    options = dict(options)
    for key, item in value.items():
        if key == "options":
            continue
        if key == "during":
            if item is not None:
                if not isinstance(item, Mapping):
                    raise UserError(f"{source}: hessian.during must be a mapping, e.g. {{every: 10}}.")
                settings["during"] = DuringSettings.from_mapping(item, source=source)
        elif key in ("init", "final"):
            if not isinstance(item, bool):
                raise UserError(f"{source}: hessian.{key} must be true or false.")
            settings[key] = item
        elif key in ("samples", "batch_size"):
            settings[key] = _integer(item, f"hessian.{key}", source, minimum=1)
        else:
            # Anything else is a measurement setting (tol, max_iter, blocks, backend, ...).
            options[key] = item
    options.setdefault("max_length", max_length)
    measure = MeasureSettings.from_mapping(options, source=f"{source}: hessian")
    return HessianSettings(**settings, measure=measure)


def _section(cls: type[Any], value: Any, name: str, source: str) -> Any:
    """An optional settings block (``eval:``, ``ray:``): absent means the defaults."""
    return cls() if value is None else settings_from_mapping(cls, value, what=name, source=source)


def _methods(value: Any, source: str) -> tuple[str, ...]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise UserError(f"{source}: methods must be a list of names, e.g. [lora, pissa].")
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise UserError(f"{source}: unknown method(s) {', '.join(unknown)}: use {', '.join(METHODS)}.")
    return _distinct(names, "methods", source)


def _int_list(value: Any, key: str, source: str, *, minimum: int) -> tuple[int, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise UserError(f"{source}: {key} must not be empty.")
    return _distinct([_integer(item, key, source, minimum=minimum) for item in items], key, source)


def _distinct(items: Sequence[Any], key: str, source: str) -> tuple[Any, ...]:
    if len(set(items)) != len(items):
        raise UserError(f"{source}: {key} lists a value twice: remove the duplicate.")
    return tuple(items)


def _integer(value: Any, key: str, source: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{source}: {key} must be an integer >= {minimum}, got {value!r}.")
    return value


def _number(value: Any, key: str, source: str, *, positive: bool) -> float:
    if not is_number(value) or value < 0 or (positive and value == 0) or not math.isfinite(value):
        raise UserError(
            f"{source}: {key} must be a {'positive' if positive else 'non-negative'} number, got {value!r}."
        )
    return float(value)


def _text(value: Any, key: str, source: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{source}: {key} must be a non-empty string.")
    return value
