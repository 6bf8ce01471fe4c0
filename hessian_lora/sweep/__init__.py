"""Sweeps: learning-rate sweeps and what plans them: the runner and its backends (local, Ray), preflight, one run
(``execute``), the adaptive search inside a sweep, checkpoint retention, adapters reused at initialisation,
``recommend`` (η̂ from λ_max at initialisation and a calibration; the shipped one in ``calibrations/``) and the
demo (sweep → λ at init → analysis → figures). The sweep's config is :mod:`hessian_lora.settings.sweep`; its
results store is :mod:`hessian_lora.core.store`."""
