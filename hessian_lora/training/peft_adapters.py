"""Plain peft adapter directories: what ``PeftModel.save_pretrained`` writes (adapter_config.json +
adapter_model.safetensors, no hessian_lora.json), read as the toolkit reads its own checkpoints.

The base model comes from ``model=`` (``--model``) or the config's ``base_model_name_or_path``; the method is
inferred from the peft config. An adapter is measured on what it trains:

- saved unconverted by a method whose initialisation rewrote the base weights (``init_lora_weights`` pissa,
  olora, corda, loftq, lora_ga, ...): on the original base it computes another function. ``pissa`` and ``olora``
  are deterministic functions of the base weights, so without ``--model`` the residual base is rebuilt by
  re-running peft's own init on the original base before the trained factors are loaded (:data:`REBUILDABLE`);
  the others (randomised SVD, data, quantisation) need their residual base as ``--model``, and ``--model``
  naming the original base (the config's ``base_model_name_or_path``) is refused;
- saved with peft's conversion (``path_initial_model_for_weight_conversion``): peft writes a rank-2r plain LoRA
  ``[B, −B₀]·[A; A₀]`` on the original base, the same function but other parameters than the method trains.
  A PiSSA or OLoRA conversion is recognised from the initial half (:func:`converted_init`: B₀ᵀB₀ and A₀A₀ᵀ equal
  and diagonal for PiSSA, B₀ᵀB₀ = I for OLoRA) and measured as the method's own rank-r factors on the residual
  W − s·B₀A₀. Conversions of the other methods cannot be told from a plain rank-2r LoRA and are measured as one.

An adapter is a local directory or a hub repo id (``user/my-lora``, optionally at a ``revision``), fetched
through huggingface_hub into its cache (:func:`resolve_adapter`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import HFValidationError
from peft import PeftConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from hessian_lora.core.errors import UserError
from hessian_lora.inputs.models import hub_unreachable, load_model, looks_like_path, quiet_hub
from hessian_lora.inputs.tasks import PROBE_BATCHES_FILE
from hessian_lora.methods.registry import (
    METHODS,
    PEFT_INIT_CONFIGS,
    REBUILDABLE_PEFT_INITS,
    REWRITING_PEFT_INITS,
    method_of_peft_config,
)
from hessian_lora.settings import schemas
from hessian_lora.settings.adapter import AdapterConfig
from hessian_lora.training import adapters
from hessian_lora.training.checkpoint import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    META_FILE,
    CheckpointMeta,
    LoadedCheckpoint,
    check_adapter_fits_base,
    check_adapter_weights,
    first_problem,
    is_checkpoint,
    load_checkpoint,
)

# init_lora_weights values whose initialisation rewrites the base weights (W ← W − s·B₀·A₀, or a quantised W for
# LoftQ): the registered methods' that say so, and peft's others. peft saves such adapters as they are unless
# ``path_initial_model_for_weight_conversion`` is given, which turns them into a plain LoRA delta on the original
# base and writes ``init_lora_weights: true``.
_REWRITING_INITS = REWRITING_PEFT_INITS
# ... of which these are deterministic functions of the base weights (a full SVD, a QR: the methods whose spec says
# ``rebuildable``): peft's init re-run on the original base gives the residual the adapter was trained on
# (pissa_niter_K is a randomised SVD: not these).
REBUILDABLE = REBUILDABLE_PEFT_INITS
# The files of an adapter repo this toolkit reads (a hessian-lora checkpoint's or a peft directory's); a hub repo's
# other files (README, training_args.bin, checkpoint-*/ folders) are not fetched.
_ADAPTER_FILES = (
    "hessian_lora.json",
    "adapter_config.json",
    "adapter_model.safetensors",
    PROBE_BATCHES_FILE,
    "initial_adapter.safetensors",
    "optimizer.pt",
    "trainer_state.json",
)
# Tensors a RandLoRA file holds that are fixed random bases, not trained parameters.
_FROZEN_TENSOR_MARKERS = (".randlora_A", ".randlora_B")


def load_adapter(
    directory: str | os.PathLike[str],
    *,
    model: str | None = None,
    model_seed: int = 0,
    device: str | torch.device | None = None,
    full_precision: bool = False,
    revision: str | None = None,
) -> LoadedCheckpoint:
    """A hessian-lora checkpoint (:func:`load_checkpoint`, ``full_precision`` passed on) or a plain peft adapter
    directory (:func:`load_peft_directory`, base from ``model`` or its ``base_model_name_or_path``, always fp32);
    ``directory`` may be a hub repo id (:func:`resolve_adapter`)."""
    path = resolve_adapter(directory, revision=revision)
    if is_checkpoint(path):
        if model is not None:
            raise UserError(
                f"{path} is a hessian-lora checkpoint and records its base model: drop --model "
                "(it only replaces the base of plain peft adapter directories)."
            )
        return load_checkpoint(path, device=device, full_precision=full_precision)
    return load_peft_directory(path, model=model, model_seed=model_seed, device=device)


def resolve_adapter(spec: str | os.PathLike[str], *, revision: str | None = None) -> Path:
    """The local directory of an adapter: ``spec`` itself when it is a path (a ``Path``, or a string that exists,
    starts with ``./``, ``/``, ``~`` or has no slash or several), else a hub repo id whose adapter files
    huggingface_hub fetches into (or finds in, offline or without a network) its cache, at ``revision`` (default: the
    main branch)."""
    text = os.fspath(spec)
    # a Path object is a path (also what this returns, so resolving twice is resolving once)
    if isinstance(spec, os.PathLike) or looks_like_path(text) or "/" not in text or text.count("/") > 1:
        if revision is not None:
            raise UserError(
                f"--revision {revision} is for hub adapter ids (user/name): {text} is a local path."
            )
        return Path(text)

    reason = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else hub_unreachable(constants.ENDPOINT)
    at = f" at revision {revision}" if revision else ""
    try:
        with quiet_hub(offline=reason is not None):
            folder = snapshot_download(
                text,
                revision=revision,
                allow_patterns=list(_ADAPTER_FILES),
                local_files_only=reason is not None,
            )
    except HFValidationError as exc:
        raise UserError(
            f"adapter {text} is neither a directory here nor a hub repo id ({exc}): pass an adapter "
            "directory or an id such as user/my-lora."
        ) from exc
    except Exception as exc:  # huggingface_hub raises several kinds (not found, gated, offline, HTTP)
        where = (
            f"is not in the local cache and the hub cannot be reached ({reason})"
            if reason is not None
            else f"could not be fetched ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})"
        )
        raise UserError(
            f"hub adapter {text}{at} {where} (and there is no directory {text} here): check the id, "
            "revision and your network (HF_HUB_OFFLINE=1 uses the local cache only), or pass an adapter "
            "directory (./DIR for a relative one)."
        ) from exc
    path = Path(folder)
    if not (path / ADAPTER_CONFIG_FILE).is_file() and not (path / META_FILE).is_file():
        raise UserError(
            f"hub repo {text}{at} holds no {ADAPTER_CONFIG_FILE} nor {META_FILE}: pass the id of an "
            "adapter repo (PeftModel.push_to_hub writes one)."
        )
    return path


def read_peft_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw ``adapter_config.json`` of a plain peft adapter directory, checked to be one this toolkit reads."""
    path = Path(directory)
    if not path.is_dir():
        raise UserError(
            f"adapter directory {path} does not exist: pass a checkpoint or a peft adapter directory."
        )
    config_path = path / ADAPTER_CONFIG_FILE
    if not config_path.exists():
        raise UserError(
            f"{path} is not a hessian-lora checkpoint (no {META_FILE}) nor a peft adapter directory "
            f"(no {ADAPTER_CONFIG_FILE}): pass a directory written by hessian-lora or save_pretrained."
        )
    # Types and finite numbers first (schemas.PeftAdapterConfigDocument): a rank of "four" or a NaN alpha would
    # otherwise reach peft (a traceback) or the report (alpha nan).
    data = schemas.read_json(config_path, what="peft adapter config", fix=schemas.PEFT_CONFIG_FIX)
    schemas.validate_document(
        schemas.PeftAdapterConfigDocument, data, source=str(config_path), fix=schemas.PEFT_CONFIG_FIX
    )
    return dict(data)


def base_rewriting_init(peft_config: Mapping[str, Any]) -> str | None:
    """The ``init_lora_weights`` value of a LoRA config whose initialisation rewrote the base weights, else None.

    Detectable only from the config: an adapter saved with peft's conversion
    (``path_initial_model_for_weight_conversion``) says ``true`` and is a plain delta on the original base, as it
    should; one whose base was rewritten by hand (MiLoRA, Init[AB] outside this toolkit) cannot be told apart.
    """
    init = peft_config.get("init_lora_weights", True)
    if (
        peft_config.get("peft_type") == "LORA"
        and isinstance(init, str)
        and init.lower().startswith(_REWRITING_INITS)
    ):
        return init
    return None


def converted_init(directory: str | os.PathLike[str], peft_config: Mapping[str, Any]) -> str | None:
    """The method (PiSSA, OLoRA) when the directory is such an adapter saved with peft's conversion, else None.

    peft's conversion stores ``lora_A = [A; A₀]`` and ``lora_B = [B, −B₀]`` at rank 2r with ``init_lora_weights:
    true``; the initial half of every module tells the method, each method's spec's ``converted_half`` says how:
    PiSSA's B₀ = U_r·√(S_r/s), A₀ = √(S_r/s)·V_rᵀ have B₀ᵀB₀ = A₀A₀ᵀ = diag(S_r/s); OLoRA's B₀ = Q_r has
    B₀ᵀB₀ = I. A plain LoRA's second half (Kaiming A, B trained from zero) meets neither (tolerance: 16-bit tensors
    round at ~4e-3); a half two methods claim is measured as a plain rank-2r LoRA.
    """
    if (
        peft_config.get("peft_type") != "LORA"
        or peft_config.get("init_lora_weights", True) is not True
        or peft_config.get("use_dora")
        or int(peft_config.get("r") or 0) % 2
    ):
        return None
    kinds = set()
    with safe_open(str(Path(directory) / ADAPTER_WEIGHTS_FILE), framework="pt") as handle:
        names = [name for name in handle.keys() if name.endswith(".lora_A.weight")]  # noqa: SIM118
        if not names:
            return None
        for name in names:
            a = handle.get_tensor(name)
            b_name = name[: -len(".lora_A.weight")] + ".lora_B.weight"
            if b_name not in handle.keys() or a.ndim != 2 or a.shape[0] % 2:  # noqa: SIM118
                return None
            b = handle.get_tensor(b_name)
            half = a.shape[0] // 2
            tol = 1e-2 if a.element_size() <= 2 else 1e-4
            a0, b0 = a[half:].double(), -b[:, half:].double()
            claimed = [
                name
                for name, spec in METHODS.items()
                if spec.converted_half is not None and spec.converted_half(a0, b0, tol)
            ]
            if len(claimed) != 1:
                return None
            kinds.add(claimed[0])
    return kinds.pop() if len(kinds) == 1 else None


def peft_meta(
    peft_config: Mapping[str, Any],
    *,
    base_model: str,
    model_seed: int = 0,
    task: str | None = None,
    step: int | None = None,
) -> CheckpointMeta:
    """A :class:`CheckpointMeta` for a plain peft adapter: the method the config names
    (:func:`~hessian_lora.methods.registry.method_of_peft_config`: each method's spec recognises its own configs,
    e.g. ``use_dora`` → DoRA, ``init_lora_weights`` pissa → PiSSA, peft_type GRALORA → GraLoRA; plain LoRA when
    none does); alpha and dropout read where that method's tuner keeps them; ``rank`` is peft's ``r`` (RandLoRA:
    its basis rank)."""
    method = method_of_peft_config(peft_config)
    spec = METHODS[method]
    init = peft_config.get("init_lora_weights", True)
    alpha = peft_config.get(spec.peft_alpha_key)
    dropout = peft_config.get(spec.peft_dropout_key, 0.0)
    rank = int(peft_config.get("r") or 8)
    targets = peft_config.get("target_modules") or ()
    targets = (targets,) if isinstance(targets, str) else tuple(sorted(targets))
    extra = {
        "format": "peft",
        "peft_type": peft_config.get("peft_type"),
        "init_lora_weights": init,
        "step_known": step is not None,
    }
    adapter = AdapterConfig(
        method=method,
        rank=rank,
        alpha=float(alpha if alpha is not None else rank),
        dropout=float(dropout or 0.0),
        targets=targets,
    )
    return CheckpointMeta(
        adapter=adapter,
        base_model=base_model,
        task=task,
        model_seed=model_seed,
        extra=extra,
        **({"step": step} if step is not None else {}),
    )


def peft_step(meta: CheckpointMeta) -> int | None:
    """The step a report gives for an adapter: a checkpoint's own, a plain peft directory's when its files say
    it (:func:`trained_step`), else None (unknown, not 0)."""
    if meta.extra.get("format") != "peft":
        return meta.step
    return meta.step if meta.extra.get("step_known") else None


def load_peft_directory(
    directory: str | os.PathLike[str],
    *,
    model: str | None = None,
    model_seed: int = 0,
    device: str | torch.device | None = None,
) -> LoadedCheckpoint:
    """Load a plain ``PeftModel.save_pretrained`` directory on its base (``model``, else the config's
    ``base_model_name_or_path``) in fp32, eval mode, adapter parameters trainable, as the parameters its method
    trains (see the module docstring: a rewriting init's residual base rebuilt or given, a PiSSA/OLoRA
    conversion split back into the method's own factors).
    """
    path = Path(directory)
    data = read_peft_config(path)
    shapes = check_adapter_weights(path)
    rewriting = base_rewriting_init(data)
    named_base = data.get("base_model_name_or_path")
    if rewriting is not None:
        if model is not None and named_base and _same_base(model, named_base):
            raise UserError(
                f"{path}: --model {model} is the original base (the config's base_model_name_or_path), "
                f"which init_lora_weights={rewriting!r} rewrote: pass the residual base peft's init left "
                "(peft_model.unload().save_pretrained(DIR) right after get_peft_model)"
                + (", or leave out --model to rebuild it" if rewriting in REBUILDABLE else "")
                + "."
            )
        if model is None and rewriting not in REBUILDABLE:
            raise UserError(
                f"{path}: init_lora_weights={rewriting!r} rewrote the base weights in a way that cannot "
                "be rebuilt from them, so the adapter is wrong on the original base: pass the residual "
                "base with --model (peft_model.unload().save_pretrained(DIR) right after "
                "get_peft_model), or re-save the adapter with peft's "
                "path_initial_model_for_weight_conversion."
            )
    converted = converted_init(path, data) if rewriting is None else None
    base_spec = model or named_base
    if not base_spec:
        raise UserError(
            f"{path / ADAPTER_CONFIG_FILE} has no base_model_name_or_path: pass the base with --model."
        )
    if (
        model is None
        and base_spec.startswith(("./", "../", "/", "~"))
        and not Path(base_spec).expanduser().exists()
    ):
        raise UserError(
            f"{path / ADAPTER_CONFIG_FILE}: base_model_name_or_path {base_spec} does not exist here: "
            "pass the base with --model."
        )
    loaded = load_model(base_spec, dtype=torch.float32, device=device, seed=model_seed)
    check_adapter_fits_base(path, data, shapes, loaded.model, base_spec)
    peft_config = PeftConfig.from_pretrained(str(path))
    rebuild = rewriting is not None and model is None
    if rewriting is not None and not rebuild:  # the residual base is given: load the trained factors only
        peft_config.init_lora_weights = True
        for key in PEFT_INIT_CONFIGS:  # the recipe's own settings (LoRA-GA's) go with it
            setattr(peft_config, key, None)
    with (
        torch.random.fork_rng(devices=adapters._cuda_device_indices(loaded.model)),
        warnings.catch_warnings(),
    ):
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        if converted is not None:
            peft_model = _split_conversion(loaded.model, path, peft_config)
        else:
            # Rebuilding needs peft's init to run (it rewrites the base, then the trained factors replace its
            # A₀, B₀); low_cpu_mem_usage skips the init, which is right when nothing is to be rebuilt.
            try:
                peft_model = PeftModel.from_pretrained(
                    loaded.model,
                    str(path),
                    config=peft_config,
                    is_trainable=True,
                    low_cpu_mem_usage=not rebuild,
                )
            except (
                RuntimeError,
                ValueError,
                KeyError,
                TypeError,
            ) as exc:  # what the checks above cannot foresee
                raise UserError(
                    f"{path}: peft cannot load the adapter on {base_spec} ({first_problem(exc)}): "
                    "pass the base it was trained on with --model, or re-save the adapter."
                ) from exc
    if converted is not None:
        data = {
            **data,
            "r": peft_config.r,
            "lora_alpha": peft_config.lora_alpha,
            "init_lora_weights": converted,
        }
    meta = peft_meta(data, base_model=base_spec, model_seed=model_seed, step=trained_step(path))
    residual = residual_base_note(rewriting, converted, given=model is not None)
    if residual is not None:
        meta = dataclasses.replace(meta, extra={**meta.extra, "residual_base": residual})
    setattr(peft_model, adapters.CONFIG_ATTRIBUTE, meta.adapter)
    setattr(peft_model, adapters.INITIAL_FACTORS_ATTRIBUTE, {})
    peft_model.eval()
    return LoadedCheckpoint(peft_model, loaded.tokenizer, meta, None)


def residual_base_note(rewriting: str | None, converted: str | None, *, given: bool) -> str | None:
    """How the base an adapter is measured on was obtained, when it is not the original base as it is."""
    if converted is not None:
        return (
            f"converted {converted} (peft's path_initial_model_for_weight_conversion): measured as {converted}'s "
            "rank-r factors on the residual W - s*B0*A0 rebuilt from the file's initial half"
        )
    if rewriting is None:
        return None
    if given:
        return f"given with --model (init_lora_weights={rewriting!r} not re-run)"
    if rewriting in REBUILDABLE:
        return f"rebuilt by re-running peft's init_lora_weights={rewriting!r} on the original base"
    return (
        f"NEEDED: init_lora_weights={rewriting!r} rewrote the base; pass the residual base with --model, or "
        "re-save with peft's path_initial_model_for_weight_conversion"
    )


def _same_base(given: str, named: str) -> bool:
    """Whether a ``--model`` spec names the same model as a config's ``base_model_name_or_path`` (a copy of it
    under another name cannot be told from a residual base without loading both)."""
    if given == named:
        return True
    here, there = Path(given).expanduser(), Path(named).expanduser()
    return here.exists() and there.exists() and here.resolve() == there.resolve()


def _split_conversion(base: nn.Module, directory: Path, converted: Any) -> PeftModel:
    """A PiSSA/OLoRA adapter that peft's conversion saved as ``[B, −B₀]·[A; A₀]`` at rank 2r, as the method's own
    rank-r factors (A, B) on the residual base W − s·B₀A₀. ``converted`` is its PeftConfig; it is changed in place
    to the rank-r config (same scale: peft doubled r and alpha, or alpha by √2 with rsLoRA)."""
    tensors = load_file(str(directory / ADAPTER_WEIGHTS_FILE))
    converted.r //= 2
    converted.lora_alpha = converted.lora_alpha / (2**0.5 if converted.use_rslora else 2)
    converted.rank_pattern = {key: value // 2 for key, value in (converted.rank_pattern or {}).items()}
    converted.alpha_pattern = {key: value / 2 for key, value in (converted.alpha_pattern or {}).items()}
    converted.inference_mode = False
    peft_model = get_peft_model(base, converted)
    done = 0
    with torch.no_grad():
        for name, module in peft_model.named_modules():
            if not isinstance(module, LoraLayer) or "default" not in module.lora_A:
                continue
            key = name.replace(".default", "")
            a, b = tensors[f"{key}.lora_A.weight"], tensors[f"{key}.lora_B.weight"]
            half = a.shape[0] // 2
            a0, b0 = a[half:].double(), -b[:, half:].double()
            weight = module.get_base_layer().weight
            delta = module.scaling["default"] * (b0 @ a0)
            weight -= (delta.T if module.fan_in_fan_out else delta).to(weight.dtype)
            module.lora_A["default"].weight.copy_(a[:half])
            module.lora_B["default"].weight.copy_(b[:, :half])
            done += 1
    if done * 2 != len(tensors):
        raise UserError(
            f"{directory / ADAPTER_WEIGHTS_FILE} holds {len(tensors) - 2 * done} tensors besides the "
            "lora_A/lora_B of its target modules (modules_to_save?): only a pure PiSSA/OLoRA conversion "
            "can be split into the method's own factors; save the adapter without them."
        )
    return peft_model


def trained_step(directory: str | os.PathLike[str]) -> int | None:
    """The optimizer step a plain adapter directory was saved at: ``trainer_state.json``'s ``global_step``
    (what a Trainer checkpoint folder holds), else a ``checkpoint-<step>`` folder name; None when neither says."""
    path = Path(directory)
    state = path / "trainer_state.json"
    if state.is_file():
        try:
            data = json.loads(state.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:  # not UTF-8 is not JSON either
            raise UserError(
                f"{state} is not valid JSON ({exc}): re-save the checkpoint or remove the file."
            ) from exc
        if not isinstance(data, dict):
            raise UserError(
                f"{state} holds a {type(data).__name__}, not a Trainer state (a JSON object with "
                "global_step): re-save the checkpoint or remove the file."
            )
        step = data.get("global_step")
        if isinstance(step, int) and not isinstance(step, bool) and step >= 0:
            return step
        raise UserError(
            f"{state}: global_step {step!r} is not a step count: re-save the checkpoint or remove the file."
        )
    match = re.fullmatch(r"checkpoint-(\d+)", path.resolve().name)
    return int(match.group(1)) if match else None


def trained_parameter_count(shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Elements of an adapter file's trained tensors (RandLoRA's fixed random bases left out)."""
    return sum(
        math.prod(shape) for name, shape in shapes.items() if not name.endswith(_FROZEN_TENSOR_MARKERS)
    )
