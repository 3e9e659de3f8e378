"""The generated `mpi` manifest run by the local JobSet runner (`jobset-runtime local run`).

1 launcher + 3 workers x 2 slots; pods in their own network, UTS and mount
namespaces with real DNS; the Secret mounted where the manifest says; real mpirun.
"""

import collections
import json
import re
from pathlib import Path

import pytest

import mpifixtures as c
from jobset_runtime import manifests


def run_manifest(tmp_path, mpi: c.Mpi, program: list, *, timeout=90, launcher_args=(), runner_args=(), edit=None,
                 **options):
    docs = manifests.mpi(name="pi", image="unused", command=program, workers=3, slots_per_worker=2, mpi=mpi.family,
                           **options)
    if launcher_args:  # options the generator does not expose, put before the launcher's `--`
        for doc in docs:
            for rj in doc.get("spec", {}).get("replicatedJobs", []):
                if rj["name"] == "launcher":
                    cmd = rj["template"]["spec"]["template"]["spec"]["containers"][0]["command"]
                    at = cmd.index("launcher") + 1
                    cmd[at:at] = list(launcher_args)
    if edit is not None:
        edit(docs)
    return c.run_on_local_runner(tmp_path, mpi, docs, timeout=timeout, runner_args=runner_args)


# What MPI_Get_library_version says in each rank: the library that really ran.
LIBRARY = {"openmpi": "Open MPI v5", "openmpi4": "Open MPI v4", "mpich": "MPICH Version:", "intel": "Intel(R) MPI Library"}


def _check_result(r, which):
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    line = next(l for l in r.stdout.splitlines() if "RESULT " in l)
    result = json.loads(line.split("RESULT ", 1)[1])
    assert result["size"] == 6 and result["sum"] == 21
    assert collections.Counter(result["hosts"]) == {f"pi-worker-0-{i}": 2 for i in range(3)}
    assert result["library"].startswith(LIBRARY[which]), result["library"]
    assert "Completed" in r.stdout.split("NAME")[-1].splitlines()[1], r.stdout[-3000:]


@pytest.mark.parametrize("by", ["ip", "fqdn"])
@pytest.mark.parametrize("which", ["openmpi", "openmpi4", "mpich", "intel"])
def test_generated_manifest_runs_allreduce(tmp_path, which, by):
    """Open MPI 5 and 4, MPICH and Intel MPI, each from its own wheel; `--mpi` names only the
    family, the version (so Open MPI 4's setting names) comes from the mpirun in the pod."""
    mpi = c.need(which)
    _check_result(run_manifest(tmp_path, mpi, ["python", c.PROG], launcher_args=["--hostfile-by", by]), which)


def _at(stdout: str, needle: str) -> float:
    """The runner's `[   1.96s] ...` time of the first line holding `needle`."""
    line = next(l for l in stdout.splitlines() if needle in l and l.startswith("["))
    return float(line[1:line.index("s]")])


VICTIM = "pi-worker-0-1"


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """One JobSet (maxRestarts 0) in which the pod of worker 1 is SIGKILLed 1 s into the run."""
    mpi = c.need("openmpi")
    return run_manifest(tmp_path_factory.mktemp("killed"), mpi, ["python", c.PROG, "--kill-pod", VICTIM, "1.0"],
                        max_restarts=0)


def test_killed_worker_fails_the_jobset_fast_naming_the_worker(killed_run):
    out = killed_run.stdout
    assert killed_run.returncode != 0, out[-3000:]
    status = out.split("NAME")[-1]
    assert "Failed" in status.splitlines()[1], status
    # The launcher says which worker went away, and ends within 5 s of it.
    assert any("pi-launcher-0-0" in l and f"MPI worker {VICTIM} went away without being stopped" in l for l in out.splitlines()), out[-3000:]
    assert _at(out, "pod pi-launcher-0-0") - _at(out, f"pod {VICTIM}") < 5, out[-3000:]


def test_killed_worker_named_in_the_launchers_termination_message(killed_run):
    msg = next(l for l in killed_run.stdout.splitlines() if "pod pi-launcher-0-0" in l and "termination message" in l)
    assert f"{VICTIM} went away without being stopped" in msg, msg


def _started(stdout: str, hostname: str) -> float:
    return _at(stdout, f"pod {hostname}-")  # the pod name is the hostname and a random suffix


def _launcher_waits_on_its_own(docs: list) -> None:
    """No dependsOn, and a wrapper that does not wait: the launcher pod starts with the
    workers' Job, and `python -m jobset_runtime.mpi launcher` alone waits for them."""
    for rj in docs[-1]["spec"]["replicatedJobs"]:
        if rj["name"] == "launcher":
            del rj["dependsOn"]
            cmd = rj["template"]["spec"]["template"]["spec"]["containers"][0]["command"]
            cmd[cmd.index("--wait") + 1] = "none"


@pytest.mark.parametrize("variant", ["dns-delay", "no-dependsOn"])
def test_launcher_started_10s_before_the_workers_dns_records_succeeds(tmp_path, variant):
    """The launcher pod starts 10 s or more before the workers' DNS records exist, and the job still succeeds.

    dns-delay: the generated manifest as it is.  Its launcher `dependsOn` the workers
    being Ready, which is a TCP probe of their pod IP and says nothing of DNS, so the
    launcher starts ~2 s after the workers; with records published 14 s late (cluster DNS
    lag, `--dns-delay`), it runs ~12 s before any worker's record exists.  Its wrapper
    (`jobset-run --wait all`) is what waits here.
    no-dependsOn: the same JobSet without dependsOn and with `--wait none`, workers started
    11 s late (`--skew`; the launcher pod itself is created a moment after the
    workers' pods): their records appear when their pods do (publishNotReadyAddresses),
    so the MPI launcher's own wait (DNS, then the worker port) is what holds mpirun back.
    """
    mpi = c.need("openmpi")
    if variant == "dns-delay":
        delay, runner_args, edit = 14.0, ["--dns-delay", "14"], None
    else:
        delay, runner_args, edit = 0.0, ["--skew", "pi-worker-*=11"], _launcher_waits_on_its_own
    r = run_manifest(tmp_path, mpi, ["python", c.PROG], runner_args=runner_args, edit=edit)
    out = r.stdout
    assert r.returncode == 0, out[-4000:] + r.stderr[-2000:]
    # The scenario: every worker's record appeared at least 10 s after the launcher started.
    launcher = _started(out, "pi-launcher-0-0")
    records = min(_started(out, f"pi-worker-0-{i}") for i in range(3)) + delay
    assert records - launcher >= 10, out[-3000:]
    waited = [l for l in out.splitlines() if l.startswith("[pi-launcher-0-0-") and "resolved 0/" in l]
    who = "jobset-run" if variant == "dns-delay" else "mpi launcher"
    assert any(f"] {who}[pi-launcher-0-0" in l and "waiting for" in l and "pi-worker-0-0.pi.default.svc" in l
               for l in waited), out[-3000:]
    # No crash loop: one launcher pod, one run, no JobSet restart.
    assert "restart-attempt 1" not in out and " restarting (restarts " not in out, out[-3000:]
    pods = {l.split("s] pod ", 1)[1].split()[0].rstrip(":") for l in out.splitlines()
            if l.startswith("[") and "s] pod pi-launcher-0-0-" in l}
    assert len(pods) == 1, pods
    line = next(l for l in out.splitlines() if "RESULT " in l)
    result = json.loads(line.split("RESULT ", 1)[1])
    assert result["size"] == 6 and result["sum"] == 21
    assert collections.Counter(result["hosts"]) == {f"pi-worker-0-{i}": 2 for i in range(3)}
    status = out.split("NAME")[-1]
    assert "Completed" in status.splitlines()[1], status


@pytest.mark.parametrize("which", ["openmpi", "openmpi4", "mpich", "intel"])
def test_daemon_killed_inside_a_live_worker_pod_fails_the_jobset_naming_the_pod(tmp_path, which):
    """Only the MPI daemon of one worker is SIGKILLed 1 s into the run (its pod and worker live
    on): Open MPI 5 then prints that it lost a remote daemon and exits 0, yet the JobSet must
    fail, and the launcher name the pod and the signal."""
    mpi = c.need(which)
    r = run_manifest(tmp_path, mpi, ["python", c.PROG, "--kill-daemon", VICTIM, "1.0"], max_restarts=0)
    out = r.stdout
    assert r.returncode != 0, out[-3000:]
    status = out.split("NAME")[-1]
    assert "Failed" in status.splitlines()[1], status
    assert "RESULT " not in out  # the program never finished
    # The worker pod itself was not lost: only its daemon (the rank's parent; Intel's
    # hydra_bstrap_proxy runs on as hydra_pmi_proxy).
    assert f"MPI worker {VICTIM} went away" not in out, out[-3000:]
    msg = next(l for l in out.splitlines() if "pod pi-launcher-0-0" in l and "termination message" in l)
    daemon = {"openmpi": "prted", "openmpi4": "orted"}.get(which, "hydra_pmi_proxy")
    assert re.search(rf"MPI daemon {daemon} \(pid \d+\) in worker pod {VICTIM}-[a-z0-9]+ \({VICTIM}\) "
                     r"was killed by SIGKILL while the run was live", msg), msg


SPAWN_PROG = str(Path(__file__).with_name("spawn_prog.py"))


def test_spare_slots_from_the_generator_let_mpi_comm_spawn_run(tmp_path):
    """`--np 4` on 3 workers x 2 slots leaves 2 free slots, where MPI_Comm_spawn puts its
    2 children (MPICH: one more hydra_pmi_proxy per spawn, each reported and ending cleanly)."""
    mpi = c.need("mpich")
    r = run_manifest(tmp_path, mpi, ["python", SPAWN_PROG], np=4)
    out = r.stdout
    assert r.returncode == 0, out[-4000:] + r.stderr[-2000:]
    line = next(l for l in out.splitlines() if "SPAWNED " in l)
    result = json.loads(line.split("SPAWNED ", 1)[1])
    assert result["parents"] == 4
    assert len(result["hosts"]) == 2 and all(h.startswith("pi-worker-0-") for h in result["hosts"]), result
    assert "Completed" in out.split("NAME")[-1].splitlines()[1], out[-3000:]


def test_yield_when_idle_reaches_every_open_mpi_rank(tmp_path):
    """Pods given fewer CPUs than slots (--cpu 1, 2 slots): the generator sets Open MPI's
    mpi_yield_when_idle, and every rank, started by a worker's daemon, has it."""
    mpi = c.need("openmpi")
    r = run_manifest(tmp_path, mpi, ["python", c.PROG], cpu="1")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    line = next(l for l in r.stdout.splitlines() if "RESULT " in l)
    result = json.loads(line.split("RESULT ", 1)[1])
    assert result["size"] == 6 and result["yield"] == ["1"] * 6, result


# --- IPv6-only and dual-stack pods (`local run --ip-family ipv6|dual`) -------------------

V6 = r"fd6a:7372::[0-9a-f]+"  # the local runner's IPv6 pod prefix
V4 = r"198\.18\.\d+\.\d+"     # and its IPv4 one
FQDN = r"pi-worker-0-\d\.pi\.default\.svc\.cluster\.local"


def _pod_ips(stdout: str) -> list[str]:
    return re.findall(r"\] pod pi-\S+ started, ip (\S+)", stdout)


@pytest.mark.parametrize("which, family, by, line", [
    ("openmpi", "ipv6", "auto", rf"{V6} slots=2"),       # PRRTE reads IPv6 addresses
    ("openmpi", "ipv6", "fqdn", rf"{FQDN} slots=2"),
    ("openmpi4", "ipv6", "auto", rf"{FQDN} slots=2"),    # ORTE refuses them: by name
    ("intel", "ipv6", "auto", V6),                       # -v6, the address alone, I_MPI_PERHOST=2
    ("intel", "ipv6", "fqdn", rf"{FQDN}:2"),
    ("openmpi", "dual", "auto", rf"{V6} slots=2"),
    ("openmpi4", "dual", "auto", rf"{FQDN} slots=2"),
    ("mpich", "dual", "auto", rf"{V4}:2"),               # Hydra speaks IPv4 only: the pods' IPv4 addresses
    ("intel", "dual", "auto", V6),
])
def test_generated_manifest_on_ipv6_pods(tmp_path, which, family, by, line):
    """Every MPI that can run on IPv6-only or IPv6-first dual-stack pods does, with 2 ranks on
    each of 3 workers, and the hostfile names the workers the way that MPI reads them."""
    mpi = c.need(which)
    hostfile = tmp_path / "hostfile"
    args = ["--hostfile", str(hostfile), *([] if by == "auto" else ["--hostfile-by", by])]
    r = run_manifest(tmp_path, mpi, ["python", c.PROG], launcher_args=args, runner_args=["--ip-family", family])
    _check_result(r, which)
    ips = _pod_ips(r.stdout)
    assert len(ips) == 4 and all(re.fullmatch(V6, ip) for ip in ips), ips  # status.podIP: IPv6 first
    lines = hostfile.read_text().splitlines()
    assert len(lines) == 3 and all(re.fullmatch(line, l) for l in lines), lines
    if which == "intel" and by == "auto":
        assert re.search(r"running \S+/mpirun -iface eth0 -v6 -n 6 ", r.stdout), r.stdout[-3000:]


def _termination(stdout: str, pod: str) -> str:
    return next(l for l in stdout.splitlines() if f"pod {pod}" in l and "termination message" in l)


@pytest.mark.parametrize("which, by, says", [
    ("mpich", "auto", r"mpich \S+ cannot run here: its process manager \(Hydra's mpiexec and proxies\) connects "
                      r"over IPv4 only, and pi-worker-0-0, .* no IPv4 address in DNS"),
    ("openmpi4", "ip", r"--hostfile-by ip on IPv6 pods: openmpi 4\.\S+ refuses a host named by an IPv6 address "
                       r".*use --hostfile-by fqdn"),
])
def test_what_cannot_run_on_ipv6_only_pods_fails_the_jobset_saying_why(tmp_path, which, by, says):
    """MPICH (IPv4-only Hydra) on IPv6-only pods, and Open MPI 4 asked for IPv6 addresses in its
    hostfile: the launcher exits 2 at once with the reason and the fix, and the generated failure
    policy fails the JobSet instead of restarting it."""
    mpi = c.need(which)
    args = [] if by == "auto" else ["--hostfile-by", by]
    r = run_manifest(tmp_path, mpi, ["python", c.PROG], launcher_args=args, runner_args=["--ip-family", "ipv6"])
    assert r.returncode != 0 and "RESULT " not in r.stdout, r.stdout[-3000:]
    assert "rule ConfigurationError matched job pi-launcher-0" in r.stdout, r.stdout[-3000:]
    assert "Failed" in r.stdout.split("NAME")[-1].splitlines()[1], r.stdout[-3000:]
    assert re.search(says, _termination(r.stdout, "pi-launcher-0-0")), r.stdout[-3000:]


def test_ssh_transport_on_ipv6_pods(tmp_path):
    """`--transport ssh`: sshd in each worker listens on IPv6 too, and mpirun's ssh reaches it
    at the worker's IPv6 address (the program by absolute path: ssh's session has its own PATH)."""
    import shutil
    import sys

    if not (shutil.which("sshd", path="/usr/sbin:/usr/local/sbin") and shutil.which("ssh")):
        pytest.skip("openssh-server and openssh-client are not installed (sshd, ssh)")
    mpi = c.need("openmpi")

    def ssh(docs):
        for rj in docs[-1]["spec"]["replicatedJobs"]:
            cmd = rj["template"]["spec"]["template"]["spec"]["containers"][0]["command"]
            role = "launcher" if "launcher" in cmd else "worker"
            cmd[cmd.index(role) + 1:cmd.index(role) + 1] = ["--transport", "ssh"]

    hostfile = tmp_path / "hostfile"
    r = run_manifest(tmp_path, mpi, [sys.executable, c.PROG], launcher_args=["--hostfile", str(hostfile)],
                     runner_args=["--ip-family", "ipv6"], edit=ssh)
    _check_result(r, "openmpi")
    assert all(re.fullmatch(rf"{V6} slots=2", l) for l in hostfile.read_text().splitlines())
