"""Writing result files for people: atomic, and never over an existing file unless asked (``--force``)."""

from __future__ import annotations

from pathlib import Path

from interp.errors import InterpError
from interp.io import atomic_write_bytes, atomic_write_text

__all__ = ["check_writable", "write_bytes", "write_text"]


def check_writable(path: str | Path, force: bool = False, flag: str = "--out") -> Path:
    """Fail early (before minutes of analysis) if ``path`` exists and ``force`` is off, or is a folder."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise InterpError(f"{flag}: {str(path)!r} is a folder; give a file name.")
    if p.exists() and not force:
        raise InterpError(f"{flag}: {str(path)!r} already exists; pass --force to overwrite it.")
    if not p.parent.exists():
        raise InterpError(f"{flag}: folder {str(p.parent)!r} does not exist.")
    return p


def write_text(path: str | Path, text: str, force: bool = False, flag: str = "--out") -> Path:
    """Write ``text`` atomically (temporary file, then one rename: Ctrl-C never leaves half a file)."""
    p = check_writable(path, force, flag)
    atomic_write_text(p, text)
    return p


def write_bytes(path: str | Path, data: bytes, force: bool = False, flag: str = "--out") -> Path:
    p = check_writable(path, force, flag)
    atomic_write_bytes(p, data)
    return p
