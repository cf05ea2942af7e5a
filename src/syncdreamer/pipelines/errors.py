"""The one error type of the generation front end: bad user input, reported as one line."""
from __future__ import annotations


class InputError(ValueError):
    """Bad user input (not an image, no foreground, elevation out of range, bad option).

    Entry points print ``str(err)`` on one line and exit with a non-zero code; no traceback.
    """
