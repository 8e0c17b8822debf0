"""`python -m smolvision`: the command line (see smolvision.cli)."""
from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
