#!/usr/bin/env python
"""Probe: steer the model with a contrastive direction and see the next token and continuation change.

    python probes/steering.py "The weather today is" --positive "I love this" --negative "I hate this" --scale 4

Run with --help for every option; `interp probe steering ...` is the same command.
"""

import sys
from pathlib import Path

# Let `python probes/steering.py` work from a source checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from interp.report.probes import main

if __name__ == "__main__":
    sys.exit(main("steering"))
