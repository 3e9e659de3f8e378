"""`mpi`: one launcher and N workers; the launcher starts the ranks on the workers.

Spec order is worker, then launcher: the launcher `dependsOn` the workers being
Ready (the worker's MPI channel answering on contract.MPI_PORT), the way
mpi-operator waits for workers, and a ReplicatedJob may only depend on one listed before it
(kubernetes-sigs/jobset pkg/webhooks/jobset_webhook.go).  The JobSet succeeds when
the launcher does (successPolicy), and the controller then stops the workers.

The ssh key pair is made here, at build time, and travels in a Secret of type
kubernetes.io/ssh-auth next to the JobSet; both pod kinds mount it read-only at
contract.SSH_DIR, mode 0440 with the pods' fsGroup set to the image user's group, so a
non-root user can read it.  `python -m jobset_runtime.mpi launcher|worker` does the rest
(hostfile, mpirun, daemons started over the authenticated channel by default
or over ssh with `--transport ssh`; the Secret's private key is also the
channel's token).
"""

from __future__ import annotations

import base64
import dataclasses

from .. import contract
from . import common

LAUNCHER = "launcher"
WORKER = "worker"
MPI_CHOICES = ("openmpi", "mpich", "intel")
BENCH_CHOICES = ("pingpong", "allreduce")


def secret_name(jobset_name: str) -> str:
    return f"{jobset_name}-ssh"


def ssh_key_pair(private_key_pem: bytes | None = None, comment: str = "jobset-runtime") -> tuple[bytes, bytes]:
    """(OpenSSH private key, `ssh-ed25519 ...` public key): new unless one is given."""
    # Lazy: only the mpi kind needs `cryptography`.
    from ..extras import require

    require("manifests", "the mpi kind's ssh key pair", ["cryptography"])
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if private_key_pem is None:
        key = Ed25519PrivateKey.generate()
        private_key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                            serialization.NoEncryption())
    else:
        try:
            key = serialization.load_ssh_private_key(private_key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise common.ConfigError(f"the ssh private key given is not an unencrypted OpenSSH key: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise common.ConfigError("the ssh private key given is not ed25519; pass an ed25519 key or none")
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private_key_pem, public + b" " + comment.encode()


def ssh_secret(name: str, namespace: str, private_key: bytes, public_key: bytes) -> dict:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "kubernetes.io/ssh-auth",
        "data": {
            contract.SSH_PRIVATE_KEY: b64(private_key),
            contract.SSH_PUBLIC_KEY: b64(public_key + b"\n"),
            contract.SSH_AUTHORIZED_KEYS: b64(public_key + b"\n"),
        },
    }


def cpu_cores(quantity: str | None) -> float | None:
    """A Kubernetes CPU quantity (`2`, `1.5`, `500m`) in cores; None when absent or in another form."""
    if not quantity:
        return None
    text = str(quantity).strip()
    try:
        return float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        return None


def with_ranks(command: list, np: int, slots: int) -> list:
    """The launcher's command with `-n NP` among mpirun's options: fewer ranks than slots
    leaves free slots, which MPI_Comm_spawn needs (every slot in use: spawn fails)."""
    from ..mpi.launcher import has_np, split_command

    common.positive(np, "--np")
    if np > slots:
        raise common.ConfigError(f"--np {np}: more ranks than the {slots} slots (--workers x --slots-per-worker); "
                                 "raise --slots-per-worker, or oversubscribe with mpirun options "
                                 "`-- --map-by slot:OVERSUBSCRIBE -- PROGRAM`")
    options, program = split_command(["--", *command])
    if has_np(options):
        raise common.ConfigError("--np and -n/-np among mpirun's options: give the number of ranks once")
    return ["-n", str(np), *options, "--", *program]


def bench_command(kind: str, max_size: int | None = None) -> list:
    """The ranks' command that measures the network between the workers (jobset_runtime.mpi.bench);
    `python -m mpi4py` so that a rank that raises aborts the job instead of hanging it."""
    if kind not in BENCH_CHOICES:
        raise common.ConfigError(f"--bench {kind}: choose one of {', '.join(BENCH_CHOICES)}")
    cmd = ["python", "-m", "mpi4py", "-m", "jobset_runtime.mpi.bench", kind]
    if max_size is not None:
        common.positive(max_size, "--bench-max-size")
        cmd += ["--max-size", str(max_size)]
    return cmd


def mpi(*, workers: int, slots_per_worker: int = 1, mpi: str = "openmpi", ssh_private_key: bytes | None = None,
        np: int | None = None, yield_when_idle: bool | None = None, bench: str | None = None,
        bench_max_size: int | None = None, **common_options) -> list:
    """The documents for an MPI job: the ssh Secret, then the JobSet.

    np: ranks to start (default: every slot); yield_when_idle: Open MPI's
    mpi_yield_when_idle for the ranks (default: on when --cpu is below the slots per worker);
    bench ("pingpong" or "allreduce") runs the network benchmark instead of a command.
    """
    if bench:
        if common_options.get("command"):
            raise common.ConfigError(f"--bench {bench} runs the benchmark as the command: drop the command "
                                     "after `--`, or --bench")
        common_options["command"] = bench_command(bench, bench_max_size)
    elif bench_max_size is not None:
        raise common.ConfigError("--bench-max-size goes with --bench pingpong|allreduce")
    c = common.Common(**common_options)
    c.check()
    # No group channel here: mpirun already aborts the whole job when a rank dies and the
    # workers follow the launcher; and since the launcher starts only once the workers are
    # Ready (dependsOn), a gang start spanning both would never complete.
    if c.in_place_restarts:
        raise common.ConfigError("--in-place-restarts is not available for mpi: mpirun owns the ranks")
    c = dataclasses.replace(c, fail_fast=False)
    common.positive(workers, "--workers")
    common.positive(slots_per_worker, "--slots-per-worker")
    if mpi not in MPI_CHOICES:
        raise common.ConfigError(f"--mpi {mpi}: choose one of {', '.join(MPI_CHOICES)}")
    # The command goes after the launcher's own `--`: refuse now what the launcher would refuse
    # at run time (a doubled `--`, options where the program should be).
    from ..mpi.launcher import split_command

    split_command(["--", *c.command], form="manifest mpi [options] -- PROGRAM ARGS, or "
                                          "manifest mpi [options] -- MPIRUN-OPTIONS -- PROGRAM ARGS")
    if np is not None:
        c = dataclasses.replace(c, command=with_ranks(c.command, np, workers * slots_per_worker))
    cores = cpu_cores(c.cpu)
    if yield_when_idle is None:
        yield_when_idle = mpi == "openmpi" and cores is not None and cores < slots_per_worker
    elif yield_when_idle and mpi != "openmpi":
        raise common.ConfigError(f"--yield-when-idle sets Open MPI's mpi_yield_when_idle; --mpi {mpi} has no such "
                                 "setting")
    # Open MPI's ranks busy-poll while they wait; with this they yield the CPU between polls, which
    # pods whose CPUs are fewer than their slots need (docs/mpi.md, "CPU sharing").
    if yield_when_idle and contract.OPENMPI_YIELD_WHEN_IDLE_ENV not in c.env:
        # Both pods: the workers' daemons hand their env to the ranks they start.
        c = dataclasses.replace(c, env={**c.env, contract.OPENMPI_YIELD_WHEN_IDLE_ENV: "1"})
    private, public = ssh_key_pair(ssh_private_key, comment=f"{c.name}@jobset-runtime")
    secret = ssh_secret(secret_name(c.name), c.namespace, private, public)

    shape = [{"name": WORKER, "replicas": 1, "template": {"spec": {"completions": workers}}},
             {"name": LAUNCHER, "replicas": 1, "template": {"spec": {"completions": 1}}}]
    topo = common.topology_of(shape)
    # Secret files are root-owned; with the pod's fsGroup the kubelet makes them group-owned
    # by it and adds it to the container's groups (kubernetes pkg/volume/volume_linux.go,
    # SetVolumeOwnership; docs: "Configure a Security Context for a Pod or Container").
    # 0440, not 0400, so the image's non-root user (Dockerfile.mpi, uid/gid 1000) can read
    # the key: owner and group read, nobody else, no write.
    ssh_volume = {"name": contract.SSH_VOLUME,
                  "secret": {"secretName": secret["metadata"]["name"], "defaultMode": 0o440}}
    ssh_mount = {"name": contract.SSH_VOLUME, "mountPath": contract.SSH_DIR, "readOnly": True}

    # --exec: the worker writes its own termination message and handles SIGTERM, so
    # jobset-run hands the pod over to it (one Python process per worker pod, not two).
    worker_cmd = common.runner_command(dataclasses.replace(c, wait=None), "none",
                                       ["python", "-m", "jobset_runtime.mpi", "worker"], extra=("--exec",))
    worker = common.container(
        c, worker_cmd, topo, mounts=[ssh_mount],
        # The worker's MPI channel listens with either transport (sshd only with --transport ssh).
        ports=[{"name": "mpi", "containerPort": contract.MPI_PORT}],
        readiness={"tcpSocket": {"port": contract.MPI_PORT}, "periodSeconds": 2},
    )
    launcher_cmd = common.runner_command(
        c, "all",
        ["python", "-m", "jobset_runtime.mpi", "launcher", "--mpi", mpi,
         "--slots-per-worker", str(slots_per_worker), "--", *c.command],
    )
    # The launcher only starts mpirun: the requested cpu/memory go to the workers.
    launcher = common.container(dataclasses.replace(c, cpu=None, memory=None), launcher_cmd, topo,
                                mounts=[ssh_mount])
    specs = [common.pod_spec(c, [worker], volumes=[ssh_volume]), common.pod_spec(c, [launcher], volumes=[ssh_volume])]
    for spec in specs:
        # fsGroup only (no runAsUser): the image's USER stays in charge, root or not.
        spec["securityContext"] = {"fsGroup": contract.MPI_FS_GROUP}
    rjobs = [
        common.replicated_job(WORKER, 1, workers, specs[0]),
        common.replicated_job(LAUNCHER, 1, 1, specs[1], depends_on=[{"name": WORKER, "status": "Ready"}]),
    ]
    doc = common.jobset(c, rjobs, coordinator=(LAUNCHER, 0, 0), success_targets=[LAUNCHER])
    return common.finish([secret, doc], c)
