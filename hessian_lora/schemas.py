"""The JSON documents that enter from outside, validated once: checkpoint metadata, calibrations, eigen reports.

Each document has a pydantic model here. :func:`read_document` reads a file (missing, unreadable, non-UTF-8 or
non-JSON files included) and :func:`validate_document` checks parsed data; both turn every problem into one
:class:`~hessian_lora.errors.UserError` that names the file, the field and the fix (:func:`user_error`). The
modules that own the documents (``checkpoint``, ``recommend``, ``measure``) keep their dataclasses and build
them from the validated data, so the rest of the code never sees a malformed value (a rank of ``"four"``, a
NaN alpha, a list where an object belongs).

Numbers are strict: JSON ``NaN``/``Infinity`` (which Python's json module accepts) and booleans where an
integer belongs are refused. Unknown fields are kept (``extra="allow"``): later versions may add some.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hessian_lora.errors import UserError

Model = TypeVar("Model", bound=BaseModel)

PositiveInt = Annotated[int, Field(strict=True, ge=1)]
NonNegativeInt = Annotated[int, Field(strict=True, ge=0)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
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
    more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
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
        raise UserError(f"{what} {file} is not UTF-8 text (byte {exc.start}): the file is damaged; {fix}") from exc
    except OSError as exc:
        raise UserError(f"cannot read {what} {file} ({exc.strerror or exc}): {fix}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        article = "an" if what[:1] in "aeiou" else "a"
        raise UserError(f"{file} is not {article} {what} (invalid JSON: {exc.msg} at line {exc.lineno}): the file "
                        f"is damaged; {fix}") from exc


def read_document(path: str | os.PathLike[str], model: type[Model], *, what: str, fix: str) -> Model:
    """Read and validate one JSON document file (see :func:`read_json`, :func:`validate_document`)."""
    return validate_document(model, read_json(path, what=what, fix=fix), source=str(path), fix=fix)


# ----------------------------------------------------------------------------------------------------------
# Checkpoint metadata: DIR/hessian_lora.json


class CheckpointMetaDocument(_Document):
    """``hessian_lora.json``: the fields of :class:`hessian_lora.checkpoint.CheckpointMeta` plus what saving adds."""

    method: Name
    rank: PositiveInt
    alpha: PositiveFloat
    dropout: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] = 0.0
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
        from hessian_lora.registry import METHODS

        if value not in METHODS:
            raise ValueError(f"unknown method (known: {', '.join(METHODS)})")
        return value


CHECKPOINT_FIX = "the checkpoint is damaged; re-create it (hessian-lora init, or rerun the training run)."


# ----------------------------------------------------------------------------------------------------------
# Calibrations: hessian-lora recommend --save-calibration / --calibration FILE


class CalibrationPoint(_Document):
    lambda_max: PositiveFloat
    eta_star: PositiveFloat


class CalibrationDocument(_Document):
    """A calibration file (:class:`hessian_lora.recommend.Calibration` ``.to_dict()``)."""

    format: PositiveInt = 1
    fit: Literal["power", "inverse"]
    c: PositiveFloat
    slope: FiniteFloat | None = None
    intercept: FiniteFloat | None = None
    log10_error: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    lambda_source: Name
    points: dict[str, CalibrationPoint]
    probe: dict[str, Any]
    provenance: dict[str, Any] = Field(default_factory=dict)


CALIBRATION_FIX = ("rebuild it with `hessian-lora recommend --calibration RUN_DIR --save-calibration FILE`, or "
                   "leave --calibration out for the shipped one.")


# ----------------------------------------------------------------------------------------------------------
# Eigen reports read back (eigen --out resumes from them; analysis reads hessian/*.json)


class BlockDocument(_Document):
    name: Name
    size: NonNegativeInt | None = None


class EigenReportDocument(_Document):
    """The outline of an eigen report: settings, source and named blocks; the blocks' numbers are read by
    :meth:`hessian_lora.hessian.EigenReport.from_dict`."""

    settings: dict[str, Any]
    source: dict[str, Any] = Field(default_factory=dict)
    blocks: list[BlockDocument]


REPORT_FIX = "write to another --out file, or delete this one to start over."
