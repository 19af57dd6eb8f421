"""Several full runs side by side: the throughput ratio of each run and their median, per model and batch size.

On a shared machine a slow spell can last longer than one (model, batch) cell, and it does not slow every framework
by the same factor, so a single run's ratio can be off by 30% in a cell. Run the benchmark a few times and combine:

    python -m benchmarks --out run1; python -m benchmarks --out run2; python -m benchmarks --out run3
    python -m benchmarks.combine run1 run2 run3 [--framework tinygen-numba] [--against torch,jax]

It prints one Markdown table per reference framework: each cell lists the runs' ratios (median samples/s of the
framework over that of the reference) and then their median.
"""
import argparse
import json
import os
import statistics
import sys

from .harness import _median  # a cell's median samples/s, None where it did not run


def load(folder):
    path = os.path.join(folder, "results.json")
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise SystemExit(f"combine: no results.json in {folder!r} (give the --out folders of full runs)") from None
    except json.JSONDecodeError as e:
        raise SystemExit(f"combine: {path} is not valid JSON ({e})") from None


def ratios(runs, framework, reference):
    """{case: {batch: [ratio per run, None where either side did not run]}} over the cells of the first run."""
    table = {}
    for case, by_batch in runs[0].get("throughput", {}).items():
        for batch in by_batch:
            row = []
            for run in runs:
                cell = run.get("throughput", {}).get(case, {}).get(batch, {})
                a, b = _median(cell.get(framework)), _median(cell.get(reference))
                row.append(a / b if a and b else None)
            table.setdefault(case, {})[batch] = row
    return table


def markdown(table, framework, reference, n_runs):
    batches = sorted({int(b) for by_batch in table.values() for b in by_batch})
    runs = " / ".join(str(i + 1) for i in range(n_runs))
    lines = [f"{framework} / {reference} (> 1: {framework} is faster), runs {runs} → median:", "",
             "| case | " + " | ".join(f"batch {b}" for b in batches) + " |", "|---|" + "---|" * len(batches)]
    for case, by_batch in table.items():
        cells = []
        for b in batches:
            row = by_batch.get(str(b))
            got = [r for r in (row or []) if r is not None]
            if not got:
                cells.append("n/a")
                continue
            each = " / ".join("n/a" if r is None else f"{r:.2f}" for r in row)
            cells.append(f"{each} → **{statistics.median(got):.2f}x**")
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.combine", description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", help="output folders of runs (each holds a results.json)")
    p.add_argument("--framework", default="tinygen-numba", help="the numerator (default tinygen-numba)")
    p.add_argument("--against", default="torch,jax", help="comma-separated references (default torch,jax)")
    args = p.parse_args(argv)
    runs = [load(f) for f in args.folders]
    for reference in [r for r in args.against.split(",") if r]:
        print(markdown(ratios(runs, args.framework, reference), args.framework, reference, len(runs)))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
