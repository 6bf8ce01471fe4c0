"""Plain peft adapter directories: what ``PeftModel.save_pretrained`` writes (adapter_config.json +
adapter_model.safetensors, no hessian_lora.json), read as the toolkit reads its own checkpoints.

The base model comes from ``model=`` (``--model``) or the config's ``base_model_name_or_path``; the method is
inferred from the peft config. Adapters whose initialisation rewrote the base weights and were saved without
peft's conversion are refused unless their residual base is given: on the original base they compute the wrong
function, and nothing in the files says what the residual was.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel

from hessian_lora import adapters, schemas
from hessian_lora.checkpoint import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    META_FILE,
    CheckpointMeta,
    LoadedCheckpoint,
    check_safetensors,
    is_checkpoint,
    load_checkpoint,
)
from hessian_lora.errors import UserError

# init_lora_weights values whose initialisation rewrites the base weights (W ← W − s·B₀·A₀, or a quantised W for
# LoftQ). peft saves such adapters as they are unless ``path_initial_model_for_weight_conversion`` is given, which
# turns them into a plain LoRA delta on the original base and writes ``init_lora_weights: true``.
_REWRITING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")
_INIT_METHODS = {"pissa": "pissa", "olora": "olora", "lora_ga": "loraga"}
_PEFT_TUNERS = {"LORA": "lora", "GRALORA": "gralora", "RANDLORA": "randlora"}
# Tensors a RandLoRA file holds that are fixed random bases, not trained parameters.
_FROZEN_TENSOR_MARKERS = (".randlora_A", ".randlora_B")


def load_adapter(
    directory: str | os.PathLike[str],
    *,
    model: str | None = None,
    model_seed: int = 0,
    device: str | torch.device | None = None,
) -> LoadedCheckpoint:
    """A hessian-lora checkpoint (:func:`load_checkpoint`) or a plain peft adapter directory
    (:func:`load_peft_directory`, base from ``model`` or its ``base_model_name_or_path``)."""
    path = Path(directory)
    if is_checkpoint(path):
        if model is not None:
            raise UserError(f"{path} is a hessian-lora checkpoint and records its base model: drop --model "
                            "(it only replaces the base of plain peft adapter directories).")
        return load_checkpoint(path, device=device)
    return load_peft_directory(path, model=model, model_seed=model_seed, device=device)


def read_peft_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw ``adapter_config.json`` of a plain peft adapter directory, checked to be one this toolkit reads."""
    path = Path(directory)
    if not path.is_dir():
        raise UserError(f"adapter directory {path} does not exist: pass a checkpoint or a peft adapter directory.")
    config_path = path / ADAPTER_CONFIG_FILE
    if not config_path.exists():
        raise UserError(f"{path} is not a hessian-lora checkpoint (no {META_FILE}) nor a peft adapter directory "
                        f"(no {ADAPTER_CONFIG_FILE}): pass a directory written by hessian-lora or save_pretrained.")
    # Types and finite numbers first (schemas.PeftAdapterConfigDocument): a rank of "four" or a NaN alpha would
    # otherwise reach peft (a traceback) or the report (alpha nan).
    data = schemas.read_json(config_path, what="peft adapter config", fix=schemas.PEFT_CONFIG_FIX)
    schemas.validate_document(schemas.PeftAdapterConfigDocument, data, source=str(config_path),
                              fix=schemas.PEFT_CONFIG_FIX)
    return dict(data)


def base_rewriting_init(peft_config: Mapping[str, Any]) -> str | None:
    """The ``init_lora_weights`` value of a LoRA config whose initialisation rewrote the base weights, else None.

    Detectable only from the config: an adapter saved with peft's conversion
    (``path_initial_model_for_weight_conversion``) says ``true`` and is a plain delta on the original base, as it
    should; one whose base was rewritten by hand (MiLoRA, Init[AB] outside this toolkit) cannot be told apart.
    """
    init = peft_config.get("init_lora_weights", True)
    if peft_config.get("peft_type") == "LORA" and isinstance(init, str) and init.lower().startswith(_REWRITING_INITS):
        return init
    return None


def peft_meta(peft_config: Mapping[str, Any], *, base_model: str, model_seed: int = 0,
              task: str | None = None) -> CheckpointMeta:
    """A :class:`CheckpointMeta` for a plain peft adapter: the method inferred from the config (``use_dora``
    → dora, ``use_rslora`` → rslora, ``init_lora_weights`` pissa/olora/lora_ga → pissa/olora/loraga, GraLoRA,
    RandLoRA; else lora); ``rank`` is peft's ``r`` (RandLoRA: its basis rank)."""
    tuner = _PEFT_TUNERS[str(peft_config.get("peft_type"))]
    init = peft_config.get("init_lora_weights", True)
    if tuner != "lora":
        method = tuner
        alpha = peft_config.get("alpha" if tuner == "gralora" else "randlora_alpha")
        dropout = peft_config.get(f"{tuner}_dropout", 0.0)
    else:
        init_name = init.lower().split("_niter")[0] if isinstance(init, str) else None
        method = ("dora" if peft_config.get("use_dora") else "rslora" if peft_config.get("use_rslora")
                  else _INIT_METHODS.get(init_name or "", "lora"))
        alpha = peft_config.get("lora_alpha")
        dropout = peft_config.get("lora_dropout", 0.0)
    rank = int(peft_config.get("r") or 8)
    targets = peft_config.get("target_modules") or ()
    targets = (targets,) if isinstance(targets, str) else tuple(sorted(targets))
    extra = {"format": "peft", "peft_type": peft_config.get("peft_type"), "init_lora_weights": init}
    return CheckpointMeta(method=method, rank=rank, alpha=float(alpha if alpha is not None else rank),
                          dropout=float(dropout or 0.0), targets=targets, base_model=base_model, task=task,
                          model_seed=model_seed, extra=extra)


def load_peft_directory(
    directory: str | os.PathLike[str],
    *,
    model: str | None = None,
    model_seed: int = 0,
    device: str | torch.device | None = None,
) -> LoadedCheckpoint:
    """Load a plain ``PeftModel.save_pretrained`` directory on its base (``model``, else the config's
    ``base_model_name_or_path``) in fp32, eval mode, adapter parameters trainable.

    An adapter whose init rewrote the base (:func:`base_rewriting_init`) is refused unless ``model`` is given
    (then it must be that residual base; peft's init is not re-run on it).
    """
    from peft import PeftConfig

    from hessian_lora.models import load_model

    path = Path(directory)
    data = read_peft_config(path)
    shapes = check_adapter_weights(path)
    rewriting = base_rewriting_init(data)
    if rewriting is not None and model is None:
        raise UserError(f"{path}: init_lora_weights={rewriting!r} rewrote the base weights, so the adapter is wrong "
                        "on the original base: re-save it with peft's path_initial_model_for_weight_conversion, or "
                        "pass the residual base model with --model.")
    base_spec = model or data.get("base_model_name_or_path")
    if not base_spec:
        raise UserError(f"{path / ADAPTER_CONFIG_FILE} has no base_model_name_or_path: pass the base with --model.")
    if model is None and base_spec.startswith(("./", "../", "/", "~")) and not Path(base_spec).expanduser().exists():
        raise UserError(f"{path / ADAPTER_CONFIG_FILE}: base_model_name_or_path {base_spec} does not exist here: "
                        "pass the base with --model.")
    loaded = load_model(base_spec, dtype=torch.float32, device=device, seed=model_seed)
    check_adapter_fits_base(path, data, shapes, loaded.model, base_spec)
    peft_config = PeftConfig.from_pretrained(str(path))
    if rewriting is not None:  # the residual base is given: load the trained factors, do not re-run the init
        peft_config.init_lora_weights = True
        peft_config.lora_ga_config = None
    with torch.random.fork_rng(devices=adapters._cuda_device_indices(loaded.model)), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        try:
            peft_model = PeftModel.from_pretrained(loaded.model, str(path), config=peft_config, is_trainable=True,
                                                   low_cpu_mem_usage=True)
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:  # what the checks above cannot foresee
            raise UserError(f"{path}: peft cannot load the adapter on {base_spec} ({_first_problem(exc)}): pass "
                            "the base it was trained on with --model, or re-save the adapter.") from exc
    meta = peft_meta(data, base_model=base_spec, model_seed=model_seed)
    setattr(peft_model, adapters.CONFIG_ATTRIBUTE, meta.adapter_config())
    setattr(peft_model, adapters.INITIAL_FACTORS_ATTRIBUTE, {})
    peft_model.eval()
    return LoadedCheckpoint(peft_model, loaded.tokenizer, meta, None)


def check_adapter_fits_base(directory: Path, peft_config: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]],
                            base: torch.nn.Module, base_spec: str) -> None:
    """Refuse an adapter that does not fit ``base`` before peft tries: target modules the base lacks, and LoRA
    factors whose shapes differ from the base's layers (peft prints one size mismatch per tensor).

    Names: a ``target_modules`` list matches a module whose name is the entry or ends in ``.entry``, a string is
    a regular expression over full names (peft's rules). Shapes: ``lora_A`` is (r, in), ``lora_B`` (out, r) of
    the linear layer at the tensor's path; other tuners' tensors are left to peft (its error, on one line).
    """
    config_path = directory / ADAPTER_CONFIG_FILE
    linears = {name: module for name, module in base.named_modules() if isinstance(module, torch.nn.Linear)}
    targets = peft_config.get("target_modules")
    if isinstance(targets, str):
        if not any(re.fullmatch(targets, name) for name in linears):
            raise UserError(f"{config_path}: target_modules {targets!r} matches no linear layer of {base_spec}: pass "
                            "the base the adapter was trained on with --model.")
    elif targets:
        missing = [target for target in targets
                   if not any(name == target or name.endswith(f".{target}") for name in linears)]
        if missing:
            have = sorted({name.rsplit(".", 1)[-1] for name in linears})
            raise UserError(f"{config_path}: target_modules {', '.join(missing)} not in {base_spec} (its linear "
                            f"layers: {', '.join(have)}): pass the base the adapter was trained on with --model.")
    for key, shape in shapes.items():
        found = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[^.]+)?\.weight", key)
        if found is None or len(shape) != 2:
            continue
        module = linears.get(found.group(1))
        if module is None:
            raise UserError(f"{directory / ADAPTER_WEIGHTS_FILE}: tensor {key} adapts {found.group(1)}, which "
                            f"{base_spec} does not have: pass the base the adapter was trained on with --model.")
        side, expected = ("in", module.in_features) if found.group(2) == "A" else ("out", module.out_features)
        got = shape[1] if found.group(2) == "A" else shape[0]
        if got != expected:
            raise UserError(f"{directory / ADAPTER_WEIGHTS_FILE}: the adapter was saved for another base: "
                            f"{found.group(1)} has {expected} {side}put features in {base_spec}, the adapter's "
                            f"lora_{found.group(2)} {got}: pass the base it was trained on with --model.")


def _first_problem(exc: BaseException) -> str:
    """peft's error as one line: its first informative line (a state-dict error lists one line per tensor)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = next((line for line in lines if line.lower().startswith(("size mismatch", "missing key", "unexpected"))),
                  lines[0] if lines else type(exc).__name__)
    more = len(lines) - 2 if detail is not lines[0] else len(lines) - 1  # the header and the one shown
    return f"{type(exc).__name__}: {detail[:300].rstrip('.')}" + (f"; {more} more like it" if more > 0 else "")


def check_adapter_weights(directory: str | os.PathLike[str]) -> dict[str, tuple[int, ...]]:
    """Shapes of the tensors in ``adapter_model.safetensors``; a missing, damaged or truncated file is a
    :class:`UserError` (:func:`check_safetensors`)."""
    from safetensors import safe_open

    path = Path(directory) / ADAPTER_WEIGHTS_FILE
    check_safetensors(path)
    with safe_open(str(path), framework="pt") as handle:
        return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118


def trained_parameter_count(shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Elements of an adapter file's trained tensors (RandLoRA's fixed random bases left out)."""
    return sum(math.prod(shape) for name, shape in shapes.items() if not name.endswith(_FROZEN_TENSOR_MARKERS))
