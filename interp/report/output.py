"""Writing result files for people: atomic, and never over an existing file unless asked (``--force``).

``-`` writes to standard output; a symbolic link is written through (it stays a link); a pipe or device
(``/dev/stdout``, a FIFO) is written in place. The one implementation is in :mod:`interp.io`; front ends
import it from here.
"""

from interp.io import check_writable, write_bytes, write_text

__all__ = ["check_writable", "write_bytes", "write_text"]
