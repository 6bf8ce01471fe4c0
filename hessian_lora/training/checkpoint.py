"""Checkpoints: one directory format for an adapter at any training step.

```
DIR/
  adapter_config.json          # a standard peft LoRA config (init_lora_weights=true: nothing to recompute)
  adapter_model.safetensors    # the adapter now (lora_A, lora_B, DoRA magnitudes)
  hessian_lora.json            # CheckpointMeta: method, rank, alpha, targets, base model, task, seeds, lr, step
  initial_adapter.safetensors  # methods that rewrite the base: A0, B0 per module (the residual's recipe)
  optimizer.pt                 # when saved with an optimizer: AdamW state_dict + parameter names
```

For PiSSA, MiLoRA, Init[AB], OLoRA and LoRA-GA the model is a *residual* base W − s·B₀·A₀ plus the adapter.
Storing the rewritten base would take the targeted weights in full (~425 MB for SmolLM2 with all seven
projections); storing A₀, B₀ takes kilobytes, and :func:`hessian_lora.training.adapters.residual_weight` rebuilds the
residual bit for bit from the reloaded base (float64, fixed order, elementwise). ``hessian_lora.json`` keeps a
SHA-256 of the residual weights, so a base model that changed since saving is reported instead of silently
giving another model.

For the methods that keep the base (LoRA, DoRA, rsLoRA, LoRA+) ``PeftModel.from_pretrained(base, DIR)`` on a
fresh base gives the same model; for the others it must be applied to the residual base.

:func:`load_adapter` also reads plain ``PeftModel.save_pretrained`` directories (LoRA, GraLoRA, RandLoRA):
the base is ``--model`` or ``base_model_name_or_path``, the method is inferred from the config. What can be told
from the files: an ``init_lora_weights`` of pissa*/olora/corda/loftq/lora_ga means peft saved the factors of a
rewritten base (refused unless the residual base is given); a base rewritten outside peft's init cannot be seen.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import torch
from peft import PeftModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedTokenizerBase

from hessian_lora.core.atomic import replace_directory, temporary_path
from hessian_lora.core.errors import UserError
from hessian_lora.inputs.models import load_model
from hessian_lora.methods.registry import PEFT_INIT_CONFIGS
from hessian_lora.settings import schemas
from hessian_lora.settings.adapter import AdapterConfig
from hessian_lora.training import adapters
from hessian_lora.training.adapters import (
    residual_digest as residual_digest,  # the residual's fingerprint: the recipe's
)
from hessian_lora.training.precision import FP32_RESIDUAL_DIGEST_ATTRIBUTE

FORMAT_VERSION = 1
META_FILE = "hessian_lora.json"
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
INITIAL_ADAPTER_FILE = "initial_adapter.safetensors"
OPTIMIZER_FILE = "optimizer.pt"

# The flat document's keys, in the order the file has always listed them (the adapter's fields among the others).
_META_ORDER = (
    "method",
    "rank",
    "alpha",
    "dropout",
    "targets",
    "base_model",
    "task",
    "seed",
    "model_seed",
    "dtype",
    "lr",
    "step",
    "loraplus_ratio",
    "pissa_niter",
    "extra",
    "format_version",
)
_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint is: the adapter's definition, where its base comes from, and where training stands.

    ``adapter`` is the :class:`AdapterConfig` it was built with (its ``alpha`` resolved: the file records the
    alpha peft used), ``model_seed`` the seed a random base (tiny-llama) is built with. The file keeps its flat
    keys (``method``, ``rank``, ``alpha``, ... beside ``base_model``): :meth:`to_dict` and :meth:`from_dict` map
    them.
    """

    adapter: AdapterConfig
    base_model: str
    task: str | None = None
    model_seed: int = 0
    dtype: str = "float32"
    lr: float | None = None
    step: int = 0
    extra: dict[str, Any] = field(default_factory=dict, hash=False)
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_config(
        cls,
        config: AdapterConfig,
        *,
        base_model: str,
        task: str | None = None,
        model_seed: int = 0,
        dtype: torch.dtype = torch.float32,
        lr: float | None = None,
        step: int = 0,
        extra: dict[str, Any] | None = None,
    ) -> CheckpointMeta:
        """The metadata of an adapter built from ``config`` on ``base_model``."""
        return cls(
            adapter=dataclasses.replace(config, alpha=config.lora_alpha),
            base_model=base_model,
            task=task,
            model_seed=model_seed,
            dtype=_dtype_name(dtype),
            lr=lr,
            step=step,
            extra=dict(extra or {}),
        )

    @property
    def torch_dtype(self) -> torch.dtype:
        """The torch dtype of ``dtype`` (what the base is built and reloads in)."""
        return _DTYPES[self.dtype]

    def to_dict(self) -> dict[str, Any]:
        """The flat ``hessian_lora.json`` document, keys in the order every version has written them."""
        adapter, own = asdict(self.adapter), asdict(self)
        own.pop("adapter")
        flat = {**adapter, **own, "targets": list(self.adapter.targets)}
        return {key: flat[key] for key in _META_ORDER}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckpointMeta:
        """Metadata from a ``hessian_lora.json`` document (keys it does not know, such as ``residual_sha256``,
        are left out)."""
        adapter_keys = {f.name for f in fields(AdapterConfig)}
        own_keys = {f.name for f in fields(cls)} - {"adapter"}
        adapter = {key: value for key, value in data.items() if key in adapter_keys}
        adapter["targets"] = tuple(adapter.get("targets", ()))
        return cls(
            adapter=AdapterConfig(**adapter), **{key: value for key, value in data.items() if key in own_keys}
        )


@dataclass(frozen=True)
class OptimizerState:
    """A saved AdamW state: ``state_dict`` as torch gives it, and the parameter name behind each index."""

    state_dict: dict[str, Any]
    param_names: tuple[str, ...]  # position i is the parameter torch numbers i in state_dict["state"]

    @property
    def step(self) -> int:
        """Optimizer steps taken: the largest ``step`` in the state (0 before any)."""
        steps = [int(state["step"]) for state in self.state_dict["state"].values() if "step" in state]
        return max(steps, default=0)

    @property
    def betas(self) -> tuple[float, float]:
        """Adam's (β₁, β₂) of the first parameter group."""
        beta1, beta2 = self.state_dict["param_groups"][0]["betas"]
        return float(beta1), float(beta2)

    @property
    def eps(self) -> float:
        """Adam's ε of the first parameter group."""
        return float(self.state_dict["param_groups"][0]["eps"])

    def by_name(self, key: str) -> dict[str, torch.Tensor]:
        """One per-parameter state entry (``exp_avg``, ``exp_avg_sq``) keyed by parameter name."""
        return {
            self.param_names[index]: state[key]
            for index, state in sorted(self.state_dict["state"].items())
            if key in state
        }


class LoadedCheckpoint(NamedTuple):
    """What :func:`load_checkpoint` returns: the adapted model, its tokenizer, the metadata and the optimizer
    state."""

    model: PeftModel
    tokenizer: PreTrainedTokenizerBase
    meta: CheckpointMeta
    optimizer_state: OptimizerState | None


def save_checkpoint(
    directory: str | os.PathLike[str],
    peft_model: PeftModel,
    meta: CheckpointMeta,
    *,
    optimizer: torch.optim.Optimizer | None = None,
) -> Path:
    """Write ``peft_model`` (built by :func:`hessian_lora.training.adapters.build_adapter` or loaded from a checkpoint).

    The directory appears whole or not at all: everything is written to a sibling temp directory first, then
    moved into place (an existing checkpoint there is replaced).
    """
    target = Path(directory)
    check_checkpoint_destination(target)
    config: AdapterConfig | None = getattr(peft_model, adapters.CONFIG_ATTRIBUTE, None)
    if config is None:
        raise UserError(
            "this model was not built by hessian_lora.training.adapters.build_adapter or load_checkpoint: "
            "build it with build_adapter so its initialisation is known."
        )
    if config.method != meta.adapter.method or config.rank != meta.adapter.rank:
        raise ValueError(
            f"meta says {meta.adapter.method} r={meta.adapter.rank} but the model is {config.method} r={config.rank}"
        )
    # Staged in a hidden sibling (same filesystem, so the final move is a rename), then swapped in whole.
    staging = temporary_path(target, directory=True)
    try:
        peft_model.save_pretrained(str(staging))
        _rewrite_adapter_config(staging / ADAPTER_CONFIG_FILE, meta)
        meta_data = meta.to_dict()
        if config.spec.rewrites_base:
            factors = getattr(peft_model, adapters.INITIAL_FACTORS_ATTRIBUTE)
            tensors = {}
            for name, (lora_a, lora_b) in factors.items():
                tensors[f"{name}.lora_A"] = lora_a.contiguous()
                tensors[f"{name}.lora_B"] = lora_b.contiguous()
            save_file(tensors, str(staging / INITIAL_ADAPTER_FILE), metadata={"format": "pt"})
            # A base cast to bf16 for training (hessian_lora.training.precision) reloads in fp32: the fp32 fingerprint.
            meta_data["residual_sha256"] = getattr(
                peft_model, FP32_RESIDUAL_DIGEST_ATTRIBUTE, None
            ) or residual_digest(peft_model)
        meta_data["trainable_parameters"] = sum(
            p.numel() for p in adapters.trainable_parameters(peft_model).values()
        )
        if optimizer is not None:
            torch.save(
                {
                    "state_dict": optimizer.state_dict(),
                    "param_names": _optimizer_param_names(peft_model, optimizer),
                },
                staging / OPTIMIZER_FILE,
            )
        (staging / META_FILE).write_text(json.dumps(meta_data, indent=2) + "\n", encoding="utf-8")
        if target.exists():
            check_checkpoint_destination(target)  # again: something may have appeared there while we wrote
        replace_directory(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load_checkpoint(
    directory: str | os.PathLike[str],
    *,
    device: str | torch.device | None = None,
    full_precision: bool = False,
) -> LoadedCheckpoint:
    """Rebuild the saved model (base, residual where the method rewrote it, adapter) in eval mode.

    Adapter parameters keep ``requires_grad`` so training and Hessian work can continue from here. The base loads
    in the dtype the checkpoint records (sweeps record the fp32 build, also when the base trained in bf16);
    ``full_precision=True`` (what Hessian measurements ask for) then casts a base recorded in bf16 or fp16 to
    fp32 after it was rebuilt and verified as saved.
    """
    path = Path(directory)
    meta_data = read_meta_dict(path)
    check_checkpoint_files(path)
    meta = CheckpointMeta.from_dict(meta_data)
    config = meta.adapter
    loaded = load_model(meta.base_model, dtype=meta.torch_dtype, device=device, seed=meta.model_seed)
    base = loaded.model
    # A base of another shape than the adapter's (the metadata names the wrong model) is one line, not peft's
    # size mismatch per tensor.
    fix = f"set base_model in {path / META_FILE} to the model the adapter was trained on, or re-create the checkpoint"
    adapter_config = schemas.read_json(
        path / ADAPTER_CONFIG_FILE, what="adapter config", fix=schemas.CHECKPOINT_FIX
    )
    check_adapter_fits_base(path, adapter_config, check_adapter_weights(path), base, meta.base_model, fix=fix)
    with torch.random.fork_rng(devices=adapters._cuda_device_indices(base)), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        try:
            peft_model = PeftModel.from_pretrained(base, str(path), is_trainable=True, low_cpu_mem_usage=True)
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:  # what the check above cannot foresee
            raise UserError(
                f"{path}: peft cannot load the adapter on {meta.base_model} ({first_problem(exc)}): {fix}."
            ) from exc
    initial_factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if config.spec.rewrites_base:
        initial_factors = _restore_residual(path, peft_model)
        expected = meta_data.get("residual_sha256")
        if expected is not None and residual_digest(peft_model) != expected:
            raise UserError(
                f"the base model {meta.base_model} differs from the one {path} was saved on: "
                "load the same base model (same files, dtype and seed)."
            )
    if full_precision and meta.torch_dtype in (torch.bfloat16, torch.float16):
        peft_model.float()  # exact: every bf16/fp16 value is an fp32 value
    setattr(peft_model, adapters.CONFIG_ATTRIBUTE, config)
    setattr(peft_model, adapters.INITIAL_FACTORS_ATTRIBUTE, initial_factors)
    peft_model.eval()
    optimizer_state = None
    if (path / OPTIMIZER_FILE).is_file():
        optimizer_state = read_optimizer_state(
            path / OPTIMIZER_FILE, map_location=next(peft_model.parameters()).device
        )
    return LoadedCheckpoint(peft_model, loaded.tokenizer, meta, optimizer_state)


def check_adapter_fits_base(
    directory: Path,
    peft_config: Mapping[str, Any],
    shapes: Mapping[str, tuple[int, ...]],
    base: torch.nn.Module,
    base_spec: str,
    *,
    fix: str = "pass the base the adapter was trained on with --model",
) -> None:
    """Refuse an adapter that does not fit ``base`` before peft tries: target modules the base lacks, and LoRA
    factors whose shapes differ from the base's layers (peft prints one size mismatch per tensor).

    Names: a ``target_modules`` list matches a module whose name is the entry or ends in ``.entry``, a string is
    a regular expression over full names (peft's rules). Shapes: ``lora_A`` is (r, in), ``lora_B`` (out, r) of
    the linear layer at the tensor's path; other tuners' tensors are left to peft (its error, on one line).
    ``fix`` ends each refusal (a checkpoint's names the base in its metadata, a plain directory's --model).
    """
    config_path = directory / ADAPTER_CONFIG_FILE
    linears = {name: module for name, module in base.named_modules() if isinstance(module, torch.nn.Linear)}
    targets = peft_config.get("target_modules")
    if isinstance(targets, str):
        if not any(re.fullmatch(targets, name) for name in linears):
            raise UserError(
                f"{config_path}: target_modules {targets!r} matches no linear layer of {base_spec}: {fix}."
            )
    elif targets:
        missing = [
            target
            for target in targets
            if not any(name == target or name.endswith(f".{target}") for name in linears)
        ]
        if missing:
            have = sorted({name.rsplit(".", 1)[-1] for name in linears})
            raise UserError(
                f"{config_path}: target_modules {', '.join(missing)} not in {base_spec} (its linear "
                f"layers: {', '.join(have)}): {fix}."
            )
    for key, shape in shapes.items():
        found = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[^.]+)?\.weight", key)
        if found is None or len(shape) != 2:
            continue
        module = linears.get(found.group(1))
        if module is None:
            raise UserError(
                f"{directory / ADAPTER_WEIGHTS_FILE}: tensor {key} adapts {found.group(1)}, which "
                f"{base_spec} does not have: {fix}."
            )
        side, expected = ("in", module.in_features) if found.group(2) == "A" else ("out", module.out_features)
        got = shape[1] if found.group(2) == "A" else shape[0]
        if got != expected:
            raise UserError(
                f"{directory / ADAPTER_WEIGHTS_FILE}: the adapter was saved for another base: "
                f"{found.group(1)} has {expected} {side}put features in {base_spec}, the adapter's "
                f"lora_{found.group(2)} {got}: {fix}."
            )


def first_problem(exc: BaseException) -> str:
    """peft's error as one line: its first informative line (a state-dict error lists one line per tensor)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = next(
        (line for line in lines if line.lower().startswith(("size mismatch", "missing key", "unexpected"))),
        lines[0] if lines else type(exc).__name__,
    )
    more = len(lines) - 2 if detail is not lines[0] else len(lines) - 1  # the header and the one shown
    return f"{type(exc).__name__}: {detail[:300].rstrip('.')}" + (
        f"; {more} more like it" if more > 0 else ""
    )


def check_adapter_weights(directory: str | os.PathLike[str]) -> dict[str, tuple[int, ...]]:
    """Shapes of the tensors in ``adapter_model.safetensors``; a missing, damaged or truncated file is a
    :class:`UserError` (:func:`check_safetensors`)."""
    path = Path(directory) / ADAPTER_WEIGHTS_FILE
    check_safetensors(path)
    with safe_open(str(path), framework="pt") as handle:
        return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118


def read_meta_dict(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw ``hessian_lora.json`` of a checkpoint (CheckpointMeta fields plus what save adds)."""
    path = Path(directory)
    if not path.is_dir():
        raise UserError(
            f"checkpoint directory {path} does not exist: pass a directory written by "
            "`hessian-lora init` or a training run."
        )
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise UserError(
            f"{path} is not a hessian-lora checkpoint (no {META_FILE}): pass a checkpoint directory."
        )

    data = schemas.read_json(meta_path, what="checkpoint metadata", fix=schemas.CHECKPOINT_FIX)
    version = data.get("format_version") if isinstance(data, dict) else None
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise UserError(f"{path} was written by a newer hessian-lora (format {version}): upgrade.")
    document = schemas.validate_document(
        schemas.CheckpointMetaDocument, data, source=str(meta_path), fix=schemas.CHECKPOINT_FIX
    )
    return document.model_dump()


def check_checkpoint_files(directory: str | os.PathLike[str]) -> None:
    """The adapter files a checkpoint needs are present and whole (a truncated safetensors file included)."""
    path = Path(directory)
    config = schemas.read_json(path / ADAPTER_CONFIG_FILE, what="adapter config", fix=schemas.CHECKPOINT_FIX)
    if not isinstance(config, dict):
        raise UserError(
            f"{path / ADAPTER_CONFIG_FILE} holds {type(config).__name__}, not an object: "
            f"{schemas.CHECKPOINT_FIX}"
        )
    for name in (ADAPTER_WEIGHTS_FILE, INITIAL_ADAPTER_FILE):
        file = path / name
        if name == INITIAL_ADAPTER_FILE and not file.exists():
            continue  # only base-rewriting methods have one; load_checkpoint says when it is missing
        check_safetensors(file)


def check_safetensors(file: Path) -> None:
    """``file`` is a complete safetensors file: its header parses and every tensor lies within the file."""
    if not file.is_file():
        raise UserError(f"{file} is missing: the checkpoint is incomplete; re-create it.")
    try:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118  (safe_open is not iterable)
                handle.get_slice(key)
    except Exception as exc:  # safetensors raises its own SafetensorError (header, size) and OSError
        raise UserError(
            f"{file} is truncated or damaged, not a complete safetensors file ({_first_line(exc)}): "
            "re-create or re-copy it."
        ) from exc


def read_optimizer_state(file: Path, *, map_location: Any = "cpu") -> OptimizerState:
    """``optimizer.pt`` as an :class:`OptimizerState`; a damaged file is a :class:`UserError`."""
    try:
        raw = torch.load(file, map_location=map_location, weights_only=True)
        state = OptimizerState(dict(raw["state_dict"]), tuple(str(name) for name in raw["param_names"]))
        if not isinstance(state.state_dict.get("state"), dict) or not state.state_dict.get("param_groups"):
            raise ValueError("no optimizer state_dict")
        state.betas, state.eps  # noqa: B018  (the fields Hessian work reads must be present)
    except (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        KeyError,
        TypeError,
        ValueError,
        IndexError,
        AttributeError,
        OSError,
    ) as exc:
        raise UserError(
            f"{file} is not a saved optimizer state ({_first_line(exc)}): the checkpoint is damaged; "
            "delete the file to use the checkpoint without it, or rerun the training run."
        ) from exc
    return state


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:160]}" if lines else type(exc).__name__


def adam_second_moments(
    loaded: LoadedCheckpoint | OptimizerState, *, bias_corrected: bool = False
) -> dict[str, torch.Tensor]:
    """Adam's ``exp_avg_sq`` per parameter name (divided by 1 − β₂^step when ``bias_corrected``)."""
    state = loaded.optimizer_state if isinstance(loaded, LoadedCheckpoint) else loaded
    if state is None:
        raise UserError(
            "this checkpoint holds no optimizer state: save it with the optimizer (a training run)."
        )
    moments = state.by_name("exp_avg_sq")
    if bias_corrected:
        _, beta2 = state.betas
        steps = {state.param_names[i]: int(s["step"]) for i, s in state.state_dict["state"].items()}
        moments = {name: value / (1.0 - beta2 ** steps[name]) for name, value in moments.items()}
    return moments


def live_optimizer_state(peft_model: nn.Module, optimizer: torch.optim.Optimizer) -> OptimizerState:
    """The optimizer's current state seen as a saved one (no copy: the tensors are the optimizer's own), so the
    readers of saved states (:func:`adam_second_moments`, the preconditioner) work on a running optimizer."""
    return OptimizerState(optimizer.state_dict(), tuple(_optimizer_param_names(peft_model, optimizer)))


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, peft_model: nn.Module, state: OptimizerState
) -> None:
    """Restore a saved state into an optimizer built by ``make_optimizer`` for the same adapter."""
    names = _optimizer_param_names(peft_model, optimizer)
    if tuple(names) != state.param_names:
        raise UserError(
            "the saved optimizer state belongs to other parameters: rebuild the optimizer with "
            "make_optimizer for the checkpoint's own model and method."
        )
    optimizer.load_state_dict(state.state_dict)


def _restore_residual(path: Path, peft_model: PeftModel) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    initial_path = path / INITIAL_ADAPTER_FILE
    if not initial_path.is_file():
        raise UserError(
            f"{path} lacks {INITIAL_ADAPTER_FILE}, which rebuilds the residual base: the checkpoint "
            "is incomplete, re-create it."
        )
    tensors = load_file(str(initial_path))
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, layer in adapters.progress(list(adapters.lora_layers(peft_model)), "residual base"):
        try:
            lora_a, lora_b = tensors[f"{name}.lora_A"], tensors[f"{name}.lora_B"]
        except KeyError as exc:
            raise UserError(
                f"{initial_path} has no initial factors for {name}: the checkpoint is damaged."
            ) from exc
        base = layer.get_base_layer()
        with torch.no_grad():
            base.weight.copy_(
                adapters.residual_weight(base.weight, lora_a, lora_b, layer.scaling[adapters.ADAPTER_NAME])
            )
        factors[name] = (lora_a, lora_b)
    return factors


def _optimizer_param_names(peft_model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Names in the order torch numbers parameters in a state_dict (groups in order, params in order)."""
    name_of = {id(param): name for name, param in peft_model.named_parameters()}
    names = []
    for group in optimizer.param_groups:
        for param in group["params"]:
            if id(param) not in name_of:
                raise ValueError("the optimizer holds a parameter that is not part of this model")
            names.append(name_of[id(param)])
    return names


def _rewrite_adapter_config(config_path: Path, meta: CheckpointMeta) -> None:
    # The adapter weights are final; an init recipe such as "pissa" would make from_pretrained redo the SVD and
    # rewrite the base weights a second time.
    data = json.loads(config_path.read_text(encoding="utf-8"))
    if data.get("peft_type", "LORA") == "LORA":  # GraLoRA and RandLoRA configs have no init recipe to undo
        data["init_lora_weights"] = True
        data.update(dict.fromkeys(PEFT_INIT_CONFIGS))  # the recipe's own settings (LoRA-GA's) go with it
    data["base_model_name_or_path"] = meta.base_model
    config_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def check_checkpoint_destination(directory: str | os.PathLike[str]) -> None:
    """Refuse a destination that is a file or a non-empty directory other than a checkpoint (it would be lost)."""
    target = Path(directory)
    if target.is_file():
        raise UserError(f"{target} is a file: choose a directory path for the checkpoint.")
    if target.is_dir() and not (target / META_FILE).is_file() and any(target.iterdir()):
        raise UserError(
            f"{target} exists and is not a hessian-lora checkpoint: choose another output directory."
        )


def _dtype_name(dtype: torch.dtype) -> str:
    for name, value in _DTYPES.items():
        if value == dtype:
            return name
    raise UserError(f"unsupported model dtype {dtype}: use one of {', '.join(_DTYPES)}.")


def is_checkpoint(directory: str | os.PathLike[str]) -> bool:
    """A hessian-lora checkpoint (``hessian_lora.json``), as opposed to a plain peft adapter directory. Anything
    at that name counts, so that a damaged one is reported as such rather than read as a plain peft directory."""
    return os.path.lexists(Path(directory) / META_FILE)
