"""``python -m benchmarks [--quick] [--json FILE] [--only 1,3]``: print one table.

Every figure is measured against a baseline taken in the same run, in CPU time, over
alternating rounds; each row prints the median of its per-round (paired) ratios with their
interquartile range, and MEETS or MISS for its target by that median. Nothing here asserts: a
MISS is a finding, not a failure. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import re
import sys
import time
import traceback
from pathlib import Path

from ._common import Row, load_average

FIGURES = {
    "1": ("fig1_enter_exit", "sandbox enter+exit"),
    "2": ("fig2_host_tax", "host-code tax after install()"),
    "3": ("fig3_sandboxed_ops", "sandboxed operations inside vs outside"),
    "4": ("fig4_imports", "fresh imports inside vs outside"),
    "5": ("fig5_wsgi", "WSGI throughput under waitress"),
    "6": ("fig6_deadline", "deadline lateness, 16 concurrent requests"),
    "7": ("fig7_memory", "RSS growth over many requests"),
    "8": ("fig8_isolation", "OS-level confinement (--isolation os) vs in-process"),
    "9": ("fig9_request_isolation", "a confined process per request (--isolation request)"),
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


def _with_unit(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{_fmt(value)} {unit}".strip()


def _ratio(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}x" if abs(value) >= 100 else f"{value:.3g}x"


def _iqr(row: Row) -> str:
    if row.q1 is None or row.q3 is None:
        return "-"
    if row.judged == "value":
        return f"{_fmt(row.q1)}-{_fmt(row.q3)} {row.unit}".strip()
    return f"{_ratio(row.q1)[:-1]}-{_ratio(row.q3)}"


def _result(row: Row) -> str:
    return "MEETS" if row.passed else ("MISS" if row.passed is False else "info")


def table(rows: list[Row]) -> str:
    """Value and baseline are medians over rounds; Ratio is the median of the per-round
    paired ratios, IQR the quartiles of what the target judges (the ratios, or the values for
    an absolute target); n the rounds."""
    header = ("Fig", "Measure", "Value", "Baseline", "Ratio", "IQR", "n", "Target", "Result",
              "Also")
    lines = []
    for row in rows:
        ratio = _ratio(row.ratio)
        baseline = "-"
        if row.baseline is not None:
            baseline = f"{row.baseline_name}: {_with_unit(row.baseline, row.unit)}"
        elif row.baseline_name not in ("", "-", "target"):
            baseline = row.baseline_name
        lines.append((row.figure, row.measure, _with_unit(row.value, row.unit), baseline,
                      ratio, _iqr(row), str(row.rounds or "-"), row.target, _result(row),
                      row.also))
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


def discover() -> dict[str, tuple[str, str]]:
    """FIGURES, plus any ``benchmarks/fig<N>_<name>.py`` not listed there (titled by the first
    line of its docstring), so that a new figure runs without editing this file."""
    figures = dict(FIGURES)
    known = {module for module, _ in figures.values()}
    for path in sorted(Path(__file__).parent.glob("fig*_*.py")):
        match = re.fullmatch(r"fig(\d+[a-z]?)_\w+", path.stem)
        if not match or path.stem in known:
            continue
        number = match.group(1)
        while number in figures:
            number += "+"
        title = path.stem
        docstring = re.search(r'^"""(?:Figure [^:]*:\s*)?(.+?)$', path.read_text(), re.M)
        if docstring:
            title = docstring.group(1).strip().rstrip(".")
        figures[number] = (path.stem, title)
    return dict(sorted(figures.items(), key=lambda item: _order(item[0])))


def _order(number: str) -> tuple[int, str]:
    digits = re.match(r"\d+", number)
    return (int(digits.group()) if digits else 10**6, number)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="fewer repetitions (under a minute)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--only", metavar="FIGS", default="",
                        help="comma-separated figure numbers, e.g. 1,3")
    args = parser.parse_args(argv)
    figures = discover()
    selected = [f.strip() for f in args.only.split(",") if f.strip()] or list(figures)
    unknown = [f for f in selected if f not in figures]
    if unknown:
        parser.error(f"unknown figure(s) {', '.join(unknown)}; choose from "
                     f"{', '.join(figures)}")

    info = machine()
    load_before = load_average()
    print(f"machine: nproc={info['nproc']}  cpu={info['cpu']}  python={info['python']}  "
          f"({info['platform']})", flush=True)
    print(f"mode: {'quick' if args.quick else 'full'}; load average at start: {load_before}",
          flush=True)
    rows: list[Row] = []
    started = time.perf_counter()
    cpu_started = time.process_time()
    for number in selected:
        module_name, title = figures[number]
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
    load_after = load_average()
    meets = sum(1 for r in rows if r.passed)
    misses = sum(1 for r in rows if r.passed is False)
    print(f"\n{len(rows)} rows: {meets} MEETS, {misses} MISS; {total:.0f} s wall; "
          f"load average {load_before} at start, {load_after} at the end "
          f"(nproc {info['nproc']})")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"machine": info, "quick": args.quick, "seconds": total,
                       "main_process_cpu_seconds": time.process_time() - cpu_started,
                       "load_average": {"start": load_before, "end": load_after},
                       "method": "CPU time; alternating rounds (A B, B A, ...); per row the "
                                 "median and quartiles of the per-round paired ratios "
                                 "(or of the per-round values for an absolute target)",
                       "rows": [r.as_dict() for r in rows]}, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
