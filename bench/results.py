"""One results file per benchmark run: every figure with its statistic, n and same-run baseline.

Every script in bench/ records its figures through `Results`, which writes them, with the
commit, the date and the machine (cores, load average when the run started and ended,
Python), to one JSON file under bench/results/.  `./dev bench` sets $BENCH_RESULTS to one
path for all scripts, so a whole run is one file; a script run alone writes a file of its
own.  bench/report.py turns the newest files into bench/README.md's table and the figures
quoted in docs/ and README.md: no figure is typed by hand.

Statistics are named for what they are: `median`, `p90`, `p99` (only from 100 samples or
more), `max` and `min` (with n), `single` (one measurement).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
RESULTS_ENV = "BENCH_RESULTS"  # one file for every script of a `./dev bench` run
STATISTICS = ("median", "p90", "p99", "max", "min", "single")
P99_MIN_SAMPLES = 100  # below this a "p99" is the max: say so
COUNTS = ("queries", "hosts", "fds", "threads")  # units of things counted: whole numbers


def percentile(values, q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least q % of the samples at or below it."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no samples")
    rank = -(-len(ordered) * q // 100)  # ceil
    return ordered[int(min(len(ordered), max(1, rank))) - 1]


@dataclass(frozen=True)
class Stat:
    """One number: value in `unit`, what statistic of how many samples it is."""

    value: float
    unit: str
    statistic: str
    n: int

    def __post_init__(self):
        if self.statistic not in STATISTICS:
            raise ValueError(f"statistic {self.statistic!r}: one of {', '.join(STATISTICS)}")
        if self.statistic == "p99" and self.n < P99_MIN_SAMPLES:
            raise ValueError(f"a p99 of {self.n} samples is their max: call it max")

    @classmethod
    def median(cls, samples, unit: str) -> "Stat":
        s = sorted(samples)
        mid = len(s) // 2
        value = s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2
        return cls(value, unit, "median" if len(s) > 1 else "single", len(s))

    @classmethod
    def p90(cls, samples, unit: str) -> "Stat":
        return cls(percentile(samples, 90), unit, "p90", len(samples))

    @classmethod
    def tail(cls, samples, unit: str) -> "Stat":
        """p99 from 100 samples or more, else the max, named as such."""
        if len(samples) >= P99_MIN_SAMPLES:
            return cls(percentile(samples, 99), unit, "p99", len(samples))
        return cls(max(samples), unit, "max", len(samples))

    @classmethod
    def max(cls, samples, unit: str) -> "Stat":
        return cls(max(samples), unit, "max", len(samples))

    @classmethod
    def min(cls, samples, unit: str) -> "Stat":
        return cls(min(samples), unit, "min", len(samples))

    @classmethod
    def single(cls, value: float, unit: str) -> "Stat":
        return cls(value, unit, "single", 1)

    def scaled(self, factor: float, unit: str) -> "Stat":
        return Stat(self.value * factor, unit, self.statistic, self.n)


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> dict:
    return {
        "cores": os.cpu_count(),
        "load_start": list(os.getloadavg()),
        "load_end": None,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def new_run() -> dict:
    commit = _git("rev-parse", "HEAD")
    return {
        "commit": commit,
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "scripts": {},
        "figures": {},
    }


def new_path(run: dict) -> Path:
    stamp = run["date"].replace(":", "").replace("-", "")
    return RESULTS_DIR / f"{stamp}-{(run['commit'] or 'nocommit')[:10]}.json"


def load(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


def _write(path: Path, run: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(run, f, indent=1)  # figures in the order they were recorded
        f.write("\n")
    os.replace(tmp, path)


def start_shared_run() -> Path:
    """For `./dev bench`: a new results file that every script of the run adds to."""
    run = new_run()
    path = new_path(run)
    _write(path, run)
    return path


class Results:
    """The figures of one script, added to the run's file when it is written.

    `script` is the file name in bench/; `argv` the arguments it was run with, so that the
    command printed next to each figure reproduces it."""

    def __init__(self, script: str, argv: list[str] | None = None):
        self.script = Path(script).name
        args = sys.argv[1:] if argv is None else list(argv)
        self.command = shlex.join(["python", f"bench/{self.script}", *args])
        self.figures: dict[str, dict] = {}
        self.notes: list[str] = []
        shared = os.environ.get(RESULTS_ENV)
        self.path = Path(shared) if shared else None
        self._run = load(self.path) if self.path and self.path.exists() else new_run()
        if self.path is None:
            self.path = new_path(self._run)

    def add(self, name: str, what: str, figure: Stat, *, baseline: Stat | None = None, baseline_what: str = "",
            spread: list[Stat] | tuple[Stat, ...] = (), goal: str = "") -> None:
        """Record one figure.  `name` is dotted and unique in the run (the docs quote it by name);
        `what` says what was timed; `spread` holds more statistics of the same samples (p90, max);
        `baseline` is measured in the same run, and its ratio is recorded."""
        if name in self.figures:
            raise ValueError(f"figure {name} recorded twice")
        if baseline is not None and not baseline_what:
            raise ValueError(f"figure {name}: say what the baseline is")
        entry = {"script": self.script, "command": self.command, "what": what, **asdict(figure),
                 "spread": [asdict(s) for s in spread], "goal": goal, "baseline": None, "ratio": None}
        if baseline is not None:
            entry["baseline"] = {"what": baseline_what, **asdict(baseline)}
            if baseline.unit == figure.unit and baseline.value:
                entry["ratio"] = figure.value / baseline.value
        self.figures[name] = entry
        print(f"  [{name}] {format_stat(figure)}"
              + (f"   baseline {format_stat(baseline)}" if baseline is not None else ""), flush=True)

    def note(self, text: str) -> None:
        """A condition of this run a reader needs (e.g. a smaller size than the default)."""
        self.notes.append(text)

    def write(self) -> Path:
        run = load(self.path) if self.path.exists() else self._run
        run["machine"]["load_end"] = list(os.getloadavg())
        run["scripts"][self.script] = {"command": self.command, "notes": self.notes}
        run["figures"].update(self.figures)
        _write(self.path, run)
        print(f"results: {self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path}")
        return self.path


# --- formatting, shared with report.py -------------------------------------------------

def format_value(value: float, unit: str) -> str:
    if unit in ("names/s", "frames/s", "MB", "MB/s", "/s") or unit in COUNTS:
        if unit in COUNTS and value == int(value):
            return f"{value:,.0f} {unit}"
        return f"{value:,.0f} {unit}" if value >= 100 else f"{value:.1f} {unit}"
    if unit == "%":
        return f"{value:.1f} %"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "us":
        return f"{value:.0f} µs" if abs(value) >= 10 else f"{value:.2f} µs"
    if unit in ("s", "ms"):
        ms = value * 1e3 if unit == "s" else value
        if abs(ms) >= 1000:
            return f"{ms / 1e3:.2f} s"
        if abs(ms) >= 10:
            return f"{ms:.0f} ms"
        return f"{ms:.1f} ms" if abs(ms) >= 1 else f"{ms:.2f} ms"
    return f"{value:.3g} {unit}"


def format_stat(s: Stat | dict) -> str:
    d = asdict(s) if isinstance(s, Stat) else s
    value = format_value(d["value"], d["unit"])
    if d["statistic"] == "single":
        return f"{value} (one run)"
    return f"{value} ({d['statistic']} of {d['n']})"


def main(argv=None) -> int:
    """For `./dev bench`: `--new` creates the run's file and prints its path; `--failed SCRIPT RC`
    records a script that did not finish, so the file says which figures are missing and why."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--new", action="store_true")
    ap.add_argument("--failed", nargs=2, metavar=("SCRIPT", "RC"))
    a = ap.parse_args(argv)
    if a.new:
        print(start_shared_run())
    if a.failed:
        path = Path(os.environ[RESULTS_ENV])
        run = load(path)
        script, rc = Path(a.failed[0]).name, int(a.failed[1])
        entry = run["scripts"].setdefault(script, {"command": f"python bench/{script}", "notes": []})
        entry["notes"].append(f"did not finish (exit code {rc}): its figures are missing from this run")
        run["machine"]["load_end"] = list(os.getloadavg())
        _write(path, run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
