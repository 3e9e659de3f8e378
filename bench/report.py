"""Write the figures quoted in bench/README.md, docs/*.md and README.md from the results files.

Each quoted figure sits in a generated region,

    <!-- bench:NAME -->...<!-- /bench -->          one figure, inline
    <!-- bench:table:PREFIX -->...<!-- /bench -->  a table of every figure whose name starts with PREFIX
                                                   (`bench:table:` alone: all of them), in the
                                                   order the scripts recorded them

and this script rewrites what is between the markers from the newest results file under
bench/results/ that holds the figure, with its statistic, n, baseline, the command that
reproduces it and the results file it comes from.  Nothing between markers is typed by hand.

    python bench/report.py           rewrite the regions
    python bench/report.py --check   exit 1, naming the files, if any region differs
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import RESULTS_DIR, ROOT, format_stat, format_value, load  # noqa: E402

REGION = re.compile(r"<!-- bench:([^ ]*) -->(.*?)<!-- /bench -->", re.S)


def documents() -> list[Path]:
    return [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def result_files() -> list[Path]:
    """Oldest first: the names start with the run's UTC date."""
    return sorted(RESULTS_DIR.glob("*.json"))


def newest_figures(files: list[Path] | None = None) -> dict[str, tuple[dict, Path, dict]]:
    """Figure name -> (figure, its results file, that file's run), from the newest file holding it."""
    found: dict[str, tuple[dict, Path, dict]] = {}
    for path in files if files is not None else result_files():
        run = load(path)
        for name, fig in run["figures"].items():
            found[name] = (fig, path, run)
    return found


def _link(path: Path, doc: Path) -> str:
    return f"[{path.stem}]({os.path.relpath(path, doc.parent)})"


def _baseline(fig: dict) -> str:
    b = fig["baseline"]
    if not b:
        return ""
    text = f"{b['what']}: {format_stat(b)}"
    if fig["ratio"] is not None:
        text += f", ratio {fig['ratio']:.2f}x" if fig["ratio"] < 100 else f", ratio {fig['ratio']:,.0f}x"
    return text


def _figure(fig: dict) -> str:
    text = f"**{format_value(fig['value'], fig['unit'])}**"
    stat = "one run" if fig["statistic"] == "single" else f"{fig['statistic']} of {fig['n']}"
    extra = [stat] + [f"{s['statistic']} {format_value(s['value'], s['unit'])}" for s in fig["spread"]]
    return f"{text} ({'; '.join(extra)})"


def inline(name: str, figures: dict, doc: Path) -> str:
    fig, path, _ = figures[name]
    base = _baseline(fig)
    return (f"{_figure(fig)}{'; baseline ' + base if base else ''} "
            f"[`{fig['command']}`, run {_link(path, doc)}]")


def _machine(run: dict) -> str:
    m = run["machine"]
    start = f"{m['load_start'][0]:.1f}"
    end = f"{m['load_end'][0]:.1f}" if m.get("load_end") else "?"
    return (f"commit {run['commit'][:10]}{' (uncommitted changes)' if run.get('dirty') else ''}, "
            f"{run['date']}, {m['cores']} cores, load average {start} at the start and {end} at the end, "
            f"Python {m['python']}")


def table(prefix: str, figures: dict, doc: Path) -> str:
    names = [n for n in figures if n.startswith(prefix)]
    if not names:
        raise KeyError(f"no figure named {prefix}* in bench/results/")
    lines = ["", "| figure | value | baseline, same run | goal | command |", "|---|---|---|---|---|"]
    runs: dict[Path, dict] = {}
    for name in names:
        fig, path, run = figures[name]
        runs[path] = run
        lines.append(f"| {fig['what']} | {_figure(fig)} | {_baseline(fig) or '—'} | {fig['goal'] or ''} | "
                     f"`{fig['command']}` |")
    lines.append("")
    for path, run in runs.items():
        notes = [f"`{s}`: {n}" for s, info in run["scripts"].items() for n in info["notes"]
                 if any(figures[x][1] == path and figures[x][0]["script"] == s for x in names)]
        lines.append(f"Run {_link(path, doc)}: {_machine(run)}." + (" " + "; ".join(notes) + "." if notes else ""))
    lines.append("")
    return "\n".join(lines)


def render(text: str, figures: dict, doc: Path) -> str:
    def one(m: re.Match) -> str:
        key = m.group(1)
        try:
            body = table(key[len("table:"):], figures, doc) if key.startswith("table:") else inline(key, figures, doc)
        except KeyError:
            raise KeyError(f"{doc.relative_to(ROOT)}: no figure {key!r} in any results file under bench/results/")
        return f"<!-- bench:{key} -->{body}<!-- /bench -->"

    return REGION.sub(one, text)


def regions(text: str) -> list[str]:
    return [m.group(1) for m in REGION.finditer(text)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 if a region differs")
    a = ap.parse_args(argv)
    figures = newest_figures()
    stale = []
    for doc in documents():  # every page rendered before any is written: all or nothing
        text = doc.read_text()
        try:
            new = render(text, figures, doc)
        except KeyError as e:
            print(e.args[0], file=sys.stderr)
            return 1
        if new != text:
            stale.append((doc, new))
    for doc, new in stale:
        if not a.check:
            doc.write_text(new)
        print(f"{'differs' if a.check else 'rewrote'}: {doc.relative_to(ROOT)}")
    return 1 if a.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
