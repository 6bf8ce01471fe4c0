"""CLI sub-commands, one module each (see ``hessian_lora.cli.COMMAND_MODULES``)."""
