"""``python -m fastweights.cli``: the ``fastweights`` command (what ``torchrun`` launches)."""

import sys

from . import main

sys.exit(main())
