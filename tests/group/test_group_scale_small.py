"""bench/scale_group.py at a few hundred members: the tree and the flat group get through a gang start
and kills with in-place restarts, and every figure is written (figures are checked for presence and
sense, never for speed)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.mark.parametrize("slices", [4, 1])
def test_a_few_hundred_members_start_and_restart_in_place_through_kills(tmp_path, slices):
    out = tmp_path / "scale.json"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "scale_group.py"), "--pods", "256", "--slices",
                        str(slices), "--kills", "3", "--per-proc", "64", "--leader-procs", "2",
                        "--heartbeat", "1", "--deadline", "20", "--json", str(out)],
                       capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    report = json.loads(out.read_text())
    assert p.returncode == 0 and report["broke"] is None, (report["broke"], p.stderr[-2000:])
    assert report["kills_done"] == 3 and report["tree"] is (slices > 1)
    assert report["gang_start_s"] >= 0
    lat = report["kill_to_last_abort_ms"]
    assert 0 < lat["p50"] <= lat["p99"] <= lat["max"]
    assert 0 < report["inplace_restart_s"]["p50"] <= report["inplace_restart_s"]["max"]
    # Each member has its own connection: the server holding them has a descriptor per member.
    holder = report["leader_process"] if slices > 1 else report["coordinator"]
    assert holder["fds"] >= 256 / max(1, report["leader_processes"] or 1)
    assert report["per_member"]["threads"] >= 2 and report["coordinator_cpu_s"] is not None
