"""Shared helpers: the method (CPU clocks, alternating rounds, paired ratios, median and IQR),
result rows, child processes. Never imports gae_sandbox.

The method, in short (benchmarks/README.md has the long form):

* work is timed in **CPU time**, not wall-clock time: ``thread_time_ns`` for a loop in one
  thread, ``process_time_ns`` when the work spans threads, and for a server in a child process
  the CPU of that process and its children read from ``/proc`` (:class:`ProcessTreeCPU`);
* a figure runs its baseline (A) and candidate (B) in **alternating rounds** (:func:`schedule`:
  A B, B A, A B, ...), each round measuring both;
* each round gives one **paired ratio** (B/A of that round); a row prints the **median** of
  the ratios and their **interquartile range** (:func:`spread`), and meets its target or not
  by the median.
"""

from __future__ import annotations

import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
#: wall clock: only where the quantity is a time of day (deadline lateness, req/s)
now_ns = time.perf_counter_ns
#: CPU time of the calling thread: in-process loops
cpu_ns = time.thread_time_ns
#: CPU time of the whole process (every thread): work that spans threads
process_cpu_ns = time.process_time_ns

#: rounds of every paired figure (the issue asks for at least 8)
MIN_ROUNDS = 8


# -- statistics ---------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, q in [0, 100]."""
    data = sorted(values)
    if not data:
        return float("nan")
    rank = max(1, min(len(data), round(q / 100 * len(data) + 0.5)))
    return data[rank - 1]


@dataclass(frozen=True)
class Spread:
    """Median and quartiles of one list of numbers (``q1``/``q3`` by linear interpolation
    between the closest ranks: ``statistics.quantiles(method="inclusive")``)."""

    median: float
    q1: float
    q3: float
    n: int

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1


def spread(values: Sequence[float]) -> Spread:
    data = [float(v) for v in values]
    if not data:
        nan = float("nan")
        return Spread(nan, nan, nan, 0)
    if len(data) == 1:
        return Spread(data[0], data[0], data[0], 1)
    q1, q2, q3 = statistics.quantiles(data, n=4, method="inclusive")
    return Spread(q2, q1, q3, len(data))


def paired_ratios(baseline: Sequence[float], candidate: Sequence[float],
                  invert: bool = False) -> list[float]:
    """One ratio per round: ``candidate[i] / baseline[i]`` (``invert``: baseline/candidate,
    for "x cheaper" figures). Both lists hold one value per round, in round order."""
    if len(baseline) != len(candidate):
        raise ValueError(f"unpaired rounds: {len(baseline)} baseline, {len(candidate)} candidate")
    out = []
    for base, cand in zip(baseline, candidate, strict=True):
        top, bottom = (base, cand) if invert else (cand, base)
        out.append(top / bottom if bottom else float("nan"))
    return out


def theil_sen_slope(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, list[float]]:
    """Median of the slopes between every pair of points (Theil-Sen), and those slopes: a
    growth rate that a one-off step (a new arena) near either end does not move, while steady
    growth counts in full (a step in the middle is crossed by most pairs and does count)."""
    slopes = [(ys[j] - ys[i]) / (xs[j] - xs[i])
              for i in range(len(xs)) for j in range(i + 1, len(xs)) if xs[j] != xs[i]]
    return (median(slopes) if slopes else float("nan")), slopes


# -- scheduling ---------------------------------------------------------------------------


def schedule(rounds: int, arms: Sequence[str] = ("A", "B")) -> list[tuple[int, str]]:
    """The order to measure ``arms`` in: every round measures each arm once, and the order
    flips every other round (A B, B A, A B, B A, ...), so that the arms alternate and neither
    always runs first (or right after the other) when the machine drifts."""
    if rounds < 1 or not arms:
        raise ValueError("need at least one round and one arm")
    order: list[tuple[int, str]] = []
    for number in range(rounds):
        names = list(arms) if number % 2 == 0 else list(reversed(arms))
        order.extend((number, name) for name in names)
    return order


def alternate(arms: dict[str, Callable[[], float]], rounds: int,
              warmup: int = 1) -> dict[str, list[float]]:
    """Call every arm ``warmup`` times untimed, then in :func:`schedule` order; return one
    value per round per arm (round order)."""
    for _ in range(warmup):
        for measure in arms.values():
            measure()
    out: dict[str, list[float]] = {name: [] for name in arms}
    for _, name in schedule(rounds, tuple(arms)):
        out[name].append(float(arms[name]()))
    return out


def per_op_cpu(batch_fn: Callable[[int], Any], batch: int, samples: int = 1,
               clock: Callable[[], int] = cpu_ns) -> float:
    """Median over ``samples`` batches of the CPU ns per operation of ``batch_fn(batch)``."""
    out = []
    for _ in range(samples):
        t0 = clock()
        batch_fn(batch)
        out.append((clock() - t0) / batch)
    return median(out)


def per_op_samples(batch_fn: Callable[[int], None], batch: int, samples: int,
                   warmup: int = 3, clock: Callable[[], int] = cpu_ns) -> list[float]:
    """Run ``batch_fn(batch)`` ``warmup`` then ``samples`` times; return ns per op per sample
    (CPU time of this thread unless another ``clock`` is given)."""
    for _ in range(warmup):
        batch_fn(batch)
    out = []
    for _ in range(samples):
        t0 = clock()
        batch_fn(batch)
        out.append((clock() - t0) / batch)
    return out


def spawn_cpu_ns(argv: Sequence[str], env: dict[str, str] | None = None) -> int:
    """CPU ns of starting a process that runs ``argv`` to its end: this process's CPU around
    the spawn and wait, plus the child's user+system time (``wait4``)."""
    t0 = process_cpu_ns()
    pid = os.posix_spawn(argv[0], list(argv), dict(os.environ) if env is None else env)
    _, status, usage = os.wait4(pid, 0)
    parent = process_cpu_ns() - t0
    if status != 0:
        raise RuntimeError(f"{argv} exited with status {status}")
    return parent + round((usage.ru_utime + usage.ru_stime) * 1e9)


# -- server CPU from /proc ----------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def children_of(pid: int) -> list[int]:
    """Live child processes of ``pid`` (every thread's ``children`` list)."""
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as file:
                found += [int(p) for p in file.read().split()]
    except OSError:
        pass
    return found


def process_tree(pid: int) -> list[int]:
    """``pid`` and every live process under it."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children_of(current))
    return out


def _stat_ticks(pid: int) -> int:
    """utime + stime + cutime + cstime of ``pid`` (clock ticks): every thread it ever ran and
    the children it reaped."""
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15])


def _task_ns(pid: int) -> dict[tuple[int, int], int]:
    """Time on CPU of every live thread of ``pid``, in ns (``/proc/PID/task/TID/schedstat``)."""
    out = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as file:
                out[(pid, int(task))] = int(file.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return out


@dataclass
class CPUReading:
    ticks: int
    tasks: dict[tuple[int, int], int]


class ProcessTreeCPU:
    """CPU time of a server process and its worker children, from ``/proc``.

    Two readings: the utime+stime (+ reaped children) of every process in the tree, in clock
    ticks (complete, but 10 ms resolution), and the per-thread ``schedstat`` run time in ns
    (exact, but only for threads alive at the time). :meth:`delta_ns` uses the exact one when
    every thread of the first reading is still alive at the second, else the ticks."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.last_exact = True  # whether the last delta was exact (else ticks)

    def read(self) -> CPUReading:
        ticks, tasks = 0, {}
        for pid in process_tree(self.pid):
            try:
                ticks += _stat_ticks(pid)
                tasks.update(_task_ns(pid))
            except OSError:  # exited between the listing and the read
                continue
        return CPUReading(ticks, tasks)

    def delta_ns(self, before: CPUReading, after: CPUReading) -> int:
        # a thread (or process) started in between ran entirely inside the window: its whole
        # run time counts; one that ended took its run time with it, so use the ticks then
        self.last_exact = bool(before.tasks) and before.tasks.keys() <= after.tasks.keys()
        if self.last_exact:
            return sum(after.tasks.values()) - sum(before.tasks.values())
        return round((after.ticks - before.ticks) * 1e9 / _TICK)


# -- rows ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """``op`` is ``"<="`` or ``">="``; ``on`` says what is judged: the median paired ratio
    (``"ratio"``) or the median value (``"value"``)."""

    op: str
    limit: float
    unit: str = "x"
    on: str = "ratio"

    def meets(self, median_value: float | None) -> bool | None:
        if median_value is None or math.isnan(median_value):
            return None
        return median_value <= self.limit if self.op == "<=" else median_value >= self.limit

    def __str__(self) -> str:
        gap = "" if self.unit == "x" else " "
        return f"{self.op} {self.limit:g}{gap}{self.unit}"


@dataclass
class Row:
    """One line of the table.

    ``value`` and ``baseline`` are medians over rounds in ``unit``; ``ratio`` is the median
    paired ratio (candidate/baseline, or baseline/candidate for "x cheaper" rows); ``judged``
    says whether the target applies to ``ratio`` or ``value``, and ``q1``/``q3`` are the
    quartiles of that judged quantity over ``rounds``. ``ratios`` holds the raw paired ratios
    (``values``/``baselines`` the raw per-round values). ``passed``: the median meets the
    target (None: no target). ``also``: a second column (requests/s of server rows)."""

    figure: str
    measure: str
    value: float | None
    unit: str
    baseline_name: str
    baseline: float | None
    ratio: float | None
    target: str
    passed: bool | None
    note: str = ""
    _: KW_ONLY
    judged: str = "ratio"
    q1: float | None = None
    q3: float | None = None
    rounds: int = 0
    ratios: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    baselines: list[float] = field(default_factory=list)
    also: str = ""

    @property
    def median(self) -> float | None:
        return self.value if self.judged == "value" else self.ratio

    @property
    def iqr(self) -> float | None:
        if self.q1 is None or self.q3 is None:
            return None
        return self.q3 - self.q1

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["median"] = self.median
        out["iqr"] = self.iqr
        return out


def paired_row(figure: str, measure: str, *, unit: str, baseline_name: str,
               baseline: Sequence[float], candidate: Sequence[float],
               target: Target | None, invert: bool = False, scale: float = 1.0,
               note: str = "", also: str = "") -> Row:
    """A row judged by the median of the paired ratios (one per round). ``baseline`` and
    ``candidate`` are raw per-round values; ``scale`` converts them to ``unit``."""
    ratios = paired_ratios(baseline, candidate, invert=invert)
    s = spread(ratios)
    return Row(figure, measure, median(candidate) * scale, unit, baseline_name,
               median(baseline) * scale, s.median, str(target) if target else "-",
               target.meets(s.median) if target else None, note,
               judged="ratio", q1=s.q1, q3=s.q3, rounds=s.n, ratios=ratios,
               values=[v * scale for v in candidate], baselines=[v * scale for v in baseline],
               also=also)


def value_row(figure: str, measure: str, *, unit: str, values: Sequence[float],
              target: Target | None, baseline_name: str = "-",
              baseline: Sequence[float] | None = None, scale: float = 1.0, note: str = "",
              also: str = "") -> Row:
    """A row judged by the median of its per-round values (an absolute target: µs, ms, MB);
    with a ``baseline``, the paired ratios are printed too (for information)."""
    scaled = [v * scale for v in values]
    s = spread(scaled)
    ratios = paired_ratios(baseline, values) if baseline is not None else []
    return Row(figure, measure, s.median, unit, baseline_name,
               median(baseline) * scale if baseline else None,
               median(ratios) if ratios else None, str(target) if target else "-",
               target.meets(s.median) if target else None, note,
               judged="value", q1=s.q1, q3=s.q3, rounds=s.n, ratios=ratios, values=scaled,
               baselines=[v * scale for v in baseline] if baseline else [], also=also)


# -- child processes ----------------------------------------------------------------------


def run_child(module: str, *args: str, timeout: float = 300) -> Any:
    """Run ``python -m benchmarks.<module> child args...`` and parse its last stdout line as
    JSON."""
    proc = subprocess.run(
        [PYTHON, "-m", f"benchmarks.{module}", "child", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env=child_env(),
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"child benchmarks.{module} {' '.join(args)} failed ({proc.returncode}):\n"
            f"{proc.stderr[-3000:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def in_fork(function: Callable[[], Any]) -> Any:
    """Run ``function`` in a forked child of this (single-threaded) process and return its
    JSON-able result: every arm of a round starts from the same parent state."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            try:
                payload = json.dumps({"ok": function()})
            except BaseException as error:  # reported to the parent
                payload = json.dumps({"error": f"{type(error).__name__}: {error}"})
            data = payload.encode()
            while data:
                data = data[os.write(writer, data):]
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(writer)
    chunks = []
    with os.fdopen(reader, "rb") as pipe:
        while chunk := pipe.read(65536):
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    if status != 0 or not chunks:
        raise RuntimeError(f"forked child exited with status {status}")
    result = json.loads(b"".join(chunks))
    if "error" in result:
        raise RuntimeError(f"forked child: {result['error']}")
    return result["ok"]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH", "")) if p
    )
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def make_app_dir() -> str:
    """A small app folder (a data file and a template) shared by the figures."""
    folder = tempfile.mkdtemp(prefix="gae_sandbox_bench_app_")
    Path(folder, "data.txt").write_text("hello from the app\n" * 20)
    Path(folder, "main.py").write_text("# the app\n")
    return folder


#: The hello-world WSGI app the server figures serve.
HELLO_APP = """
def app(environ, start_response):
    body = b"Hello, world!\\n"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
"""


def make_hello_app(prefix: str) -> str:
    """A folder with an app.yaml (python27, every URL to ``main.app``) and :data:`HELLO_APP`."""
    folder = tempfile.mkdtemp(prefix=prefix)
    Path(folder, "app.yaml").write_text("runtime: python27\napi_version: 1\nthreadsafe: true\n"
                                        "handlers:\n- url: /.*\n  script: main.app\n")
    Path(folder, "main.py").write_text(HELLO_APP)
    return folder


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def load_average() -> str:
    """``/proc/loadavg``'s 1, 5 and 15 minute load averages (the machine is shared)."""
    try:
        with open("/proc/loadavg") as file:
            return " ".join(file.read().split()[:3])
    except OSError:
        return "unknown"
