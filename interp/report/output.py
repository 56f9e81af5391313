"""Writing result files for people: atomic, and never over an existing file unless asked (``--force``).

``-`` writes to standard output; a symbolic link is written through (it stays a link); a pipe or device
(``/dev/stdout``, a FIFO) is written in place. See :mod:`interp.io`.
"""

from __future__ import annotations

from pathlib import Path

from interp.errors import InterpError
from interp.io import STDOUT, atomic_write_bytes, atomic_write_text, check_folder_writable, is_stream

__all__ = ["check_writable", "write_bytes", "write_text"]


def check_writable(path: str | Path, force: bool = False, flag: str = "--out") -> Path:
    """Fail early (before minutes of analysis) if ``path`` cannot be written: it exists and ``force`` is off,
    it is a folder, or its folder does not exist or refuses new files."""
    if str(path) == STDOUT or is_stream(path):
        return Path(path)
    p = Path(path).expanduser()
    if p.is_dir():
        raise InterpError(f"{flag}: {str(path)!r} is a folder; give a file name.")
    if (p.exists() or p.is_symlink()) and not force:
        raise InterpError(f"{flag}: {str(path)!r} already exists; pass --force to overwrite it.")
    check_folder_writable(p, flag)
    return p


def write_text(path: str | Path, text: str, force: bool = False, flag: str = "--out") -> Path:
    """Write ``text`` atomically (temporary file, then one rename: Ctrl-C never leaves half a file)."""
    p = check_writable(path, force, flag)
    atomic_write_text(str(path) if str(path) == STDOUT else p, text, flag)
    return p


def write_bytes(path: str | Path, data: bytes, force: bool = False, flag: str = "--out") -> Path:
    p = check_writable(path, force, flag)
    atomic_write_bytes(str(path) if str(path) == STDOUT else p, data, flag)
    return p
