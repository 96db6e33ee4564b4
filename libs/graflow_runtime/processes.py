"""Child processes that never outlive the process that started them."""

from __future__ import annotations

import shutil
import sys
import threading
from collections.abc import Sequence


def dies_with_parent(argv: Sequence[str]) -> list[str]:
    """``argv`` prefixed so that the child gets SIGTERM when its parent dies, so a killed test run or
    ``graflow dev`` leaves no services or redis-server behind.

    It uses util-linux ``setpriv --pdeathsig`` as an exec wrapper rather than a ``preexec_fn``: a
    pre-exec hook makes ``subprocess`` fork and run Python in the child, and in a parent with gRPC
    threads gRPC's fork handlers break the child before it execs (seen as "epoll_wait error: Bad
    file descriptor" and aborts). The kernel ties the signal to the thread that forks, so the
    wrapper is used only from the main thread (whose end is the process's end); elsewhere, and
    where ``setpriv`` is missing, ``argv`` is returned unchanged.
    """
    setpriv = shutil.which("setpriv")
    if not sys.platform.startswith("linux") or setpriv is None:
        return list(argv)
    if threading.current_thread() is not threading.main_thread():
        return list(argv)
    return [setpriv, "--pdeathsig", "TERM", "--", *argv]
