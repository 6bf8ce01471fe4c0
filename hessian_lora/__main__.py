"""``python -m hessian_lora``: the command line."""

import sys

from hessian_lora.cli.main import main

sys.exit(main())
