"""The figures in README.md, docs/ and bench/README.md are the newest results files' (bench/report.py).

Behaviour, not timings: a page whose generated region differs from what the results say
fails, so a figure typed by hand cannot stay; and the results module names its statistics
for what they are."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import report  # noqa: E402
import results  # noqa: E402


def test_every_page_matches_the_newest_results():
    assert report.result_files(), "no results file under bench/results/: run ./dev bench"
    figures = report.newest_figures()
    stale = [str(doc.relative_to(report.ROOT)) for doc in report.documents()
             if report.render(doc.read_text(), figures, doc) != doc.read_text()]
    assert not stale, f"figures differ from bench/results/ in {stale}: run python bench/report.py"


def test_every_page_quotes_figures_through_regions():
    quoted = {str(doc.relative_to(report.ROOT)): report.regions(doc.read_text()) for doc in report.documents()}
    assert "table:" in quoted["bench/README.md"]  # every figure of the run
    assert quoted["README.md"]
    for page in ("fail-fast.md", "peers.md", "manifests.md", "local-runner.md", "mpi.md", "jax.md"):
        assert quoted[f"docs/{page}"], f"docs/{page} quotes no generated figure"


@pytest.fixture
def two_runs(tmp_path, monkeypatch):
    """Two results files written through bench/results.py, the second newer."""
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path)
    old = results.Results("wrapper_overhead.py", ["--runs", "3"])
    old.path = tmp_path / "20260101T000000Z-aaaaaaaaaa.json"
    old.add("wrapper.default", "added by the wrapper", results.Stat.median([0.30, 0.31, 0.32], "s"),
            baseline=results.Stat.median([0.001, 0.001, 0.002], "s"), baseline_what="`true` alone")
    old.add("dns.batch", "names/s", results.Stat.single(50_000.0, "names/s"))
    old.write()
    new = results.Results("wrapper_overhead.py", ["--runs", "3"])
    new.path = tmp_path / "20260102T000000Z-bbbbbbbbbb.json"
    new.add("wrapper.default", "added by the wrapper", results.Stat.median([0.05, 0.06, 0.07], "s"),
            baseline=results.Stat.median([0.001, 0.001, 0.001], "s"), baseline_what="`true` alone")
    new.write()
    return sorted(tmp_path.glob("*.json"))


def test_each_figure_comes_from_the_newest_file_holding_it(two_runs):
    figures = report.newest_figures(two_runs)
    doc = report.ROOT / "docs" / "x.md"
    text = report.render("<!-- bench:wrapper.default --><!-- /bench --> <!-- bench:dns.batch --><!-- /bench -->",
                         figures, doc)
    assert "**60 ms** (median of 3)" in text and "20260102T000000Z-bbbbbbbbbb" in text
    assert "**50,000 names/s** (one run)" in text and "20260101T000000Z-aaaaaaaaaa" in text
    assert "`python bench/wrapper_overhead.py --runs 3`" in text  # the command that reproduces it


def test_a_hand_typed_figure_fails_the_check(two_runs):
    figures = report.newest_figures(two_runs)
    doc = report.ROOT / "docs" / "x.md"
    good = report.render("<!-- bench:wrapper.default --><!-- /bench -->", figures, doc)
    edited = good.replace("**60 ms**", "**40 ms**")
    assert edited != good
    assert report.render(edited, figures, doc) == good  # the check sees a difference and restores it


def test_a_region_naming_an_unknown_figure_is_an_error(two_runs):
    with pytest.raises(KeyError, match="no figure 'wrapper.nope'"):
        report.render("<!-- bench:wrapper.nope --><!-- /bench -->", report.newest_figures(two_runs),
                      report.ROOT / "docs" / "x.md")


def test_one_run_writes_one_file_for_every_script(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path)
    shared = results.start_shared_run()  # what ./dev bench does, then hands the path to every script
    monkeypatch.setenv(results.RESULTS_ENV, str(shared))
    for script, name in (("a.py", "a.x"), ("b.py", "b.y")):
        r = results.Results(script, [])
        r.add(name, "w", results.Stat.single(1.0, "s"))
        assert r.write() == shared
    run = json.loads(shared.read_text())
    assert set(run["figures"]) == {"a.x", "b.y"} and set(run["scripts"]) == {"a.py", "b.py"}
    m = run["machine"]
    assert m["cores"] >= 1 and len(m["load_start"]) == 3 and len(m["load_end"]) == 3 and m["python"]
    assert run["commit"] and run["date"].endswith("Z")
    assert [p for p in tmp_path.iterdir() if p.suffix == ".json"] == [shared]


def test_statistics_are_named_for_what_they_are():
    twenty = [i / 1000 for i in range(1, 21)]
    assert results.Stat.tail(twenty, "s") == results.Stat(0.020, "s", "max", 20)
    hundred = [i / 1000 for i in range(1, 101)]
    assert results.Stat.tail(hundred, "s") == results.Stat(0.099, "s", "p99", 100)
    with pytest.raises(ValueError, match="call it max"):
        results.Stat(0.02, "s", "p99", 20)
    with pytest.raises(ValueError, match="statistic"):
        results.Stat(0.02, "s", "best", 3)
    assert results.Stat.median([3.0, 1.0, 2.0, 10.0], "s").value == 2.5
    assert results.percentile([5, 1, 4, 2, 3], 90) == 5 and results.percentile([5, 1, 4, 2, 3], 50) == 3


def test_a_figure_with_a_baseline_says_what_it_is_and_its_ratio(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path)
    r = results.Results("x.py", [])
    with pytest.raises(ValueError, match="say what the baseline is"):
        r.add("x", "w", results.Stat.single(2.0, "s"), baseline=results.Stat.single(1.0, "s"))
    r.add("x", "w", results.Stat.single(2.0, "s"), baseline=results.Stat.single(0.5, "s"), baseline_what="b")
    assert r.figures["x"]["ratio"] == 4.0 and r.figures["x"]["baseline"]["what"] == "b"
    with pytest.raises(ValueError, match="twice"):
        r.add("x", "w", results.Stat.single(2.0, "s"))
