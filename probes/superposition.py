#!/usr/bin/env python
"""Probe: angles between the model's directions vs random; toy models; JL dimension.

    python probes/superposition.py --sets W_E,W_U --toy --sparsity 0.95 --jl 10000 0.1

Run with --help for every option; `interp probe superposition ...` is the same command.
"""

import sys
from pathlib import Path

# Let `python probes/superposition.py` work from a source checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from interp.report.probes import main

if __name__ == "__main__":
    sys.exit(main("superposition"))
