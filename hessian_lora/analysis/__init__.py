"""From a sweep run directory to insight: each method's optimal learning rate, its sharpness, and the relation.

Reads the run directory through :mod:`hessian_lora.core.rundir` and computes, per method, the optimal learning rate
η* with its spread over seeds (:mod:`.curves`), the peak metric and its gap to the best method, λ_max at
initialisation and at the end of the η* run, whole adapter and module median, and the Adam-preconditioned
sharpness at the end (:mod:`.summary`); across methods, Spearman ρ between λ_max and η*, the log-log slope with a
two-stage bootstrap interval (methods, then seeds), c of η* ≈ c/λ_max, η* against gradient descent's bound
2/λ_max, and the leave-one-method-out error of the λ-based prediction (:mod:`.relation`). :mod:`.report` writes
analysis.json and analysis.md.

The names below are the package's public surface; import them from here or from their module.
"""

from __future__ import annotations

from hessian_lora.analysis.curves import (
    HIGHER_IS_BETTER,
    MethodCurve,
    Metric,
    PeakFit,
    PeakKind,
    choose_metric,
    fit_peak,
    method_curves,
    metric_value,
    parabola_vertex,
)
from hessian_lora.analysis.relation import (
    FIT_KINDS,
    FitKind,
    LomoPrediction,
    PowerLaw,
    bootstrap_slope,
    fit_inverse_constant,
    fit_power_law,
    leave_one_method_out,
    predict_eta,
    spearman_exact,
)
from hessian_lora.analysis.report import markdown_table, relation_summary, write_analysis
from hessian_lora.analysis.runs import RunDirectory, RunRecord, load_runs, read_run_directory
from hessian_lora.analysis.summary import (
    DEFAULT_BETA1,
    LAMBDA_SOURCES,
    Analysis,
    LambdaSource,
    MethodSummary,
    Relation,
    adam_beta1,
    analyze,
    relation_lambda,
)

__all__ = [
    "DEFAULT_BETA1",
    "FIT_KINDS",
    "HIGHER_IS_BETTER",
    "LAMBDA_SOURCES",
    "Analysis",
    "FitKind",
    "LambdaSource",
    "LomoPrediction",
    "MethodCurve",
    "MethodSummary",
    "Metric",
    "PeakFit",
    "PeakKind",
    "PowerLaw",
    "Relation",
    "RunDirectory",
    "RunRecord",
    "adam_beta1",
    "analyze",
    "bootstrap_slope",
    "choose_metric",
    "fit_inverse_constant",
    "fit_peak",
    "fit_power_law",
    "leave_one_method_out",
    "load_runs",
    "markdown_table",
    "method_curves",
    "metric_value",
    "parabola_vertex",
    "predict_eta",
    "read_run_directory",
    "relation_lambda",
    "relation_summary",
    "spearman_exact",
    "write_analysis",
]
