#!/usr/bin/env python
"""Probe: sample continuations and show the next-token distribution the sampler sees.

    python probes/generate.py "Once upon a time" --temperature 0.8 --top-p 0.9 --samples 2

Run with --help for every option; `interp probe generate ...` is the same command.
"""

import sys
from pathlib import Path

# Let `python probes/generate.py` work from a source checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from interp.report.probes import main

if __name__ == "__main__":
    sys.exit(main("generate"))
