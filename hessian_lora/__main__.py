"""``python -m hessian_lora``: the command line."""

import sys

from hessian_lora.cli import main

sys.exit(main())
