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


class Interrupted(BaseException):
    """Work stopped by SIGINT (Ctrl-C) or SIGTERM. The command line prints ``message`` (one line: what was
    kept, what to do) and exits 130 (SIGINT) or 143 (SIGTERM).

    A BaseException, as KeyboardInterrupt: no ``except Exception`` turns it into another error. Training
    raises it once a checkpoint is written; elsewhere :func:`interrupt_on_ctrl_c` raises it where the
    work is (everything mip360 writes is atomic, so what is finished is kept).
    """

    def __init__(self, message: str, signum: int, step: int | None = None):
        super().__init__(message)
        self.signum, self.step = signum, step


def interrupt_on_ctrl_c(signum: int, frame) -> None:
    """A SIGINT handler: :class:`Interrupted` instead of KeyboardInterrupt (which the command-line library
    turns into a bare "Aborted")."""
    raise Interrupted("interrupted: the work finished so far is kept; run the same command to go on", signum)
