"""Benchmark: what security costs (issue 14: at most 10% of the speed issue's figures).

    ./pants run tests/bench/security_cost.py -- [--pairs 3] [--only latency,chain,fanout,group,many]
        [--workers 2] [--latency-runs 200] [--fanout 10000] [--many-runs 1000]
        [--on tls,signing,role_tokens,redis_tls,redis_acl] [--json PATH]

Runs the measures of ``throughput.py`` (``measures.py``) on two stacks, alternately, in the same
window, ``--pairs`` times each, so that the machine's noise hits both alike:

- **off**: no TLS, no auth, an unsigned bus, Redis without TLS or ACL users (``graflow dev``);
- **on**: everything ``Security.everything()`` turns on: mTLS on every gRPC hop (certificates made
  here, ``graflow_runtime.testing.certs``), a token per role, the bus signed, Redis over TLS with
  an ACL user per service.

It prints, per figure, the median of each side, the change and whether it is within the 10% budget
(a rate may fall by at most 10%, a time or a CPU cost rise by at most 10%). Wall-clock figures on
this 2-core machine move by more than 10% between two runs of the same stack; the CPU per task (every
process of the stack, Redis included) is the steadier figure to judge by.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.bench.cost import median
from tests.bench.measures import MEASURES, Sizes
from tests.bench.security import LAYERS, Security
from tests.bench.throughput import commit, measure_graflow

BUDGET = 0.10
TIMED = ("latency", "chain", "fanout", "group", "many")


@dataclass(frozen=True)
class Figure:
    label: str
    measure: str
    key: str
    higher_is_better: bool


FIGURES = (
    Figure("one-task submit -> result p50 (ms)", "latency", "p50_ms", False),
    Figure("one-task submit -> result p99 (ms)", "latency", "p99_ms", False),
    Figure("one-task run: CPU, all processes (us)", "latency", "cpu_us", False),
    Figure("chain (s)", "chain", "seconds", False),
    Figure("chain: CPU per step (us)", "chain", "cpu_us", False),
    Figure("fan-out (tasks/s)", "fanout", "tasks_per_s", True),
    Figure("fan-out: CPU per task (us)", "fanout", "cpu_us", False),
    Figure("group + join (s)", "group", "seconds", False),
    Figure("group: CPU per task (us)", "group", "cpu_us", False),
    Figure("many runs (runs/s)", "many", "runs_per_s", True),
    Figure("  SubmitRun p50 meanwhile (ms)", "many", "submit_p50_ms", False),
    Figure("many runs: CPU per task (us)", "many", "cpu_us", False),
)


def change(off: float, on: float, higher_is_better: bool) -> float:
    """How much worse ``on`` is than ``off``, as a fraction (negative: better)."""
    return (off - on) / off if higher_is_better else (on - off) / off


def report(runs: dict[str, list[dict]], selected: set[str]) -> tuple[str, bool]:
    lines = [f"{'figure':<42} {'off':>10} {'on':>10} {'change':>8}  within 10%?"]
    all_within = True
    for figure in FIGURES:
        if figure.measure not in selected:
            continue
        sides = {
            side: [run[figure.measure][figure.key] for run in runs[side] if figure.measure in run]
            for side in ("off", "on")
        }
        if not sides["off"] or not sides["on"]:
            continue
        off, on = median(sides["off"]), median(sides["on"])
        worse = change(off, on, figure.higher_is_better)
        within = worse <= BUDGET
        all_within &= within
        verdict = "yes" if within else "NO"
        lines.append(f"{figure.label:<42} {off:>10.2f} {on:>10.2f} {worse:>+8.1%}  {verdict}")
    return "\n".join(lines) + "\n", all_within


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=3, help="runs of each side, alternated")
    parser.add_argument("--only", default=",".join(TIMED), help=f"measures among {','.join(TIMED)}")
    parser.add_argument("--workers", type=int, default=2)
    defaults = Sizes()
    parser.add_argument("--latency-runs", type=int, default=defaults.latency_runs)
    parser.add_argument("--fanout", type=int, default=defaults.fanout)
    parser.add_argument("--many-runs", type=int, default=defaults.many_runs)
    parser.add_argument("--on", default=",".join(LAYERS),
                        help=f"the layers of the 'on' side (default all: {','.join(LAYERS)}); one alone "
                             "shows what it costs")
    parser.add_argument("--json", metavar="PATH", help="also write every run's figures to PATH")
    args = parser.parse_args(argv)
    selected = set(args.only.split(","))
    if not selected <= set(TIMED):
        parser.error(f"--only: choose among {', '.join(TIMED)}")
    sizes = Sizes(latency_runs=args.latency_runs, fanout=args.fanout, many_runs=args.many_runs)
    out = sys.stdout.write
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory(prefix="graflow-bench-certs-") as directory:
        try:
            on = Security.everything(Path(directory), args.on.split(","))
        except ValueError as exc:
            parser.error(f"--on: {exc}")
        sides = {"off": Security(), "on": on}
        for pair in range(args.pairs):
            for side, security in sides.items():
                out(f"pair {pair + 1}/{args.pairs}: security {side} ({security.label()})\n")
                figures = measure_graflow(
                    selected & set(MEASURES), sizes, args.workers, {}, None, security=security
                )
                runs[side].append(figures)
    table, within = report(runs, selected)
    out(f"\nSecurity cost ({args.pairs} pairs, medians; {args.workers} workers; commit {commit() or '?'})\n")
    out(table)
    out(f"on: {sides['on'].label()}\n")
    if args.json:
        figures = {"commit": commit(), "pairs": args.pairs, "runs": runs}
        Path(args.json).write_text(json.dumps(figures, indent=2))
    out("every figure within the budget\n" if within else "some figures over the budget (see above)\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
