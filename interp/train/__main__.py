"""``python -m interp.train ...`` (see :mod:`interp.train`)."""

import sys

from interp.train import main

sys.exit(main())
