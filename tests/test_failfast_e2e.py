"""Fail fast and restart in place, end to end: generated manifests on the local runner,
one `jobset-run` per pod joined through the authenticated group channel."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jobset_runtime import contract, manifests
from jobset_runtime.manifests.cli import dump_yaml

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="pods in network namespaces need root")

BIN = Path(sys.executable).parent
TOKEN = "a-test-token-of-at-least-16-bytes"
HOSTS = ["ff-worker-0-0", "ff-worker-0-1", "ff-worker-1-0", "ff-worker-1-1"]  # ranks 0..3


def run_jobset(tmp_path, program: str, tree: str = "auto", **options):
    assert (BIN / "jobset-run").exists(), "install the project into this environment first (./dev test does)"
    docs = manifests.jax(name="ff", image="ignored", hosts=2, replicas=2, max_restarts=0,
                         command=[sys.executable, "-c", program], group_token=TOKEN, **options)
    container = docs[-1]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]
    cut = container["command"].index("--")
    container["command"][cut:cut] = ["--group-tree", tree]  # tree: each Job's pod 0 relays its slice
    path = tmp_path / "ff.yaml"
    path.write_text(dump_yaml(docs))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    r = subprocess.run([str(BIN / "jobset-runtime"), "local", "run", str(path), "--timeout", "90",
                        "--run-dir", str(tmp_path / "run")], env=env, capture_output=True, text=True, timeout=150)
    return r, r.stdout + r.stderr


def exit_codes(out: str) -> dict:
    """{hostname: [exit codes of its pods, in order]} from the runner's event lines."""
    codes = {}
    for pod, code in re.findall(r"pod (ff-worker-\d-\d)-\w{5} failed \(exit codes main=(\d+)\)", out):
        codes.setdefault(pod, []).append(int(code))
    return codes


def wrapper_exit_codes(out: str) -> dict:
    """{hostname: exit code} from each wrapper's last line, also for a pod the controller was
    already stopping (after the JobSet failed) when its wrapper finished."""
    return {pod: int(code) for pod, code in
            re.findall(r"^\[(ff-worker-\d-\d)-\w{5}\] jobset-run\[.*; exit code (\d+)$", out, flags=re.M)}


def termination_messages(out: str) -> dict:
    return dict(re.findall(r"pod (ff-worker-\d-\d)-\w{5}: termination message: (.*)", out))


@pytest.mark.parametrize("tree", ["off", "on"])
def test_a_killed_rank_stops_every_pod_and_each_names_it(tmp_path, tree):
    program = ("import os, signal, time\n"
               "if os.environ['JOBSET_RUNTIME_RANK'] == '2':\n"
               "    time.sleep(1); os.kill(os.getpid(), signal.SIGKILL)\n"
               "time.sleep(120)\n")
    r, out = run_jobset(tmp_path, program, tree)
    assert r.returncode == 1, out[-4000:]
    assert "ff     Failed" in out
    # With the tree, each slice's leader relays; the slices join the leaders' group.
    assert (out.count("members of the slice joined") == 2) == (tree == "on"), out[-4000:]
    codes = exit_codes(out)
    assert codes["ff-worker-1-0"][0] == 128 + 9  # the root cause keeps its own code
    # Every other wrapper exits with the peer-failed code (the runner may already be stopping
    # a pod when its wrapper finishes, as a cluster would once the JobSet has failed).
    assert wrapper_exit_codes(out) == {"ff-worker-0-0": 75, "ff-worker-0-1": 75, "ff-worker-1-0": 137,
                                       "ff-worker-1-1": 75}, out[-4000:]
    assert all(codes[h][0] == contract.EXIT_PEER_FAILED for h in codes if h != "ff-worker-1-0"), codes
    messages = termination_messages(out)
    for host in HOSTS:
        assert "rank 2 (pod ff-worker-1-0) failed first with exit code 137" in messages[host], (host, messages)
        if host != "ff-worker-1-0":
            assert "stopped because a peer failed" in messages[host]


def test_when_the_coordinator_pod_dies_every_member_exits(tmp_path):
    # Rank 0's command kills its pod's wrapper (the group's coordinator), then itself.
    program = ("import os, signal, time\n"
               "if os.environ['JOBSET_RUNTIME_RANK'] == '0':\n"
               "    time.sleep(1); os.kill(os.getppid(), signal.SIGKILL); os.kill(os.getpid(), signal.SIGKILL)\n"
               "time.sleep(120)\n")
    r, out = run_jobset(tmp_path, program)
    assert r.returncode == 1, out[-4000:]
    codes = wrapper_exit_codes(out)
    messages = termination_messages(out)
    for host in HOSTS[1:]:
        # Every member's group channel sees the coordinator go ...
        log = [line for line in out.splitlines() if line.startswith(f"[{host}-")]
        assert any("abort" in line and "lost the group coordinator" in line for line in log), (host, out[-4000:])
        # ... and it exits 75 saying so, unless the runner, which fails the JobSet the moment
        # the coordinator's pod fails, stopped it first (SIGTERM, 143), as a controller may.
        if codes.get(host) == 143:
            assert any("received SIGTERM" in line for line in log), (host, out[-4000:])
        else:
            assert codes.get(host) == contract.EXIT_PEER_FAILED, (host, out[-4000:])
            assert "lost the group coordinator" in messages[host], (host, messages)


@pytest.mark.parametrize("tree", ["off", "on"])
def test_in_place_restart_completes_in_the_same_pods(tmp_path, tree):
    # Rank 1 fails on epochs 0 and 1; every pod records (epoch, its IP) each time it starts.
    log = tmp_path / "starts"
    log.mkdir()
    # (Written then renamed: a child stopped by a peer's abort must not leave half a record.)
    program = ("import os, socket\n"
               "epoch = os.environ['JOBSET_RUNTIME_RESTART']\n"
               f"path = os.path.join({str(log)!r}, socket.gethostname() + '-' + epoch)\n"
               "open(path + '.tmp', 'w').write(os.environ['JOBSET_RUNTIME_POD_IP'])\n"
               "os.replace(path + '.tmp', path)\n"
               "if os.environ['JOBSET_RUNTIME_RANK'] == '1' and int(epoch) < 2:\n"
               "    raise SystemExit(3)\n")
    r, out = run_jobset(tmp_path, program, tree, in_place_restarts=2)
    assert r.returncode == 0, out[-4000:]
    assert re.search(r"ff\s+Completed\s+0\s", out), out[-2000:]  # no JobSet restart
    assert exit_codes(out) == {}  # no pod failed, none was recreated
    # Rank 1 ran all three epochs; a peer may skip an epoch whose abort came before its start.
    assert sorted(p.name for p in log.glob("ff-worker-0-1-?")) == [f"ff-worker-0-1-{e}" for e in range(3)]
    for host in HOSTS:
        assert (log / f"{host}-2").exists(), host  # everyone ran the last, successful epoch
        ips = {p.read_text() for p in log.glob(f"{host}-?")}
        assert len(ips) == 1, (host, ips)  # in the same pod, with the same IP


@pytest.mark.parametrize("tree", ["off", "on"])
def test_with_the_group_channel_the_slice_wait_is_the_gang_start(tmp_path, tree):
    # `--wait slice`: no DNS wait of the wrapper's own before the group joins; the start vouches for
    # the names, and the command finds every pod's name resolved when it starts.
    program = ("import os, socket\n"
               "sub = os.environ['JOBSET_RUNTIME_FQDN'].split('.', 1)[1]\n"
               f"for h in {HOSTS!r}:\n"
               "    socket.gethostbyname(h + '.' + sub)\n")
    r, out = run_jobset(tmp_path, program, tree, wait="slice")
    assert r.returncode == 0, out[-4000:]
    assert re.search(r"ff\s+Completed\s+0\s", out), out[-2000:]
    logs = {p.name: p.read_text() for p in (tmp_path / "run").glob("ff-worker-*.log")}
    assert len(logs) == len(HOSTS), sorted(logs)
    # wait_for_scope logs "waiting for N hosts (slice)" when it runs: the wrappers' own wait did not.
    assert not [name for name, text in logs.items() if re.search(r"waiting for \d+ hosts? \(", text)], logs
    assert any("members joined; start" in text or "every slice joined; start" in text for text in logs.values()), logs
