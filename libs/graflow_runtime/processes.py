"""Child processes that never outlive the process that started them."""

from __future__ import annotations

import ctypes
import ctypes.util
import signal
import sys
import threading
from collections.abc import Callable


def parent_death_signal() -> Callable[[], None] | None:
    """On Linux, a pre-exec hook that makes the child receive SIGTERM when its parent dies, so a
    killed test run or ``graflow dev`` leaves no services or redis-server behind. The kernel ties
    this to the thread that forks, so it is used only from the main thread (whose end is the
    process's end)."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))

    return hook
