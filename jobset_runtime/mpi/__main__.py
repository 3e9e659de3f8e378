"""`python -m jobset_runtime.mpi launcher|worker|agent ...`"""

from __future__ import annotations

import argparse
import logging
import sys

from .. import contract
from ..errors import JobSetRuntimeError

log = logging.getLogger("jobset_runtime.mpi")


def _launcher(argv: list[str]) -> int:
    from ..podinfo import current_identity
    from . import launcher

    head, rest = (argv[: argv.index("--")], argv[argv.index("--"):]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(prog="python -m jobset_runtime.mpi launcher",
                                usage="%(prog)s [options] [-- MPIRUN-OPTIONS --] PROGRAM ARGS")
    p.add_argument("--mpi", choices=("auto", "openmpi", "mpich", "intel"), default="auto",
                   help="MPI implementation (default: from `mpirun --version`)")
    p.add_argument("--mpirun", default="mpirun", help="mpirun to run (default: mpirun on PATH)")
    p.add_argument("--transport", choices=launcher.TRANSPORTS, default="exec",
                   help="how daemons start on workers: exec (authenticated channel, default) or ssh")
    p.add_argument("--hostfile-by", choices=launcher.HOSTFILE_BY, default="auto",
                   help="name workers in the hostfile by resolved IP or by FQDN; auto (default): by IP, "
                   "by FQDN where the MPI cannot take an IPv6 address (Open MPI 4 on IPv6 pods)")
    p.add_argument("--slots-per-worker", "--slots", dest="slots", type=int, default=1)
    p.add_argument("--workers-job", default="worker", help="the replicated job holding the workers")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for every worker")
    p.add_argument("--hostfile", help="where to write the hostfile (default: a private temporary dir)")
    p.add_argument("program", nargs="*", help=argparse.SUPPRESS)
    ns = p.parse_args(head)
    mpirun_args, program = launcher.split_command(ns.program + rest)
    opts = launcher.Options(program=program, mpirun_args=mpirun_args, mpi=ns.mpi, mpirun=ns.mpirun,
                            transport=ns.transport, hostfile_by=ns.hostfile_by, slots=ns.slots,
                            workers_job=ns.workers_job, timeout=ns.timeout, hostfile=ns.hostfile)
    return launcher.run(opts, current_identity())


def _known_pods():
    """The JobSet's pods by DNS name, admitted first by the worker (admission.py); None when
    this pod cannot tell them (no topology)."""
    from ..addresses import family_of
    from ..admission import KnownPods
    from ..podinfo import current_identity

    try:
        ident = current_identity()
        return KnownPods({h: ident.fqdn(h) for h in ident.all_hosts()}, family=family_of(ident.pod_ip)).start()
    except JobSetRuntimeError as e:
        log.info("admitting no pod first: %s", e)
        return None


def _worker(argv: list[str]) -> int:
    import socket

    from .. import supervisor
    from .agent import port_from_env
    from .tokens import load_key
    from .worker import WorkerServer, own_pod_name

    p = argparse.ArgumentParser(prog="python -m jobset_runtime.mpi worker")
    p.add_argument("--transport", choices=("exec", "ssh"), default="exec")
    p.add_argument("--launcher-timeout", type=float, default=1800.0,
                   help="seconds to wait for the launcher to connect")
    ns = p.parse_args(argv)
    server = WorkerServer(load_key(), pod=socket.gethostname(), port=port_from_env(),
                          allow_exec=ns.transport == "exec", pod_name=own_pod_name(), known=_known_pods()).start()
    sshd = None
    if ns.transport == "ssh":
        from .sshd import start_sshd

        sshd = start_sshd()

        def watch_sshd():
            code = supervisor.exit_code_of(sshd.proc.wait())
            server.fail(f"{supervisor.describe_exit('sshd', code)}; the launcher cannot start MPI daemons here")

        import threading

        threading.Thread(target=watch_sshd, daemon=True).start()
    import signal

    # SIGTERM (the JobSet stopping this pod): say so to the launcher, so it can tell
    # the worker that failed from the ones stopped because of it.
    signal.signal(signal.SIGTERM, server.on_sigterm)
    log.info("serving the launcher on port %d (%s transport)", server.port, ns.transport)
    outcome = server.wait(ns.launcher_timeout)
    if outcome is None and server.watchers == 0:
        server.close()
        msg = f"no launcher connected within {ns.launcher_timeout:g}s"
        log.error("%s", msg)
        supervisor.write_termination_message(msg)
        return contract.EXIT_PEERS_TIMEOUT
    outcome = outcome or server.wait()
    server.close()
    if sshd is not None and sshd.proc.poll() is None:
        sshd.stop(grace=2.0)
    (log.info if outcome.code == 0 else log.error)("%s", outcome.cause)
    if outcome.code:
        supervisor.write_termination_message(outcome.cause)
    return outcome.code


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["agent"]:  # stdout belongs to the daemon: no logging setup
        from .agent import main as agent_main

        return agent_main(argv[1:])
    import socket

    from .. import log as runtime_log

    runtime_log.setup(f"mpi {argv[0] if argv else ''}".strip())
    runtime_log.set_pod(socket.gethostname(), None)
    roles = {"launcher": _launcher, "worker": _worker}
    if not argv or argv[0] not in roles:
        print("usage: python -m jobset_runtime.mpi launcher|worker|agent ...", file=sys.stderr)
        return contract.EXIT_CONFIG
    try:
        return roles[argv[0]](argv[1:])
    except JobSetRuntimeError as e:
        log.error("%s", e)
        from .. import supervisor

        supervisor.write_termination_message(str(e))
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
