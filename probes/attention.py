#!/usr/bin/env python
"""Probe: head roles (previous-token, induction, ...) and attention patterns.

    python probes/attention.py "When Mary and John went to the store, John gave" --layer 0 --head 1

Run with --help for every option; `interp probe attention ...` is the same command.
"""

import sys
from pathlib import Path

# Let `python probes/attention.py` work from a source checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from interp.report.probes import main

if __name__ == "__main__":
    sys.exit(main("attention"))
