"""``python -m benchmarks [--quick] [--json FILE] [--only 1,3]``: print one table.

Every figure is measured against a baseline taken in the same run; PASS/MISS compares it to
its target. Nothing here asserts: a MISS is a finding, not a failure.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
import traceback

from ._common import Row

FIGURES = {
    "1": ("fig1_enter_exit", "sandbox enter+exit"),
    "2": ("fig2_host_tax", "host-code tax after install()"),
    "3": ("fig3_sandboxed_ops", "sandboxed operations inside vs outside"),
    "4": ("fig4_imports", "fresh imports inside vs outside"),
    "5": ("fig5_wsgi", "WSGI throughput under waitress"),
    "6": ("fig6_deadline", "deadline lateness, 16 concurrent requests"),
    "7": ("fig7_memory", "RSS growth over many requests"),
    "8": ("fig8_isolation", "OS-level confinement (--isolation os) vs in-process"),
}


def machine() -> dict[str, str]:
    import os

    model = "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"nproc": str(os.cpu_count()), "cpu": model,
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "platform": platform.platform()}


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if value != value:  # NaN
        return "nan"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    return f"{value:.{digits}g}"


def table(rows: list[Row]) -> str:
    header = ("Fig", "Measure", "Value", "Unit", "Baseline", "Baseline value", "Ratio",
              "Target", "Result")
    lines = []
    for row in rows:
        result = "PASS" if row.passed else ("MISS" if row.passed is False else "info")
        ratio = "-" if row.ratio is None else f"{row.ratio:.3g}x"
        lines.append((row.figure, row.measure, _fmt(row.value), row.unit, row.baseline_name,
                      _fmt(row.baseline), ratio, row.target, result))
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines, strict=True)]

    def fmt_line(cells: tuple[str, ...]) -> str:
        return " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [fmt_line(header), "-+-".join("-" * w for w in widths)]
    out.extend(fmt_line(line) for line in lines)
    notes = [f"  [{r.figure}] {r.measure}: {r.note}" for r in rows if r.note]
    if notes:
        out.append("")
        out.append("Notes:")
        out.extend(notes)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="fewer repetitions (under a minute)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--only", metavar="FIGS", default="",
                        help="comma-separated figure numbers, e.g. 1,3")
    args = parser.parse_args(argv)
    selected = [f.strip() for f in args.only.split(",") if f.strip()] or list(FIGURES)
    unknown = [f for f in selected if f not in FIGURES]
    if unknown:
        parser.error(f"unknown figure(s) {', '.join(unknown)}; choose from 1-8")

    info = machine()
    print(f"machine: nproc={info['nproc']}  cpu={info['cpu']}  python={info['python']}  "
          f"({info['platform']})", flush=True)
    print(f"mode: {'quick' if args.quick else 'full'}", flush=True)
    rows: list[Row] = []
    started = time.perf_counter()
    for number in selected:
        module_name, title = FIGURES[number]
        print(f"figure {number}: {title} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(f"benchmarks.{module_name}")
            rows.extend(module.run(args.quick))
        except Exception as error:  # report it in the table, keep the other figures
            traceback.print_exc()
            rows.append(Row(number, f"{title}: ERROR", None, "", "-", None, None, "-", False,
                            f"{type(error).__name__}: {error}"[:200]))
        print(f"figure {number}: {time.perf_counter() - t0:.1f} s", file=sys.stderr,
              flush=True)
    print()
    print(table(rows))
    total = time.perf_counter() - started
    misses = sum(1 for r in rows if r.passed is False)
    print(f"\n{len(rows)} rows, {misses} MISS, {total:.0f} s")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"machine": info, "quick": args.quick, "seconds": total,
                       "rows": [r.as_dict() for r in rows]}, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
