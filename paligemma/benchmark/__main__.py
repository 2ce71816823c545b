"""`python -m paligemma.benchmark`: see `paligemma.benchmark`."""

import sys

from .cli import main

sys.exit(main())
