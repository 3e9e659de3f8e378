"""The ssh transport: sshd in workers (as their own user, port 2222), the ssh client in the launcher.

Keys come from the JobSet's ssh Secret (manifests/mpi.py), mounted at
contract.SSH_DIR: `authorized_keys` for sshd, `ssh-privatekey` for the client.
A host key is made per pod at start (the Secret holds no host key; clients do
not check it: the pods' names are only known inside the JobSet, and the
client key is what authorises).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

from .. import contract, supervisor
from ..errors import ConfigError


def ssh_dir(env=os.environ) -> str:
    return env.get(contract.SSH_DIR_ENV) or contract.SSH_DIR


def config_path(env=os.environ) -> str:
    path = env.get(contract.SSHD_CONFIG_ENV)
    if path:
        return path
    if os.path.exists(contract.SSHD_CONFIG):
        return contract.SSHD_CONFIG
    # A source checkout: the file the Dockerfile copies.
    here = os.path.join(os.path.dirname(__file__), "..", "..", "launchers", "sshd_config")
    return os.path.abspath(here)


def sshd_argv(sshd: str, config: str, port: int, host_key: str, pid_file: str, authorized_keys: str) -> list[str]:
    """sshd in the foreground, logging to stderr, per-pod paths on the command line."""
    return [sshd, "-D", "-e", "-f", config, "-p", str(port), "-h", host_key,
            "-o", f"PidFile={pid_file}", "-o", f"AuthorizedKeysFile={authorized_keys}"]


def client_args(port: int, identity_file: str) -> str:
    """What mpirun passes to ssh before the host (PRRTE plm_ssh_args, HYDRA_LAUNCHER_EXTRA_ARGS)."""
    return (f"-p {port} -i {identity_file} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
            "-o BatchMode=yes -o LogLevel=ERROR -o ConnectTimeout=20")


def _find(name: str) -> str:
    path = shutil.which(name, path=os.pathsep.join(["/usr/sbin", "/usr/local/sbin", os.environ.get("PATH", "")]))
    if not path:
        raise ConfigError(f"{name} not found: install openssh ({'server' if name == 'sshd' else 'client'}) in the "
                          "image, or use the default --transport exec")
    return path


def start_sshd(port: int = contract.SSH_PORT) -> supervisor.Child:
    keys = ssh_dir()
    authorized = os.path.join(keys, contract.SSH_AUTHORIZED_KEYS)
    if not os.path.exists(authorized):
        raise ConfigError(f"{authorized} is missing: mount the JobSet's ssh Secret at {keys}")
    sshd = _find("sshd")
    if os.geteuid() == 0:
        # Root's sshd wants its privilege-separation dir; images rarely have it (Debian makes it at boot).
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    run_dir = tempfile.mkdtemp(prefix="jobset-runtime-sshd-")
    host_key = os.path.join(run_dir, "ssh_host_ed25519_key")
    subprocess.run([_find("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f", host_key], check=True,
                   stdout=subprocess.DEVNULL)
    argv = sshd_argv(sshd, config_path(), port, host_key, os.path.join(run_dir, "sshd.pid"), authorized)
    return supervisor.start(argv, dict(os.environ))


def client_setup(workdir: str, port: int = contract.SSH_PORT) -> tuple[str, str]:
    """(agent, agent args) for mpirun; the private key is copied 0600 (ssh refuses a readable one)."""
    src = os.path.join(ssh_dir(), contract.SSH_PRIVATE_KEY)
    dst = os.path.join(workdir, "id_ed25519")
    try:
        with open(src, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read the ssh key {src}: {e.strerror}; mount the JobSet's ssh Secret there") from None
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return _find("ssh"), client_args(port, dst)
