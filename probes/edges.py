#!/usr/bin/env python
"""Probe: which edges between components carry an answer: EAP / EAP-IG scores and circuit faithfulness.

    python probes/edges.py --clean "The letter from Jane was read aloud, and then the letter from" \
        --corrupted "The letter from Moses was read aloud, and then the letter from" --answer " Jane" --wrong " Moses"

Run with --help for every option; `interp probe edges ...` is the same command.
"""

import sys
from pathlib import Path

# Let `python probes/edges.py` work from a source checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from interp.report.probes import main

if __name__ == "__main__":
    sys.exit(main("edges"))
