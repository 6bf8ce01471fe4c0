"""The JSON documents that enter from outside, validated once: checkpoint metadata, plain peft adapter configs,
calibrations (their probe settings included), eigen reports.

Each document has a pydantic model here. :func:`read_document` reads a file (missing, unreadable, non-UTF-8 or
non-JSON files included) and :func:`validate_document` checks parsed data; both turn every problem into one
:class:`~hessian_lora.core.errors.UserError` that names the file, the field and the fix (:func:`user_error`). The
modules that own the documents (``checkpoint``, ``recommend``, ``measure``) keep their dataclasses and build
them from the validated data, so the rest of the code never sees a malformed value (a rank of ``"four"``, a
NaN alpha, a list where an object belongs).

Numbers are strict: JSON ``NaN``/``Infinity`` (which Python's json module accepts) and booleans where an
integer belongs are refused. Unknown fields are kept (``extra="allow"``): later versions may add some.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hessian_lora.core.errors import UserError
from hessian_lora.methods.registry import METHODS

Model = TypeVar("Model", bound=BaseModel)

PositiveInt = Annotated[int, Field(strict=True, ge=1)]
NonNegativeInt = Annotated[int, Field(strict=True, ge=0)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Dropout = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]
Name = Annotated[str, Field(min_length=1)]


class _Document(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


# ----------------------------------------------------------------------------------------------------------
# Errors


def user_error(exc: ValidationError, source: str, fix: str) -> UserError:
    """A pydantic error as one line: the file, the first bad field, what is wrong with it, and the fix."""
    problems = exc.errors(include_url=False)
    first = problems[0]
    field = ".".join(str(part) for part in first["loc"]) or "the document"
    got = first.get("input")
    shown = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
    more = (
        f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})"
        if len(problems) > 1
        else ""
    )
    message = first["msg"][0].lower() + first["msg"][1:]
    return UserError(f"{source}: {field}: {message}, got {shown[:60]}{more}: {fix}")


def validate_document(model: type[Model], data: Any, *, source: str, fix: str) -> Model:
    """``data`` (parsed JSON) as ``model``; any problem is a one-line :class:`UserError`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise user_error(exc, source, fix) from exc


def read_json(path: str | os.PathLike[str], *, what: str, fix: str) -> Any:
    """Parsed JSON of ``path``; a missing, unreadable, non-UTF-8 or malformed file is a :class:`UserError`."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise UserError(f"{what} {file} does not exist: {fix}") from exc
    except IsADirectoryError as exc:
        raise UserError(f"{what} {file} is a directory, not a file: {fix}") from exc
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{what} {file} is not UTF-8 text (byte {exc.start}): the file is damaged; {fix}"
        ) from exc
    except OSError as exc:
        raise UserError(f"cannot read {what} {file} ({exc.strerror or exc}): {fix}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        article = "an" if what[:1] in "aeiou" else "a"
        raise UserError(
            f"{file} is not {article} {what} (invalid JSON: {exc.msg} at line {exc.lineno}): the file "
            f"is damaged; {fix}"
        ) from exc


def read_document(path: str | os.PathLike[str], model: type[Model], *, what: str, fix: str) -> Model:
    """Read and validate one JSON document file (see :func:`read_json`, :func:`validate_document`)."""
    return validate_document(model, read_json(path, what=what, fix=fix), source=str(path), fix=fix)


# ----------------------------------------------------------------------------------------------------------
# Checkpoint metadata: DIR/hessian_lora.json


class CheckpointMetaDocument(_Document):
    """``hessian_lora.json``: the fields of :class:`hessian_lora.training.checkpoint.CheckpointMeta` plus what saving
    adds."""

    method: Name
    rank: PositiveInt
    alpha: PositiveFloat
    dropout: Dropout = 0.0
    targets: Annotated[list[Name], Field(min_length=1)]
    base_model: Name
    task: str | None = None
    seed: NonNegativeInt = 0
    model_seed: NonNegativeInt = 0
    dtype: Literal["float32", "float64", "bfloat16", "float16"] = "float32"
    lr: PositiveFloat | None = None
    step: NonNegativeInt = 0
    loraplus_ratio: PositiveFloat = 16.0
    pissa_niter: PositiveInt | None = None
    extra: dict[str, Any] = Field(default_factory=dict)
    format_version: NonNegativeInt = 1
    residual_sha256: str | None = None
    trainable_parameters: NonNegativeInt | None = None

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value not in METHODS:
            raise ValueError(f"unknown method (known: {', '.join(METHODS)})")
        return value


CHECKPOINT_FIX = "the checkpoint is damaged; re-create it (hessian-lora init, or rerun the training run)."


# ----------------------------------------------------------------------------------------------------------
# Plain peft adapter directories: DIR/adapter_config.json (PeftModel.save_pretrained)


class PeftAdapterConfigDocument(_Document):
    """The fields of ``adapter_config.json`` this toolkit reads (peft's other fields are passed to peft as they
    are). The tuners it measures; positive finite ranks and alphas; dropouts in [0, 1); targets as names or one
    regular expression; a base model named by a string."""

    peft_type: Literal["LORA", "GRALORA", "RANDLORA"]
    base_model_name_or_path: Name | None = None
    r: PositiveInt = 8
    lora_alpha: PositiveFloat | None = None
    alpha: PositiveFloat | None = None  # GraLoRA's
    randlora_alpha: PositiveFloat | None = None
    lora_dropout: Dropout | None = 0.0
    gralora_dropout: Dropout | None = 0.0
    randlora_dropout: Dropout | None = 0.0
    gralora_k: PositiveInt | None = None
    target_modules: Name | Annotated[list[Name], Field(min_length=1)] | None = None
    use_dora: bool | None = False
    use_rslora: bool | None = False
    init_lora_weights: bool | str = True

    @field_validator("peft_type", mode="before")
    @classmethod
    def _known_tuner(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in ("LORA", "GRALORA", "RANDLORA"):
            raise ValueError("this toolkit measures peft adapters of type LORA, GRALORA or RANDLORA")
        return value


PEFT_CONFIG_FIX = (
    "re-save the adapter with PeftModel.save_pretrained, or fix that field in adapter_config.json."
)


# ----------------------------------------------------------------------------------------------------------
# Calibrations: hessian-lora recommend --save-calibration / --calibration FILE


class CalibrationProbe(_Document):
    """How a calibration's λ_max must be measured (:func:`hessian_lora.sweep.recommend.probe_settings`): every field
    the adaptive search and ``recommend`` read from it. ``eigen_options`` are ``MeasureSettings`` fields, checked
    by :func:`hessian_lora.sweep.recommend.load_calibration` (they need the measurement module, which needs torch)."""

    model: Name | None = None
    model_seed: NonNegativeInt | None = 0
    task: Name | None = None
    data_seed: NonNegativeInt | None = 0
    n_train: PositiveInt | None = None
    n_eval: NonNegativeInt | None = None
    samples: PositiveInt | None = None
    batch_size: PositiveInt | None = None
    max_length: Annotated[int, Field(strict=True, ge=2)] | None = None
    rank: PositiveInt | None = None
    alpha: PositiveFloat | None = None
    targets: Annotated[list[Name], Field(min_length=1)] | None = None
    attention: Literal["eager", "sdpa"] | None = "eager"
    pissa_niter: PositiveInt | None = None
    prompt_template: Name | None = None
    blocks: Literal["whole", "per-module"] | None = "whole"
    modules: Annotated[list[Name], Field(min_length=1)] | Name | None = None
    layers: list[NonNegativeInt] | Name | NonNegativeInt | None = None
    eigen_options: dict[str, Any] | None = None


class CalibrationPoint(_Document):
    """One calibration point: a method's λ_max at initialisation and its η*."""

    lambda_max: PositiveFloat
    eta_star: PositiveFloat


class CalibrationDocument(_Document):
    """A calibration file (:class:`hessian_lora.sweep.recommend.Calibration` ``.to_dict()``)."""

    format: PositiveInt = 1
    fit: Literal["power", "inverse"]
    c: PositiveFloat
    slope: FiniteFloat | None = None
    intercept: FiniteFloat | None = None
    log10_error: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    lambda_source: Name
    points: dict[str, CalibrationPoint]
    probe: CalibrationProbe
    provenance: dict[str, Any] = Field(default_factory=dict)


CALIBRATION_FIX = (
    "rebuild it with `hessian-lora recommend --calibration RUN_DIR --save-calibration FILE`, or "
    "leave --calibration out for the shipped one."
)


# ----------------------------------------------------------------------------------------------------------
# A run directory's config.yaml as analysis reads it (analyze, plot, recommend --calibration RUN_DIR)


class RunConfigDocument(_Document):
    """The settings analysis and calibrations take from ``RUN_DIR/config.yaml``, typed; everything else is kept
    as written (an ablation compares every key). A sweep writes the whole config (``sweep.config`` validates it
    on resume); hand-made or older directories may hold only some keys."""

    name: str | int | None = None
    model: Name | None = None
    task: Name | None = None
    model_seed: NonNegativeInt | None = None
    data_seed: NonNegativeInt | None = None
    n_train: PositiveInt | None = None
    n_eval: NonNegativeInt | None = None
    max_length: PositiveInt | None = None
    alpha: PositiveFloat | None = None
    targets: Annotated[list[Name], Field(min_length=1)] | Name | None = None
    attention: Name | None = None
    pissa_niter: PositiveInt | None = None
    prompt_template: Name | None = None
    hessian: dict[str, Any] | None = None


RUN_CONFIG_FIX = (
    "restore the config.yaml the sweep wrote (a run directory's config is not edited by hand), or "
    "rerun the sweep into a new --out."
)


# ----------------------------------------------------------------------------------------------------------
# Eigen reports read back (eigen --out resumes from them; analysis reads hessian/*.json)


class BlockDocument(_Document):
    """One block of an eigen report, as far as reading it back needs."""

    name: Name
    size: NonNegativeInt | None = None


class EigenReportDocument(_Document):
    """The outline of an eigen report: settings, source and named blocks; the blocks' numbers are read by
    :meth:`hessian_lora.hessian.EigenReport.from_dict`."""

    settings: dict[str, Any]
    source: dict[str, Any] = Field(default_factory=dict)
    blocks: list[BlockDocument]


REPORT_FIX = "write to another --out file, or delete this one to start over."


def read_config(path: Path) -> Mapping[str, Any]:
    """The sweep config as a mapping (empty when there is none: analysis then uses defaults). A file that is not
    UTF-8, not YAML, not a mapping, or holds a setting of the wrong type (:class:`RunConfigDocument`) is a
    :class:`UserError` naming it: analysis would otherwise crash on it, or label and calibrate with nonsense."""
    if not path.exists():
        return {}

    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte {exc.start}): {RUN_CONFIG_FIX}") from exc
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror or exc}): {RUN_CONFIG_FIX}") from exc
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML ({str(exc).splitlines()[0]}): {RUN_CONFIG_FIX}") from exc
    if loaded is None:
        return {}
    validate_document(RunConfigDocument, loaded, source=str(path), fix=RUN_CONFIG_FIX)
    return loaded
