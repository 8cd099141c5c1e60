"""`python -m streamq`: the same command as the `streamq` script."""

import sys

from .cli import main

sys.exit(main())
