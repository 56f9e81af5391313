#!/usr/bin/env python
"""Probe: the prediction read off every layer (logit lens; tuned lens with --tuned).

    python probes/logit_lens.py "The Eiffel Tower is in the city of" --k 3 --positions -3,-2,-1

Run with --help for every option; `interp probe logit_lens ...` is the same command.
"""

import sys
from pathlib import Path

# Let `python probes/logit_lens.py` work from a source checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from interp.report.probes import main

if __name__ == "__main__":
    sys.exit(main("logit_lens"))
