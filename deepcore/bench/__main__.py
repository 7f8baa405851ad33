"""`python -m deepcore.bench ...`: the same as `deepcore bench ...`."""

import sys

from . import main

sys.exit(main())
