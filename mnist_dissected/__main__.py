"""``python -m mnist_dissected ...``: see :mod:`mnist_dissected.cli`."""

import sys

from .cli import main

sys.exit(main())
