"""Building adapters: the one factory that puts a method's adapter on a freshly loaded base model
(:func:`adapter_at_initialisation`), and :func:`build_adapter`, which asks the method's plug-in
(:mod:`hessian_lora.methods`) for its peft config and initialisation and branches on no method's name.

W is out×in, A is r×in, B is out×r, s is the LoRA scale (alpha/r, or alpha/sqrt(r) for rsLoRA), ΔW = s·B·A.

Methods that rewrite the base weights (PiSSA, MiLoRA, Init[AB], OLoRA, LoRA-GA) set W ← W − s·B₀·A₀ IN PLACE on
the model passed to :func:`build_adapter`: callers must pass a freshly loaded base model for every adapter.
Whatever the method computed, the residual is recomputed here by one fixed recipe (:func:`residual_weight`):
float64 arithmetic in a fixed order over the rank, elementwise only, rounded once to the weight's dtype. That is
more accurate than an fp32 matmul and, given the same base weights and the same A₀, B₀, it gives the same bits on
any machine and device, which is what lets a checkpoint store only A₀, B₀ (kilobytes) instead of the rewritten
weights (hundreds of megabytes) and still reload bit for bit.

:func:`make_optimizer` lives here too: a method whose definition is partly its optimizer (LoRA+'s groups, LoFT)
says so in its spec.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, TypeVar

import torch
from peft import PeftConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from hessian_lora.core.errors import UserError
from hessian_lora.hessian.loss import loss_sum
from hessian_lora.inputs.models import HESSIAN_SAFE_ATTENTION, LoadedModel, load_model
from hessian_lora.inputs.tasks import Example, TokenBatch
from hessian_lora.methods.spec import BuildContext

# The adapter's definition lives with the other settings (torch-free); re-exported for callers of this module.
from hessian_lora.settings.adapter import DEFAULT_TARGETS as DEFAULT_TARGETS
from hessian_lora.settings.adapter import AdapterConfig as AdapterConfig
from hessian_lora.settings.training import DEFAULT_BETAS
from hessian_lora.training.train import global_batches

if TYPE_CHECKING:
    from hessian_lora.training.train import TrainConfig

T = TypeVar("T")
ADAPTER_NAME = "default"
# Attribute names under which build_adapter leaves what a checkpoint needs on the PeftModel it returns.
CONFIG_ATTRIBUTE = "hessian_lora_config"
_RESIDUAL_BLOCK_ELEMENTS = 1 << 17
INITIAL_FACTORS_ATTRIBUTE = "hessian_lora_initial_factors"


def build_adapter(
    model: nn.Module, config: AdapterConfig, *, batches: Sequence[TokenBatch] | None = None
) -> PeftModel:
    """Wrap ``model`` in a peft adapter initialised by ``config.method``, deterministic per ``config.seed``.

    The method's spec (:mod:`hessian_lora.methods`) says how: its peft config, its ``prepare`` hook on the base
    model (LoRA-GA's gradients), its ``initialise`` hook on the peft model (MiLoRA's and Init[AB]'s factors).
    Rewriting methods change ``model``'s weights in place: pass a fresh base model. Methods that read data
    (LoRA-GA) need ``batches``: training batches (LoRA-GA's gradient estimate is the gradient of their global
    per-token mean loss).

    Args:
        model: the base model (a fresh one for methods that rewrite it).
        config: the adapter to build.
        batches: training batches, for methods whose spec says ``needs_data``.

    Returns:
        The adapted model in eval mode, carrying its config and (rewriting methods) its initial factors.

    Raises:
        UserError: the method cannot be built on this model, rank, dtype or without data.
    """
    spec = config.spec
    linear_shapes = _target_linear_shapes(model, config.targets)
    _check_rank_fits(config, linear_shapes)
    spec.check_rank(config.rank)
    spec.check_shapes(config.rank, linear_shapes)
    if spec.needs_data and not batches:
        raise UserError(
            f"method {config.method} initialises from data: pass training batches "
            "(the CLI takes them from --task)."
        )
    _check_dtype_supported(model, config)
    # Rewriting methods keep the untouched weights so the residual is recomputed by one exact recipe.
    originals = _snapshot_target_weights(model, config.targets) if config.spec.rewrites_base else {}
    with torch.random.fork_rng(devices=_cuda_device_indices(model)):
        torch.manual_seed(config.seed)
        lora_config = _peft_config(
            config,
            causal_lm=hasattr(model, "prepare_inputs_for_generation"),
            shapes=list(linear_shapes.values()),
        )
        context = BuildContext(
            config=config,
            model=model,
            peft_config=lora_config,
            batches=batches,
            layers=lambda: list(lora_layers(context.model)),
            adapter_name=ADAPTER_NAME,
            progress=progress,
            loss=loss_sum,
        )
        if spec.prepare is not None:
            spec.prepare(context)
        with warnings.catch_warnings():
            # peft 0.21 calls a transformers 5 method that was renamed; the warning is theirs, not the user's.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            peft_model = get_peft_model(model, lora_config)
        if spec.initialise is not None:
            context.model = peft_model
            spec.initialise(context)
    initial_factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if config.spec.rewrites_base:
        for name, layer in progress(list(lora_layers(peft_model)), "residual base"):
            lora_a = layer.lora_A[ADAPTER_NAME].weight
            lora_b = layer.lora_B[ADAPTER_NAME].weight
            initial_factors[name] = (lora_a.detach().cpu().clone(), lora_b.detach().cpu().clone())
            base = layer.get_base_layer()
            with torch.no_grad():
                base.weight.copy_(
                    residual_weight(
                        originals[name].to(base.weight.device), lora_a, lora_b, layer.scaling[ADAPTER_NAME]
                    )
                )
    setattr(peft_model, CONFIG_ATTRIBUTE, config)
    setattr(peft_model, INITIAL_FACTORS_ATTRIBUTE, initial_factors)
    peft_model.eval()
    return peft_model


# LoRA-GA's data: batches, or a function that makes them from the base model's tokenizer (called only when the
# method needs data, so the other methods never load a task).
InitBatches = Sequence[TokenBatch] | Callable[[PreTrainedTokenizerBase], Sequence[TokenBatch]]


class AdapterAtInit(NamedTuple):
    """What :func:`adapter_at_initialisation` built: the adapted model, its tokenizer, LoRA-GA's batches (or None)."""

    model: PeftModel
    tokenizer: PreTrainedTokenizerBase
    init_batches: list[TokenBatch] | None


def adapter_at_initialisation(
    model: str | LoadedModel,
    config: AdapterConfig,
    *,
    model_seed: int = 0,
    attention: str = HESSIAN_SAFE_ATTENTION,
    device: str | torch.device | None = None,
    init_batches: InitBatches | None = None,
    train_examples: Sequence[Example] | None = None,
    train_config: TrainConfig | None = None,
) -> AdapterAtInit:
    """THE way to get ``config``'s adapter at initialisation: load the base ``model`` and build the adapter on it.

    Args:
        model: a model spec (``smollm2-135m``, ``tiny-llama``, a directory, ...) loaded fresh here, or a
            :class:`~hessian_lora.inputs.models.LoadedModel` whose weights nobody else uses (rewriting methods change
            them in place).
        config: the adapter to build.
        model_seed: the weights of a random base (tiny-llama) loaded from a spec.
        attention: the attention kernels a spec is loaded with.
        device: where a spec is loaded.
        init_batches: LoRA-GA's gradient batches, or a function of the tokenizer that makes them.
        train_examples: instead of ``init_batches``, LoRA-GA estimates its gradient on the first global batch that
            training with ``train_config`` on these examples would take (the sweep's rule).
        train_config: the training run whose first global batch that is.
    """
    reuse = _REUSE if isinstance(model, str) else None  # a LoadedModel is the caller's: always built on it
    key = (model, model_seed, attention, str(device), repr(config))  # repr: targets may be a list
    if reuse is not None and not config.spec.needs_data and key in reuse.entries:
        return reuse.copy_of(key)
    loaded = (
        model
        if isinstance(model, LoadedModel)
        else load_model(model, device=device, seed=model_seed, attn_implementation=attention)
    )
    clock = time.perf_counter()  # the build alone: worth a copy when it decomposes or needs gradients
    batches: list[TokenBatch] | None = None
    if config.spec.needs_data:
        batches = _init_batches(loaded.tokenizer, init_batches, train_examples, train_config)
        if reuse is not None:
            key = (*key, _fingerprint(batches))
            if key in reuse.entries:
                return reuse.copy_of(key)
    peft_model = build_adapter(loaded.model, config, batches=batches)
    built = AdapterAtInit(peft_model, loaded.tokenizer, batches)
    if reuse is not None and time.perf_counter() - clock > REUSE_MIN_BUILD_SECONDS:
        reuse.keep(key, built)
    return built


# ----------------------------------------------------------------------------------------------------------
# Reusing adapters at initialisation within a sweep

REUSE_MIN_BUILD_SECONDS = (
    1.0  # a copy of SmolLM2 with an r=64 adapter takes 0.26 s; LoRA's load + build 0.46 s
)
REUSE_BUDGET_BYTES = 4 << 30  # the most kept by default: SmolLM2's demo keeps 4 methods' copies, ~2.4 GiB
REUSE_BUDGET_VARIABLE = "HESSIAN_LORA_REUSE_GIB"


def reuse_budget_bytes() -> int:
    """Memory for kept adapters: ``HESSIAN_LORA_REUSE_GIB`` (0 keeps none), else a quarter of the machine's
    memory up to :data:`REUSE_BUDGET_BYTES` (an 8 GB laptop keeps 2 GiB: the copies sit beside the model that
    trains, and the demo peaked at 11.2 GB resident with 4 GiB allowed)."""
    text = os.environ.get(REUSE_BUDGET_VARIABLE, "").strip()
    if text:
        try:
            gib = float(text)
        except ValueError:
            gib = math.nan
        if not gib >= 0 or math.isinf(gib):
            raise UserError(
                f"{REUSE_BUDGET_VARIABLE}={text}: give the memory for kept adapters in GiB, a number "
                f">= 0 (0 keeps none)."
            )
        return int(gib * (1 << 30))
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): the fixed default
        return REUSE_BUDGET_BYTES
    return min(REUSE_BUDGET_BYTES, total // 4)


@dataclass
class _Reuse:
    """Pristine copies of adapters at initialisation (never handed out themselves).

    Full is full: a build that does not fit the budget is not kept, and nothing is evicted. A sweep visits its
    methods in the same order again and again (centres, then each round's runs method by method), and
    least-recently-used eviction would then drop exactly the copy needed next: measured on the SmolLM2 demo,
    every method's first run missed and rebuilt.
    """

    budget_bytes: int
    entries: dict[tuple[Hashable, ...], AdapterAtInit] = field(default_factory=dict)
    held_bytes: int = 0

    def copy_of(self, key: tuple[Hashable, ...]) -> AdapterAtInit:
        kept = self.entries[key]
        # The tokenizer is shared (nothing mutates it); model and LoRA-GA batches are the caller's to change.
        return AdapterAtInit(copy.deepcopy(kept.model), kept.tokenizer, copy.deepcopy(kept.init_batches))

    def keep(self, key: tuple[Hashable, ...], built: AdapterAtInit) -> None:
        size = _bytes(built.model)
        if self.held_bytes + size > self.budget_bytes:
            return
        self.entries[key] = AdapterAtInit(
            copy.deepcopy(built.model), built.tokenizer, copy.deepcopy(built.init_batches)
        )
        self.held_bytes += size


_REUSE: _Reuse | None = None


@contextlib.contextmanager
def reuse_adapters_at_init(budget_bytes: int | None = None) -> Iterator[None]:
    """Within this block, :func:`adapter_at_initialisation` keeps a copy of every adapter it builds from a model
    spec whose build (model load aside) took over :data:`REUSE_MIN_BUILD_SECONDS` (the SVD-initialised methods and
    LoRA-GA: 3-16 s each for SmolLM2 at r = 64 on every projection), and answers a later call with the same model,
    adapter config (and LoRA-GA batches) with a copy of it: the same bits, without decomposing again (nor loading the
    model, except for LoRA-GA, whose key includes batches made with the model's tokenizer). Builds that
    would take the copies past ``budget_bytes`` are not kept (SmolLM2-135M with r = 64 on every projection: ~0.6
    GiB a copy; default :func:`reuse_budget_bytes`). A sweep wraps its centres and local runs in one.
    Nested blocks share the outer one."""
    global _REUSE
    if _REUSE is not None:
        yield
        return
    _REUSE = _Reuse(reuse_budget_bytes() if budget_bytes is None else budget_bytes)
    try:
        yield
    finally:
        _REUSE = None


def _fingerprint(batches: Sequence[TokenBatch] | None) -> str:
    digest = hashlib.sha1()
    for batch in batches or ():
        for tensor in (batch.input_ids, batch.attention_mask, batch.labels):
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _bytes(model: nn.Module) -> int:
    """Bytes of the model's distinct storages (tied embeddings once)."""
    storages = {
        tensor.untyped_storage().data_ptr(): tensor.untyped_storage().nbytes()
        for tensor in model.state_dict().values()
    }
    return sum(storages.values())


def _init_batches(
    tokenizer: PreTrainedTokenizerBase,
    init_batches: InitBatches | None,
    train_examples: Sequence[Example] | None,
    train_config: TrainConfig | None,
) -> list[TokenBatch] | None:
    if init_batches is not None:
        return list(init_batches(tokenizer) if callable(init_batches) else init_batches)
    if train_examples is not None and train_config is not None:
        return next(global_batches(tokenizer, train_examples, train_config))
    return None  # build_adapter says what is missing


def residual_weight(
    weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float
) -> torch.Tensor:
    """W − s·B·A in float64, rounded once to W's dtype; bit-reproducible on any device.

    The product of two fp32 (or bf16/fp16) numbers is exact in float64, so a fused or unfused multiply-add gives
    the same bits, and the rank-1 terms are added in a fixed order by elementwise kernels: no BLAS reduction,
    whose order depends on the CPU's instruction set, the thread count or the device. Rows go in blocks of about
    a megabyte so the float64 accumulator stays in cache.
    """
    lora_a64 = lora_a.detach().to(device=weight.device, dtype=torch.float64)
    lora_b64 = lora_b.detach().to(device=weight.device, dtype=torch.float64)
    out_features, in_features = weight.shape
    result = torch.empty_like(weight, memory_format=torch.contiguous_format)
    rows = max(1, _RESIDUAL_BLOCK_ELEMENTS // in_features)
    for start in range(0, out_features, rows):
        stop = min(start + rows, out_features)
        update = torch.zeros((stop - start, in_features), dtype=torch.float64, device=weight.device)
        block_b = lora_b64[start:stop]
        for k in range(lora_a64.shape[0]):
            update.addcmul_(block_b[:, k, None], lora_a64[None, k, :])
        exact = weight[start:stop].detach().to(torch.float64) - float(scaling) * update
        result[start:stop] = exact.to(weight.dtype)
    return result


def lora_layers(peft_model: nn.Module) -> Iterator[tuple[str, LoraLayer]]:
    """(base-model module name, peft LoRA layer) for every adapted module, in model order."""
    base = peft_model.get_base_model() if isinstance(peft_model, PeftModel) else peft_model
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer) and ADAPTER_NAME in module.lora_A:
            yield name, module


def progress(items: list[T], description: str) -> list[T] | Iterator[T]:
    """A tqdm bar on stderr when it is a terminal (SmolLM2's 210 float64 SVDs take most of a minute)."""
    return tqdm(items, desc=description, disable=None, leave=False, file=sys.stderr)


def trainable_parameters(peft_model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters training updates (lora_A, lora_B, DoRA magnitudes), by name, in model order."""
    return {name: param for name, param in peft_model.named_parameters() if param.requires_grad}


def make_optimizer(
    peft_model: nn.Module,
    config: AdapterConfig,
    lr: float,
    *,
    betas: tuple[float, float] = DEFAULT_BETAS,
    weight_decay: float = 0.0,
    eps: float = 1e-8,
    max_grad_norm: float | None = None,
) -> torch.optim.Optimizer:
    """The method's own optimizer when its spec has one (LoRA+'s two AdamW groups, the LoFT optimizer), else AdamW
    over the trainable parameters.

    ``max_grad_norm`` matters to LoFT only: it clips the full-weight view of the gradient itself
    (``optimizer.clips_gradients`` is True, and the training loop then leaves the factor gradients alone);
    AdamW's clipping is the training loop's.

    Args:
        peft_model: the adapted model.
        config: its adapter (the method, LoRA+'s ratio).
        lr: the learning rate.
        betas: Adam's betas.
        weight_decay: decoupled weight decay.
        eps: Adam's epsilon.
        max_grad_norm: LoFT's clipping norm.

    Returns:
        The optimizer.

    Raises:
        UserError: a learning rate that is not positive.
    """
    if lr <= 0:
        raise UserError(f"learning rate must be positive, got {lr}.")
    if config.spec.make_optimizer is not None:
        return config.spec.make_optimizer(
            peft_model,
            config,
            lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            max_grad_norm=max_grad_norm,
        )
    params = trainable_parameters(peft_model)
    return torch.optim.AdamW(list(params.values()), lr=lr, betas=betas, weight_decay=weight_decay, eps=eps)


def _peft_config(
    config: AdapterConfig, *, causal_lm: bool = True, shapes: Sequence[tuple[int, int]] = ()
) -> PeftConfig:
    # A plain nn.Module (tests, toy problems) gets the generic PeftModel; language models the causal-LM one.
    return config.spec.peft_config(config, "CAUSAL_LM" if causal_lm else None, shapes)


def _check_dtype_supported(model: nn.Module, config: AdapterConfig) -> None:
    """Say why a method cannot be built on this model's dtype, instead of peft's TypeError mid-build."""
    dtype = next(model.parameters()).dtype
    if not config.spec.float64 and dtype == torch.float64:
        raise UserError(
            f"method {config.method} cannot be initialised on a float64 model: peft builds it in "
            "float32, float16 or bfloat16 only; load the model in float32 (e.g. for a float64 "
            "Hessian, build in float32 and cast the adapted model with .double() afterwards)."
        )


def _target_linear_shapes(model: nn.Module, targets: Sequence[str]) -> dict[str, tuple[int, int]]:
    """(out, in) of every nn.Linear whose last name component is a target; every target must match one."""
    shapes: dict[str, tuple[int, int]] = {}
    found: set[str] = set()
    linear_names: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            leaf = name.rsplit(".", 1)[-1]
            linear_names.add(leaf)
            if leaf in targets:
                shapes[name] = (module.out_features, module.in_features)
                found.add(leaf)
    missing = [t for t in targets if t not in found]
    if missing:
        raise UserError(
            f"target module(s) {', '.join(missing)} not in the model: choose from "
            f"{', '.join(sorted(linear_names - {'lm_head'}))}."
        )
    return shapes


def _check_rank_fits(config: AdapterConfig, shapes: dict[str, tuple[int, int]]) -> None:
    # SVD/QR methods take r (LoRA-GA: 2r, its spec's components_per_rank) components of a matrix with
    # min(out, in) of them. Every other method: a rank above min(out, in) adds parameters but no expressivity (and
    # a typo such as 100000000000 would otherwise end in an allocation failure).
    needed = config.spec.components_per_rank
    smallest = min(min(shape) for shape in shapes.values())
    if needed * config.rank > smallest:
        raise UserError(
            f"{config.method} needs {needed}*rank <= {smallest} (the smallest target dimension), "
            f"got rank {config.rank}: lower --rank or drop the small target modules."
        )


def _snapshot_target_weights(model: nn.Module, targets: Sequence[str]) -> dict[str, torch.Tensor]:
    return {
        name: module.weight.detach().cpu().clone()
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in targets
    }


def _cuda_device_indices(model: nn.Module) -> list[int]:
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})


# Bit patterns read as integers of the same width, for a fingerprint that sums weights exactly.
_SAME_SIZE_INT = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def residual_digest(peft_model: nn.Module) -> str:
    """A fingerprint of the base weights of every adapted module (a changed base model changes it).

    Per module: name, dtype, shape, and integer sums of the weights' bit patterns (total, and row and column
    sums weighted by position, wrapping in int64). SHA-256 over the ~425 MB of SmolLM2's seven projections took
    2.6 s; these reductions take a fraction of that and still catch any single changed weight.
    """
    digest = hashlib.sha256()
    for name, layer in lora_layers(peft_model):
        weight = layer.get_base_layer().weight.detach().contiguous()
        bits = weight.view(_SAME_SIZE_INT[weight.element_size()]).reshape(weight.shape[0], -1)
        row_sums = bits.sum(dim=1, dtype=torch.int64)
        column_sums = bits.sum(dim=0, dtype=torch.int64)
        rows = torch.arange(1, row_sums.numel() + 1, device=bits.device, dtype=torch.int64)
        columns = torch.arange(1, column_sums.numel() + 1, device=bits.device, dtype=torch.int64)
        sums = (int(row_sums.sum()), int((row_sums * rows).sum()), int((column_sums * columns).sum()))
        digest.update(f"{name}|{weight.dtype}|{tuple(weight.shape)}|{sums}\n".encode())
    return digest.hexdigest()
