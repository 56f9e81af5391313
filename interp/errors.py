"""Errors that name the problem and the fix.

Every check in interp raises an :class:`InterpError` (a ``ValueError``) whose message says which argument
was wrong, what range is allowed, and what was given, so a user never has to read a stack trace from deep
inside torch.
"""


class InterpError(ValueError):
    """Bad input to interp: the message names the argument, the allowed values and what was given."""


class OutOfMemoryRefusal(InterpError):
    """Refused before allocating: what was asked for will not fit in the device's free memory.

    Its own type so that ``interp.load`` never answers it by quietly taking another path (the universal path
    would only postpone the same shortage)."""


def check(condition: bool, message: str) -> None:
    """Raise :class:`InterpError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise InterpError(message)
