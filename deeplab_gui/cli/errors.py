"""What every command shares for failing: :class:`CLIError` (one line on stderr, an exit status) and
the exit statuses themselves."""
from __future__ import annotations

__all__ = ["CLIError", "EXIT_FAILURE", "EXIT_USAGE"]

EXIT_FAILURE = 1
EXIT_USAGE = 2  # a usage error, as argparse exits


class CLIError(Exception):
    """A failure to report as one line on stderr, with ``code`` as the exit status."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code
