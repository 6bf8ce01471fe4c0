"""Figures: matplotlib only, from a run directory's analysis and reports; nothing here measures or trains.

:mod:`~hessian_lora.analysis.figures.plots` draws a sweep's figures (a) metric vs LR, (b) sharpness vs η*, (f) loss
curves and (g) edge of stability, and writes them all (:func:`~hessian_lora.analysis.figures.plots.plot_run`);
:mod:`~hessian_lora.analysis.figures.spectrum` the Hessian at initialisation ((c) per-module ratios, (d) Lanczos
convergence, (e) spectral density); :mod:`~hessian_lora.analysis.figures.ablation` the cross-setting figures (h, i, j);
:mod:`~hessian_lora.analysis.figures._style` the look they share.
"""
