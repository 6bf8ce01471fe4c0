"""Adam's preconditioner of an adapter, P = diag(√v̂ + ε), from its optimizer state: a checkpoint's saved state
or a live optimizer's (:func:`hessian_lora.training.checkpoint.live_optimizer_state`).

The engine's :func:`hessian_lora.hessian.preconditioned.preconditioned_sharpness` takes P's diagonal; this module
is where a training run's state becomes that diagonal, with each parameter's P divided by its group's learning
rate relative to the first group's (LoRA+ trains B faster than A), so λ₁(P⁻¹H) is measured in the units of the
first group's learning rate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from hessian_lora.core.errors import UserError
from hessian_lora.hessian.preconditioned import adam_preconditioner
from hessian_lora.methods.registry import METHODS
from hessian_lora.training.checkpoint import LoadedCheckpoint, OptimizerState, adam_second_moments


def checkpoint_preconditioner(
    loaded: LoadedCheckpoint, names: Sequence[str]
) -> tuple[torch.Tensor, dict[str, float]]:
    """P's diagonal for ``names`` from a loaded checkpoint's Adam state, and Adam's settings.

    Returns (diagonal, {"beta1", "eps", "step", "lr", "current_lr"}): ``lr`` is the run's learning rate from
    the checkpoint meta (the peak of its schedule), ``current_lr`` the first group's rate when it was saved.
    """
    state = loaded.optimizer_state
    if state is None:
        raise UserError(
            "the preconditioned sharpness needs a checkpoint saved with its optimizer state (a training run)."
        )
    meta = loaded.meta
    diagonal, settings = optimizer_preconditioner(state, names, meta=meta)
    if meta.lr is not None:
        settings["lr"] = float(meta.lr)
    return diagonal, settings


def optimizer_preconditioner(
    state: OptimizerState, names: Sequence[str], *, meta: object = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """P's diagonal for ``names`` from an Adam state (saved, or live through
    :func:`hessian_lora.training.checkpoint.live_optimizer_state`), each parameter's P divided by its group's learning
    rate relative to the first group's (LoRA+), and Adam's settings {"beta1", "eps", "step", "lr",
    "current_lr"} (``lr`` = ``current_lr``, the first group's rate; ``meta`` supplies the LoRA+ ratio when every
    rate is zero, see :func:`_group_ratios`)."""
    moments = adam_second_moments(state, bias_corrected=True)
    beta1, _ = state.betas
    groups = state.state_dict["param_groups"]
    reference_lr = float(groups[0]["lr"])
    ratios: dict[str, float] = {}
    for group, ratio in zip(groups, _group_ratios(groups, meta)):
        for index in group["params"]:
            ratios[state.param_names[index]] = ratio
    diagonal = adam_preconditioner(moments, names, eps=state.eps, lr_ratios=ratios)
    settings = {
        "beta1": beta1,
        "eps": state.eps,
        "step": float(state.step),
        "lr": reference_lr,
        "current_lr": reference_lr,
    }
    return diagonal, settings


def _group_ratios(groups: Sequence[Mapping[str, object]], meta: object) -> list[float]:
    """Each parameter group's learning rate relative to the first group's.

    Schedulers scale every group alike, so the current rates give the ratios, unless they have all decayed to
    zero (the last step of a cosine schedule): then a scheduler's ``initial_lr`` does, or, for LoRA+, the
    method's ratio (``make_optimizer`` puts the fast group second).
    """
    current = [float(group["lr"]) for group in groups]  # type: ignore[arg-type]  # a param group's values are typed object; lr is a float
    if current[0] > 0:
        return [lr / current[0] for lr in current]
    initial = [float(group.get("initial_lr", 0.0)) for group in groups]  # type: ignore[arg-type]  # a param group's values are typed object; lr is a float
    if initial[0] > 0:
        return [lr / initial[0] for lr in initial]
    spec = METHODS.get(str(getattr(meta, "method", None)))
    if spec is not None and spec.group_lr_ratios is not None:
        ratios = list(spec.group_lr_ratios(meta))  # type: ignore[arg-type]  # meta is the run's AdapterConfig here
        if len(ratios) == len(groups):
            return ratios
    return [1.0] * len(groups)
