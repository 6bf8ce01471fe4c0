from __future__ import annotations

import json
import math

import pytest
import torch

from hessian_lora.hessian import (
    BlockReport,
    DenseOperator,
    EigenReport,
    EigenResult,
    PreconditionedResult,
    hutchplusplus,
    lanczos,
    spectral_density,
)


def _block_report() -> BlockReport:
    operator = DenseOperator(torch.diag(torch.tensor([3.0, 1.0, -2.0, 0.5], dtype=torch.float64)))
    eigen = lanczos(operator, which="both", tol=1e-10)
    preconditioned = PreconditionedResult(
        sharpness=2.0,
        lr=1e-3,
        beta1=0.9,
        eps=1e-8,
        step=5,
        gd_threshold=2000.0,
        adam_threshold=38000.0,
        eigen=eigen,
    )
    return BlockReport(
        name="layers.0.q_proj",
        parameters=4,
        parameter_names=("a", "b"),
        lambda_max=eigen.lambda_max,
        lambda_min=eigen.lambda_min,
        residual=eigen.residual,
        converged=eigen.converged,
        hvps=eigen.hvps,
        seconds=eigen.seconds,
        tokens=10,
        batches=2,
        eigen=eigen,
        trace=hutchplusplus(operator, hvps=12),
        density=spectral_density(operator, steps=3),
        preconditioned=preconditioned,
    )


def test_reports_round_trip_through_json_without_tensors() -> None:
    report = EigenReport(
        settings={"solver": "lanczos", "layers": [0, 1]}, blocks=(_block_report(),), source={"method": "lora"}
    )
    text = json.dumps(report.to_dict())
    assert "largest_vectors" not in text
    again = EigenReport.from_dict(json.loads(text))
    assert again == report
    assert isinstance(again.blocks[0].eigen.largest, tuple)
    assert again.blocks[0].eigen.history[0].values == report.blocks[0].eigen.history[0].values
    assert again.block("layers.0.q_proj").lambda_max == pytest.approx(3.0, rel=1e-15)
    assert again.block("layers.0.q_proj").lambda_max == again.lambda_max["layers.0.q_proj"]
    assert again.blocks[0].eigen.largest_vectors is None


def test_non_finite_numbers_become_null() -> None:
    result = EigenResult(
        solver="x",
        largest=(math.inf,),
        largest_residuals=(math.nan,),
        smallest=(),
        smallest_residuals=(),
        converged=False,
        stop_reason="max_iter",
        iterations=0,
        hvps=0,
        seconds=0.0,
        tol=1e-3,
        max_iter=1,
        size=1,
    )
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["largest"] == [None] and EigenResult.from_dict(data).largest == (None,)


def test_reports_written_before_certificates_existed_still_load() -> None:
    operator = DenseOperator(torch.diag(torch.tensor([3.0, 1.0, -2.0], dtype=torch.float64)))
    data = lanczos(operator, tol=1e-10, certificate="value").to_dict()
    assert data["certificate"] == "value" and len(data["largest_bounds"]) == 1
    for key in ("certificate", "largest_bounds", "smallest_bounds"):
        del data[key]
    old = EigenResult.from_dict(data)
    assert (
        old.certificate == "residual"
        and old.largest_bounds == ()
        and old.lambda_max == pytest.approx(3.0, rel=1e-14)
    )
