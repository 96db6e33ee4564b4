"""Tasks of the console's tests, registered in the stack's worker."""

from __future__ import annotations

import time

from graflow import task


@task
def slow(seconds: float = 30.0) -> str:
    """Long enough to be canceled from a page."""
    time.sleep(seconds)
    return "done"
