"""`python -m visionzoo ...` (and `torchrun -m visionzoo train ...`)."""

import sys

from .cli import main

sys.exit(main())
