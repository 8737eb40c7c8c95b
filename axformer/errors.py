"""User-facing errors.

Everything a user can get wrong (a path, a column, a task name, a checkpoint)
raises :class:`AxformerError` with one line that names the thing and what was
expected. The CLI turns it into that line on stderr and exit status 2; library
users catch it like any exception.
"""

from __future__ import annotations


class AxformerError(Exception):
    """Bad input or an unrecoverable condition the user can fix."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        # One line: the CLI prints it verbatim.
        super().__init__(" ".join(message.split()))
