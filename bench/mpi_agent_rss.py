"""What one daemon start costs the launcher in memory: the exec transport's agent beside an ssh client.

mpirun runs one agent process per worker for the whole job (PRRTE's plm_ssh_agent, Hydra's launcher
exec), so at thousands of workers its size adds up on the launcher pod.  Both are run here as mpirun
runs them, `AGENT HOST /path/to/prted ARGS`, against real servers on loopback:
  - exec: the agent script the launcher writes (jobset_runtime.mpi.agent), against a real
    WorkerServer (handshake, exec request, the worker's checks, output relayed, exit code);
  - ssh (the baseline): OpenSSH's client with the launcher's options (sshd.client_args), against
    sshd started with the workers' config (launchers/sshd_config) and a key made for the run.
The "daemon" is a script named prted in a bin/ directory (the worker only starts files named like
an MPI daemon) that prints a line and stays --stay seconds.  Figure: each process's peak RSS
(its VmHWM, read while it runs), median of --runs.

    python bench/mpi_agent_rss.py [--runs 10] [--stay 0.5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import Results, Stat  # noqa: E402

from jobset_runtime import contract  # noqa: E402
from jobset_runtime.addresses import free_port  # noqa: E402
from jobset_runtime.mpi import sshd  # noqa: E402
from jobset_runtime.mpi.tokens import load_key  # noqa: E402
from jobset_runtime.mpi.agent import script_text  # noqa: E402
from jobset_runtime.mpi.worker import WorkerServer  # noqa: E402


def _vm_hwm_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_mb(argv: list[str], env: dict) -> float:
    """Run argv to its end; its own peak RSS in MB, after checking it relayed the daemon's line.

    Not ru_maxrss: Linux carries the forking process's high-water mark across exec into it, so
    every child of this (larger) Python would report this Python's size.  VmHWM belongs to the
    process's own address space since its exec; it is read until the process exits (the daemon
    stays --stay seconds, so the agent's start-up peak is long past when the last reading is taken).
    """
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        hwm = _vm_hwm_kb(proc.pid)
        if hwm is not None and proc.poll() is None:
            peak = max(peak, hwm)
        time.sleep(0.01)
    out, err = proc.communicate()
    if proc.returncode != 0 or b"prted up" not in out:
        raise RuntimeError(f"{argv[0]} exited {proc.returncode}: {err.decode(errors='replace')[-300:]}")
    if not peak:
        raise RuntimeError(f"{argv[0]} ended before its memory could be read; raise --stay")
    return peak / 1024


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--stay", type=float, default=0.5, help="seconds the stand-in daemon runs")
    a = ap.parse_args(argv)
    res = Results(__file__, sys.argv[1:] if argv is None else argv)
    tmp = Path(tempfile.mkdtemp(prefix="mpi-agent-rss-"))
    try:
        key_file = tmp / "ssh-privatekey"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key_file)], check=True)
        (tmp / "authorized_keys").write_bytes((tmp / "ssh-privatekey.pub").read_bytes())
        daemon = tmp / "mpi" / "bin" / "prted"
        daemon.parent.mkdir(parents=True)
        daemon.write_text(f"#!/bin/sh\necho prted up\nsleep {a.stay}\n")
        daemon.chmod(0o755)
        words = [str(daemon), "--prtemca", "ess", "env"]

        # exec: the launcher's agent against a real worker; the token is the Secret's private key.
        server = WorkerServer(load_key({contract.MPI_TOKEN_FILE_ENV: str(key_file)}), pod="worker", address="127.0.0.1",
                              port=0).start()
        agent = tmp / "agent"
        agent.write_text(script_text(sys.executable))
        agent.chmod(0o700)
        env = {**os.environ, contract.MPI_TOKEN_FILE_ENV: str(key_file), contract.MPI_PORT_ENV: str(server.port),
               "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        agents = [peak_rss_mb([str(agent), "127.0.0.1", *words], env) for _ in range(a.runs)]
        server.close()

        # ssh: OpenSSH's client as the launcher gives it to mpirun, against sshd with the workers' config.
        clients = []
        why_not = ""
        if shutil.which("ssh") and shutil.which("sshd", path="/usr/sbin:/usr/local/sbin:" + os.environ["PATH"]):
            port = free_port("::")  # sshd_config listens on 0.0.0.0 and ::
            host_key = tmp / "host_key"
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
            if os.geteuid() == 0:
                os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
            sshd_bin = shutil.which("sshd", path="/usr/sbin:/usr/local/sbin:" + os.environ["PATH"])
            daemon_proc = subprocess.Popen(sshd.sshd_argv(sshd_bin, sshd.config_path(), port, str(host_key),
                                                          str(tmp / "sshd.pid"), str(tmp / "authorized_keys")),
                                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    try:
                        socket.create_connection(("127.0.0.1", port), timeout=1).close()
                        break
                    except OSError:
                        time.sleep(0.05)
                client = ["ssh", *sshd.client_args(port, str(key_file)).split(), "127.0.0.1"]
                try:
                    clients = [peak_rss_mb([*client, *words], dict(os.environ)) for _ in range(a.runs)]
                except RuntimeError as e:
                    why_not = f"the ssh client could not run the daemon: {e}"
            finally:
                daemon_proc.terminate()
                daemon_proc.wait(10)
        else:
            why_not = "ssh or sshd is not installed"
        if why_not:
            res.note(f"no ssh baseline: {why_not}")
        res.add("mpi.agent_rss", "the exec transport's agent (one per worker on the launcher while the job runs): "
                "peak RSS, starting a daemon on a real worker and relaying its output",
                Stat.median(agents, "MB"), spread=[Stat.max(agents, "MB")],
                baseline=Stat.median(clients, "MB") if clients else None,
                baseline_what="OpenSSH's client with the launcher's options, the same daemon through sshd")
        res.write()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
