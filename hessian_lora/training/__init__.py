"""Training: the loop, the optimizer it may drive, and the probes that watch it.

- :mod:`~hessian_lora.training.train`: the paper's recipe (AdamW, cosine schedule, warm-up, clipping), exact
  gradient accumulation, divergence detection (``train``, ``global_batches``, ``example_stream``);
- :mod:`~hessian_lora.methods.loft_optimizer`: the LoFT optimizer (``loft_optimizer``);
- :mod:`~hessian_lora.training.dynamics`: :class:`SharpnessProbe`, λ_max and Adam's preconditioned sharpness
  measured inside a run from the live optimizer state;
- :mod:`~hessian_lora.training.integrations`: :class:`SharpnessCallback`, the same probe inside a transformers
  ``Trainer`` / TRL ``SFTTrainer``.

Importing the package loads none of them (each module pulls in torch, the probes the engine, the callback
transformers' Trainer): import what you use from its module. These modules lived at the package's top level
until the layers were given folders (``hessian_lora.train`` is now ``hessian_lora.training.train``, and so on).
"""
