"""Training: from a method to a trained, evaluated, saved adapter.

- :mod:`~hessian_lora.training.adapters`: the one adapter factory (``build_adapter``,
  ``adapter_at_initialisation``), which runs a method's plug-in (:mod:`hessian_lora.methods`);
- :mod:`~hessian_lora.training.peft_adapters`: plain peft adapter directories, local or on the hub;
- :mod:`~hessian_lora.training.checkpoint`: this toolkit's checkpoints (adapter, optimizer state, metadata);
- :mod:`~hessian_lora.training.precision`: the base weights' dtype and the Hessian's fp32 guarantee;
- :mod:`~hessian_lora.training.train`: the paper's recipe (AdamW, cosine schedule, warm-up, clipping), exact
  gradient accumulation, divergence detection;
- :mod:`~hessian_lora.training.evaluate` and :mod:`~hessian_lora.training.evalsets`: held-out loss, generation,
  scores on the user's test sets; :mod:`~hessian_lora.training.sandbox`: generated programs confined;
- :mod:`~hessian_lora.training.memory`: the training-memory estimate (torch-free).

Importing the package loads none of them: import what you use from its module. The probes that watch a run
(``SharpnessProbe``, ``SharpnessCallback``) measure, so they live in :mod:`hessian_lora.measurement`.
"""
