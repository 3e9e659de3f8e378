"""bench/scale_group.py at a few hundred members: the tree and the flat group beside it get through a gang
start and kills with in-place restarts, members sharing a reactor thread per process, and every figure is
recorded with the flat group as its baseline (figures are checked for presence and sense, never for speed)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_a_few_hundred_members_start_and_restart_in_place_through_kills(tmp_path):
    raw, results = tmp_path / "scale.json", tmp_path / "results.json"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "scale_group.py"), "--pods", "320", "--slices", "5",
                        "--flat-pods", "128", "256", "--kills", "3", "--flat-kills", "2", "--per-proc", "64", "--leader-procs", "2",
                        "--heartbeat", "1", "--deadline", "20", "--json", str(raw)],
                       capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), BENCH_RESULTS=str(results)))
    report = json.loads(raw.read_text())
    tree, flats = report["tree"], report["flat"]
    assert p.returncode == 0 and tree["broke"] is None, (tree["broke"], p.stderr[-2000:])
    assert [f["pods"] for f in flats] == [128, 256] and not any(f["broke"] for f in flats)
    assert tree["kills_done"] == 3 and all(f["kills_done"] == 2 for f in flats)
    for g in (tree, *flats):
        assert g["gang_start_s"] >= 0
        # The gang start's CPU, by role (in clock ticks: a server of a few leaders may spend less
        # than one): members join in every group, leaders only in the tree.
        cpu = g["gang_start_cpu_s"]
        assert cpu["members"] > 0 and cpu["coordinator"] + cpu["leaders"] > 0
        assert g["tree"] or cpu["leaders"] == 0
        assert all(0 < a <= r * 1000 for a, r in zip(g["kill_to_last_abort_ms"], g["inplace_restart_s"]))
        # Every member has its own connection; the members of a process share one reactor thread.
        assert g["member_process"]["threads"] <= 3
        assert g["member_process"]["fds"] >= 64
    assert tree["tree"] and tree["slices"] == 5 and tree["leader_processes"] == 2
    # The coordinator holds a connection per leader in the tree, per member when flat.
    assert tree["coordinator"]["fds"] < 64 and flats[-1]["coordinator"]["fds"] >= 256
    assert tree["leader_process"]["fds"] >= 320 // 2

    figures = json.loads(results.read_text())["figures"]
    for name in ("gang_start", "gang_start_cpu.servers", "gang_start_cpu.members", "kill_to_last_abort", "inplace_restart", "coordinator_cpu", "coordinator.fds"):
        fig = figures[f"scale.tree.{name}"]
        # The baseline is the largest flat group that got through, measured in the same run.
        assert fig["baseline"]["what"].startswith("flat 256"), fig
        assert fig["ratio"] is not None or fig["baseline"]["value"] == 0
    assert figures["scale.tree.kill_to_last_abort"]["statistic"] == "max"  # 3 kills: no p99 to speak of
    assert figures["scale.tree.kill_to_last_abort"]["n"] == 3
    assert figures["scale.tree.leader.fds"]["baseline"] is None  # a flat group has no leader
