"""`python -m smolvision`: the command line (see smolvision.cli)."""
import sys

from .cli import main

sys.exit(main())
