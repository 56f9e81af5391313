"""``python -m interp ...`` is the ``interp`` command; ``torchrun --nproc-per-node N -m interp scan ...`` runs a
scan on N processes."""

import sys

from interp.cli import main

if __name__ == "__main__":
    sys.exit(main())
