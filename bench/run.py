"""``python bench/run.py``: Party's benchmark suite (``make bench``; ``make bench-quick``).

Runs each section (``scale``, ``enqueue``, ``drain``, ``waiting``, ``latency``, ``floors``,
``forcerun``, ``profile``, ``stress``) on real processes and a temporary SQLite store, prints a
progress line per step and a table at the end, and writes ``bench/results.json`` with the machine
it ran on. Every figure is the median of ``--runs`` runs (3 by default, 1 with ``--quick``, which
also uses smaller sizes) with min and max. ``--only drain latency`` runs some sections. See
docs/performance.md for what each figure means.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import subprocess
import sys
import time
import traceback
from typing import Any

import harness

SECTIONS = (
    "scale", "enqueue", "drain", "waiting", "latency", "floors", "forcerun", "profile", "stress"
)  # fmt: skip
MODULES = {"profile": "profiling"}  # a module named ``profile`` would shadow cProfile's import
RESULTS = harness.BENCH / "results.json"


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 run, small sizes (under 1 min)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--runs", type=int, default=None, help="runs per figure (default 3)")
    parser.add_argument("--out", default=str(RESULTS), help="results file (JSON)")
    return parser


def git_commit() -> str | None:
    """The checked-out commit, with ``+dirty`` when the work tree differs."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=harness.ROOT, capture_output=True,
            text=True, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=harness.ROOT,
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def table(figures: list[dict[str, Any]]) -> str:
    """The final table, one line per figure."""
    header = ["section", "figure", "median", "min", "max", "unit", "target", "met"]
    rows = [header]
    for f in figures:
        met = {True: "yes", False: "NO", None: ""}[f["ok"]]
        rows.append(
            [f["section"], f["name"], harness.fmt(f["median"]), harness.fmt(f["min"]),
             harness.fmt(f["max"]), f["unit"], f["target"] or "", met]
        )  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    right = {2, 3, 4}
    lines = []
    for n, row in enumerate(rows):
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the sections, print the table, write the results; exit 1 if a section failed."""
    args = build_parser().parse_args(argv)
    runs = args.runs or (1 if args.quick else 3)
    sections = args.only or list(SECTIONS)
    machine = harness.machine_info()
    harness.progress(
        f"party bench ({'quick' if args.quick else 'full'}, {runs} runs): {machine['cpu']}, "
        f"{machine['cores']} cores, Python {machine['python']}, SQLite {machine['sqlite']}"
    )
    started = time.time()
    results: dict[str, Any] = {
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "quick": args.quick,
        "runs": runs,
        "commit": git_commit(),
        "machine": machine,
        "sections": {},
    }
    figures: list[dict[str, Any]] = []
    failed = []
    for name in sections:
        harness.progress(f"== {name}")
        t0 = time.time()
        try:
            module = importlib.import_module(MODULES.get(name, name))
            outcome = module.run(quick=args.quick, runs=runs)
        except Exception as exc:  # one broken section must not lose the others' figures
            traceback.print_exc()
            failed.append(name)
            outcome = {"figures": [], "errors": [f"{type(exc).__name__}: {exc}"]}
        outcome["seconds"] = round(time.time() - t0, 1)
        results["sections"][name] = outcome
        figures.extend(outcome["figures"])
        for error in outcome.get("errors", []):
            harness.progress(f"   {name}: {error}")
    results["seconds"] = round(time.time() - started, 1)
    results["figures"] = figures
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2, default=str)
    print()
    print(table(figures))
    print()
    harness.progress(f"done in {results['seconds']:.0f} s; results in {args.out}")
    if failed:
        print(f"sections that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
