"""Start several threads at one moment (a barrier), for the measures that submit from many clients."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def run_together(target: Callable[[int], None], count: int) -> float:
    """Run ``target(0)`` ... ``target(count - 1)`` in threads released together; returns the
    ``time.perf_counter()`` of the release, once every thread has ended. The first exception a
    thread raised is raised here."""
    ready = threading.Barrier(count + 1)
    errors: list[BaseException] = []

    def body(index: int) -> None:
        try:
            ready.wait()
            target(index)
        except BaseException as error:  # noqa: BLE001 - raised again by the calling thread
            errors.append(error)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    ready.wait()
    released = time.perf_counter()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return released


def shares(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal counts."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]
