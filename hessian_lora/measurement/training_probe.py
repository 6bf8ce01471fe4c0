"""Sharpness along training: λ_max of the loss Hessian and Adam's preconditioned sharpness λ₁(P⁻¹H), measured
inside a training run every few optimizer steps.

A :class:`SharpnessProbe` holds a fixed probe set (a few batches) and is called by the training loop
(:func:`hessian_lora.training.train.train`'s ``probe``; the transformers callback in
:mod:`hessian_lora.measurement.trainer_callback`) after every optimizer step with the optimizer itself. When a step is
due (step 0, every ``every`` steps, and the last step) it measures, on the live parameters:

- λ_max: the largest eigenvalue of the Hessian of the probe set's token-mean loss w.r.t. the adapter (Lanczos by
  default, any warm-starting solver of the table, :mod:`hessian_lora.settings.solvers`; relative residual ``tol``);
- λ̃ = λ₁(P⁻¹H), P = diag(√v̂ + ε), from the *live* AdamW state: v̂ = ``exp_avg_sq`` / (1 − β₂^step) of the
  same step as the parameters (nothing is saved or reloaded). LoRA+ groups count through each parameter's own
  learning rate (:func:`hessian_lora.measurement.preconditioning.optimizer_preconditioner`). At step 0 Adam has no
  state: λ̃ is None.

Each solve starts from the previous probe's top Ritz vector (warm start) with a random component mixed in
(:func:`hessian_lora.hessian.starts.with_random`): the top eigenvector moves little over a few steps, so a probe
costs a handful of Hessian-vector products instead of a cold Lanczos run, and a new eigenvalue overtaking the old
top is still in the Krylov space.

A probe changes nothing the training sees: dropout is off during the products and the modules' train/eval flags
and ``requires_grad`` flags are restored (:func:`~hessian_lora.hessian.operator.only_block_trainable`); the torch
CPU and CUDA RNG states and Python's ``random`` state are saved and restored around it; ``.grad`` fields and the
optimizer state are not touched (products go through ``torch.autograd.grad``). A run with probes ends with
bit-identical weights to one without (tests/measurement/test_training_probe.py).

Edge of stability (Cohen et al. 2021, 2022): gradient descent is stable while λ_max·η < 2; Adam while
λ̃·η < (2 + 2β₁)/(1 − β₁) (38 at β₁ = 0.9). :func:`stability_ratios` gives both ratios per point, with η the
learning rate of the update that follows the measurement (the schedule's value there).
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hessian_lora.core.errors import UserError
from hessian_lora.hessian.filters import ParameterBlock, PerModule, WholeAdapter
from hessian_lora.hessian.operator import HessianOperator, ScaledOperator
from hessian_lora.hessian.results import EigenResult
from hessian_lora.hessian.starts import start_vectors
from hessian_lora.hessian.thresholds import stability_ratios as stability_ratios  # re-exported with the probe
from hessian_lora.inputs.tasks import TokenBatch
from hessian_lora.measurement.preconditioning import optimizer_preconditioner
from hessian_lora.settings import solvers
from hessian_lora.settings.measurement import DuringSettings
from hessian_lora.training.checkpoint import live_optimizer_state
from hessian_lora.training.precision import check_hessian_precision


@dataclass(frozen=True)
class SharpnessPoint:
    """One probe: after ``step`` optimizer steps, before the update at learning rate ``lr`` (first group)."""

    step: int
    lambda_max: float | None
    preconditioned: float | None
    lr: float | None
    hvps: int
    precond_hvps: int
    seconds: float
    converged: bool
    residual: float | None = None
    precond_residual: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The probe's results as JSON-able data (``sharpness.json``)."""
        return dataclasses.asdict(self)


@contextlib.contextmanager
def preserved_rng(device: torch.device | None = None) -> Iterator[None]:
    """Save and restore torch's CPU RNG, every CUDA device's RNG and Python's ``random`` around a block."""
    cpu = torch.get_rng_state()
    cuda = (
        torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    )
    python = random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        random.setstate(python)


class SharpnessProbe:
    """λ_max and λ₁(P⁻¹H) of ``model``'s adapter on ``batches``, measured when :meth:`__call__` is due.

    ``total_steps`` (optional) adds a probe at the last step. ``lr_ratios``: each parameter group's learning
    rate relative to the first (None: read from the optimizer; see
    :func:`hessian_lora.measurement.preconditioning.optimizer_preconditioner`); ``meta`` gives that function the
    method (LoRA+ ratio) when every group's rate is zero. :attr:`history` holds the points measured so far.

    Args:
        model: the model being trained (fp32 or float64); its trainable parameters are the adapter.
        batches: the probe's batches (at least one).
        settings: when and how to probe (None: :class:`DuringSettings`' defaults).
        total_steps: the run's last step, probed too (None: no extra probe).
        meta: the checkpoint metadata that names the method, for the LoRA+ ratio (None: none).

    Raises:
        UserError: no batches, or a model in bf16/fp16.
    """

    def __init__(
        self,
        model: nn.Module,
        batches: Sequence[TokenBatch],
        settings: DuringSettings | None = None,
        *,
        total_steps: int | None = None,
        meta: object = None,
    ) -> None:
        check_hessian_precision(model, what="the training model")
        self.model = model
        self.batches = list(batches)
        if not self.batches:
            raise UserError("the sharpness probe needs at least one batch: raise hessian.during.samples.")
        self.settings = settings if settings is not None else DuringSettings()
        self.total_steps = total_steps
        self.meta = meta
        self.history: list[SharpnessPoint] = []
        self._vectors: dict[tuple[str, str], torch.Tensor] = {}  # (kind, block) -> previous top Ritz vector

    def due(self, step: int) -> bool:
        """Whether a probe is due after ``step`` optimizer steps (every ``every`` steps, and at the last)."""
        if self.history and self.history[-1].step == step:
            return False
        return step % self.settings.every == 0 or (self.total_steps is not None and step == self.total_steps)

    def __call__(
        self, step: int, optimizer: torch.optim.Optimizer | None = None, lr: float | None = None
    ) -> SharpnessPoint | None:
        """Measure at optimizer step ``step`` if due (else None). ``lr``: the learning rate of the next update
        (default: the first group's current rate)."""
        if not self.due(step):
            return None
        point = self.measure(step, optimizer, lr)
        self.history.append(point)
        return point

    def measure(
        self, step: int, optimizer: torch.optim.Optimizer | None = None, lr: float | None = None
    ) -> SharpnessPoint:
        """One probe now, whether due or not (not recorded in :attr:`history`)."""
        began = time.perf_counter()
        if lr is None and optimizer is not None:
            lr = float(optimizer.param_groups[0]["lr"])
        with preserved_rng(), torch.no_grad():
            blocks = self._blocks()
            state = _live_state(self.model, optimizer)
            lambdas, residuals, precond, precond_residuals = [], [], [], []
            hvps = precond_hvps = 0
            converged = True
            for block in blocks:
                operator = HessianOperator(
                    self.model,
                    self.batches,
                    block,
                    backend=self.settings.backend,
                    dora_norm=self.settings.dora_norm,
                )
                eigen = self._solve(operator, ("H", block.name), solvers.get(self.settings.solver))
                hvps += eigen.hvps
                converged = converged and eigen.converged
                if eigen.largest:
                    lambdas.append(eigen.largest[0])
                    residuals.append(eigen.largest_residuals[0])
                if self.settings.preconditioned and state is not None:
                    diagonal, _ = optimizer_preconditioner(state, block.names, meta=self.meta)
                    scaled = ScaledOperator(operator, diagonal.double().rsqrt())
                    result = self._solve(
                        scaled, ("P", block.name), solvers.preconditioned_solver(self.settings.solver)
                    )
                    precond_hvps += result.hvps
                    converged = converged and result.converged
                    if result.largest:
                        precond.append(result.largest[0])
                        precond_residuals.append(result.largest_residuals[0])
                del operator
        top = max(range(len(lambdas)), key=lambdas.__getitem__) if lambdas else None
        ptop = max(range(len(precond)), key=precond.__getitem__) if precond else None
        return SharpnessPoint(
            step=step,
            lambda_max=lambdas[top] if top is not None else None,
            preconditioned=precond[ptop] if ptop is not None else None,
            lr=lr,
            hvps=hvps,
            precond_hvps=precond_hvps,
            seconds=time.perf_counter() - began,
            converged=converged,
            residual=residuals[top] if top is not None else None,
            precond_residual=precond_residuals[ptop] if ptop is not None else None,
        )

    def to_dict(self, *, beta1: float | None = None, peak_lr: float | None = None) -> dict[str, Any]:
        """The ``runs/<run_id>/sharpness.json`` document."""
        return {
            "settings": self.settings.to_dict(),
            "beta1": beta1,
            "peak_lr": peak_lr,
            "history": [point.to_dict() for point in self.history],
        }

    def _blocks(self) -> list[ParameterBlock]:
        chooser = WholeAdapter() if self.settings.blocks == "whole" else PerModule(None, None)
        return chooser.blocks(self.model)

    def _solve(self, operator: Any, key: tuple[str, str], spec: solvers.SolverSpec) -> EigenResult:
        """The top eigenvalue of ``operator`` by ``spec``'s solver, warm-started from the vector ``key`` kept."""
        s = self.settings
        previous = self._vectors.get(key) if s.warm_start else None
        # The previous probe's vector with a random component mixed in (hessian/starts.py): a top that has moved
        # off it (a new eigenvalue overtaking) still grows out of the Krylov space; another size: random.
        start = start_vectors(operator, "previous", previous=previous, seed=s.seed + len(self.history)).rows
        result = spec.run(
            operator,
            solvers.SolveRequest(
                k=1, which="largest", tol=s.tol, max_iter=s.max_iter, seed=s.seed, start=start
            ),
        )
        if result.largest_vectors is not None and len(result.largest_vectors):
            self._vectors[key] = result.largest_vectors[0].detach().clone()
        return result


def _live_state(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> Any:
    """The optimizer's Adam state as a :class:`~hessian_lora.training.checkpoint.OptimizerState`, or None before the
    first step (or for an optimizer without ``exp_avg_sq``)."""
    if optimizer is None:
        return None

    state = live_optimizer_state(model, optimizer)
    entries = state.state_dict["state"]
    if not entries or not all("exp_avg_sq" in entry and "step" in entry for entry in entries.values()):
        return None
    return state
