"""Errors that name the problem and the fix.

Every check in interp raises an :class:`InterpError` (a ``ValueError``) whose message says which argument
was wrong, what range is allowed, and what was given, so a user never has to read a stack trace from deep
inside torch.
"""


class InterpError(ValueError):
    """Bad input to interp: the message names the argument, the allowed values and what was given."""


def check(condition: bool, message: str) -> None:
    """Raise :class:`InterpError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise InterpError(message)
