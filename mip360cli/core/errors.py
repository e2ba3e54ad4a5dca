"""The one exception type that reaches the user as a message instead of a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix: bad input, a missing file, a wrong option.

    The CLI prints ``str(error)`` (and the hint, when there is one) and exits
    with a non-zero code; ``--debug`` shows the traceback instead.
    """

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text}\n  hint: {self.hint}" if self.hint else text


class Interrupted(Exception):
    """Work stopped by SIGINT (Ctrl-C) or SIGTERM at a point where it could stop cleanly (training: after
    writing a checkpoint). The command line prints ``message`` and exits 130 (SIGINT) or 143 (SIGTERM)."""

    def __init__(self, message: str, signum: int, step: int | None = None):
        super().__init__(message)
        self.signum, self.step = signum, step
