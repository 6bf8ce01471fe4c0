"""Adapter methods as plug-ins: one module per method (``lora.py``, ``pissa.py``, ...), each holding its
:class:`~hessian_lora.methods.spec.MethodSpec` (facts, peft config, initialisation, how a saved peft directory is
recognised as it, its scaling, its description), and :mod:`hessian_lora.methods.registry`, the one table that
lists them (one line per method, in display order).

Adding a method: write ``hessian_lora/methods/<name>.py`` with a module-level ``SPEC``, add ``"<name>"`` to
``registry.PLUGINS``, and add its row to ``tests/method_cases.py``. Nothing in the package loads torch here.
"""
