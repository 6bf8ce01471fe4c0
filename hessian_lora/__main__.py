import sys

from hessian_lora.cli import main

sys.exit(main())
