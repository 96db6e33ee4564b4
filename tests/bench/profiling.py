"""py-spy profiles of every stack process during a measure, and their summary.

py-spy (PyPI: ``py-spy``, a sampling profiler that attaches to a running process) is not a
requirement of the repository: install it outside, e.g. into a throwaway virtualenv
(docs/performance.md), and pass its path with ``--py-spy`` or put it on the ``PATH``.

For each measure and each process, ``record()`` writes ``<dir>/<measure>-<process>.txt``: py-spy's
raw (collapsed stack) format, one line per distinct stack, ``frame;frame;...;leaf count``, each
frame ``function (path:line)``. Only the thread holding the GIL is sampled (``--gil``), so the
counts are where Python CPU went: waits (the event loop's ``epoll``, gRPC's polling threads) and C
code that runs without the GIL are left out, C code called with the GIL held (protobuf parsing and
serialising, hiredis) counts in the Python frame that called it.
``summarise()`` turns one file into self and inclusive shares of our own functions and of the
libraries (protobuf, grpc, redis-py, json, structlog, asyncio, ...).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

FRAME = re.compile(r"^(?P<function>.*) \((?P<path>[^()]*?)(?::\d+)?\)$")
OURS = ("graflow_scheduler/", "graflow_coordinator/", "graflow_result_store/", "graflow_worker/",
        "graflow_runtime/", "graflow/", "graflow_api/")
# Library of a frame, by the start of its path (first match wins); anything else is "other".
LIBRARIES = (
    ("ours", OURS),
    ("protobuf", ("google/protobuf/",)),
    ("grpc", ("grpc/", "grpc_health/", "grpc_reflection/")),
    ("redis-py", ("redis/", "hiredis/")),
    ("json", ("json/",)),
    ("structlog", ("structlog/", "logging/")),
    ("opentelemetry", ("opentelemetry/",)),
    ("pybreaker", ("pybreaker",)),
    ("asyncio", ("asyncio/", "selectors.py")),
    ("threads", ("threading.py", "concurrent/", "queue.py")),
)
ATTACH_TIMEOUT_S = 10.0


def find_py_spy(path: str | None) -> str:
    """The py-spy executable: ``path``, else ``py-spy`` on the PATH."""
    found = shutil.which(path or "py-spy")
    if found is None:
        raise SystemExit(
            f"py-spy not found ({path or 'py-spy on the PATH'}): install it outside the repository, "
            "e.g. `python3.11 -m venv /tmp/py-spy && /tmp/py-spy/bin/pip install py-spy`, and pass "
            "--py-spy /tmp/py-spy/bin/py-spy (docs/performance.md)"
        )
    return found


class Profiler:
    """Attaches one ``py-spy record`` per process for the duration of a block."""

    def __init__(self, py_spy: str, out_dir: Path, rate: int = 250, native: bool = False) -> None:
        self.py_spy = py_spy
        self.out_dir = out_dir
        self.rate = rate
        # Native frames (C, Cython: grpc's cygrpc, protobuf's upb) need the process paused at each
        # sample; without them py-spy reads it while it runs (--nonblocking), which costs it nothing.
        self.mode = ["--native"] if native else ["--nonblocking"]
        out_dir.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def record(self, measure: str, pids: Mapping[str, int]) -> Iterator[None]:
        recorders = {}
        for name, pid in pids.items():
            path = self.out_dir / f"{measure}-{name}.txt"
            recorders[name] = subprocess.Popen(
                [self.py_spy, "record", "--pid", str(pid), "--rate", str(self.rate), "--gil", *self.mode,
                 "--format", "raw", "--output", str(path)],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
            )
        try:
            for name, recorder in recorders.items():
                _wait_sampling(name, recorder)
            yield
        finally:
            for recorder in recorders.values():
                recorder.send_signal(signal.SIGINT)
            for recorder in recorders.values():
                recorder.wait(timeout=60)


def recording(profiler: Profiler | None, measure: str,
              pids: Mapping[str, int]) -> AbstractContextManager[None]:
    """``profiler.record(measure, pids)``, or nothing when there is no profiler."""
    return nullcontext() if profiler is None else profiler.record(measure, pids)


def _wait_sampling(name: str, recorder: subprocess.Popen[str]) -> None:
    """Until py-spy says it samples (it prints one line once attached)."""
    assert recorder.stdout is not None
    deadline = time.monotonic() + ATTACH_TIMEOUT_S
    while time.monotonic() < deadline:
        line = recorder.stdout.readline()
        if "Sampling process" in line:
            return
        if not line and recorder.poll() is not None:
            raise RuntimeError(f"py-spy could not attach to {name} (exit {recorder.returncode})")
    raise RuntimeError(f"py-spy did not attach to {name} within {ATTACH_TIMEOUT_S} s")


def library(path: str) -> str:
    """The library of a frame's path: relative to ``sys.path`` for Python code, absolute for a
    native frame's shared object (``.../grpc/_cython/cygrpc...so``)."""
    for name, prefixes in LIBRARIES:
        if path.startswith(prefixes) or any(f"/{prefix}" in path for prefix in prefixes):
            return name
    return "other"


def parse(path: Path) -> list[tuple[list[tuple[str, str]], int]]:
    """Stacks of a raw py-spy file: ([(function, path), ... leaf last], samples)."""
    stacks = []
    for line in path.read_text().splitlines():
        frames_text, _, count = line.rpartition(" ")
        if not frames_text or not count.isdigit():
            continue
        frames = []
        for frame in frames_text.split(";"):
            match = FRAME.match(frame)
            if match:
                frames.append((match["function"], match["path"]))
        stacks.append((frames, int(count)))
    return stacks


def summarise(path: Path, top: int = 12) -> dict[str, object]:
    """Shares (% of the process's samples) of:

    - each library as the leaf (self), as the nearest known library to the leaf (attributed: the
      standard library, libc and the interpreter's C code count for the library that called them),
      and anywhere in the stack (inclusive);
    - the top leaf functions outside our code (library hot spots);
    - our own functions: self (the leaf), *attributed* (the frame of ours nearest the leaf: its own
      time plus the libraries it calls, e.g. a ``SerializeToString`` or a redis-py parse), and
      inclusive (anywhere in the stack, counted once per stack however deep it recurses).
    """
    stacks = parse(path)
    total = sum(count for _frames, count in stacks) or 1
    counters: dict[str, Counter[str]] = {
        key: Counter() for key in ("library_self", "library_attributed", "library_inclusive",
                                   "library_leaf", "ours_self", "ours_attributed", "ours_inclusive")
    }
    for frames, count in stacks:
        if not frames:
            continue
        leaf_function, leaf_path = frames[-1]
        leaf_library = library(leaf_path)
        counters["library_self"][leaf_library] += count
        known = [name for name in (library(p) for _f, p in reversed(frames)) if name != "other"]
        counters["library_attributed"][known[0] if known else "other"] += count
        for name in {library(p) for _f, p in frames}:
            counters["library_inclusive"][name] += count
        if leaf_library == "ours":
            counters["ours_self"][f"{leaf_function} ({leaf_path})"] += count
        else:
            counters["library_leaf"][f"{leaf_function} ({leaf_path})"] += count
        for function, frame_path in reversed(frames):
            if library(frame_path) == "ours":
                counters["ours_attributed"][f"{function} ({frame_path})"] += count
                break
        for key in {f"{f} ({p})" for f, p in frames if library(p) == "ours"}:
            counters["ours_inclusive"][key] += count
    summary: dict[str, object] = {"samples": total}
    for key, counter in counters.items():
        n = None if key in ("library_self", "library_attributed", "library_inclusive") else top
        summary[f"{key}_pct"] = [(name, round(100 * value / total, 1))
                                 for name, value in counter.most_common(n)]
    return summary


def report(out_dir: Path, summaries: Mapping[str, Mapping[str, object]]) -> str:
    """A text report of ``summaries`` (file stem -> :func:`summarise`), also written to
    ``<out_dir>/summary.txt``."""
    lines = []
    for stem, summary in summaries.items():
        lines.append(f"== {stem}: {summary['samples']} samples")
        for title, key in (("library, self", "library_self_pct"),
                           ("library, attributed", "library_attributed_pct"),
                           ("library, inclusive", "library_inclusive_pct")):
            lines.append(f"  {title}: " + ", ".join(f"{name} {pct}%" for name, pct in summary[key]))
        for title, key in (("library hot spots (leaf functions)", "library_leaf_pct"),
                           ("our functions, self", "ours_self_pct"),
                           ("our functions, attributed (own time + the libraries they call)",
                            "ours_attributed_pct"),
                           ("our functions, inclusive", "ours_inclusive_pct")):
            lines.append(f"  {title}:")
            lines.extend(f"    {pct:5.1f}%  {name}" for name, pct in summary[key])
    text = "\n".join(lines) + "\n"
    (out_dir / "summary.txt").write_text(text)
    return text
