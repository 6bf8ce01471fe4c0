"""The command line: ``hessian-lora <command>`` (:mod:`~hessian_lora.cli.main`) and one module per command
(``commands/``). Importing the package loads neither."""
