#!/usr/bin/env python
"""Probe: fit linear probes per layer (scikit-learn) and match the probe direction to weights.

    python probes/linear_probe.py --prompts prompts.txt --task space --hooks resid_post

Run with --help for every option; `interp probe linear_probe ...` is the same command.
"""

import sys
from pathlib import Path

# Let `python probes/linear_probe.py` work from a source checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from interp.report.probes import main

if __name__ == "__main__":
    sys.exit(main("linear_probe"))
