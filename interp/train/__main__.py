"""``python -m interp.train ...`` (see :mod:`interp.train`): the same as ``interp train ...``, so bad input is
the CLI's one line and exit status 2 rather than a traceback; its own help where help is asked for."""

import sys

args = sys.argv[1:]
if args and args[0] not in ("-h", "--help"):
    from interp.cli import main

    sys.exit(main(["train", *args]))

from interp.train import main

sys.exit(main(args))
