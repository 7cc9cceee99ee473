"""Bad input from the user: one line on stderr, exit code 2, nothing written."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit code 2, nothing written."""


@contextmanager
def user_errors(*kinds: type[Exception]) -> Iterator[None]:
    """Report the project's own errors of these kinds (a bad scenario, an unknown run, a refused token...) as
    a UsageError: their message is already the one line the user needs, so no traceback."""
    try:
        yield
    except kinds as err:
        raise UsageError(str(err)) from None
