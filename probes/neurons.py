#!/usr/bin/env python
"""Probe: MLP neurons behind the next-token prediction: activations, logit contributions, answers.

    python probes/neurons.py "The capital of France is" --k 5 --answers 2

Run with --help for every option; `interp probe neurons ...` is the same command.
"""

import sys
from pathlib import Path

# Let `python probes/neurons.py` work from a source checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from interp.report.probes import main

if __name__ == "__main__":
    sys.exit(main("neurons"))
