"""Command line: `jobset-runtime {env,wait,doctor,run,manifest,local}` and the `jobset-run` wrapper.

Kept light: `jobset-run` starts in front of every training process, so only the
modules a path needs are imported, and only when it needs them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from . import contract, log
from .errors import ConfigError, JobSetRuntimeError
from .identity import SCOPES

logger = logging.getLogger("jobset_runtime.cli")


def _columns() -> int:
    """What shutil.get_terminal_size() answers ($COLUMNS, else the terminal's, else 80)."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's, less its `import shutil` (which loads zlib, bz2 and lzma) for the terminal's
    width: argparse makes a formatter at every add_argument, so on every start, help or not."""

    def __init__(self, prog, indent_increment=2, max_help_position=24, width=None):
        super().__init__(prog, indent_increment, max_help_position, _columns() - 2 if width is None else width)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser (and its subcommands') with _HelpFormatter."""

    def __init__(self, *args, formatter_class=_HelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)


def _identity():
    from .podinfo import current_identity

    ident = current_identity()
    rank = None
    try:
        rank = ident.rank
    except ConfigError:
        pass
    log.set_pod(ident.pod_name or ident.hostname, rank)
    return ident


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: must be 0 or more")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: must be 0 or more")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65534:  # the group's leaders listen on the next port
        raise argparse.ArgumentTypeError(f"{text}: a TCP port from 1 to 65534")
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-format", choices=log.FORMATS, help=f"log line format (default: text, or ${contract.LOG_FORMAT_ENV})")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


def _wait_options(parser: argparse.ArgumentParser, default_timeout: float) -> None:
    parser.add_argument("--timeout", type=_non_negative, default=default_timeout, metavar="S",
                        help=f"overall deadline in seconds (default {default_timeout:g})")


# --- env --------------------------------------------------------------------------

def cmd_env(args) -> int:
    import json
    import shlex

    from .exports import runtime_env

    ident = _identity()
    if args.format == "json":
        print(json.dumps(ident.to_dict(), indent=2))
    else:
        if ident.namespace_source:
            print(f"# namespace {ident.namespace} from {ident.namespace_source}")
        for name, value in sorted(runtime_env(ident).items()):
            print(f"export {name}={shlex.quote(value)}")
    if ident.topology is None:
        logger.warning("rank and world size are unknown without %s (name:REPLICASxPODS,... in spec order)",
                       contract.TOPOLOGY_ENV)
    return 0


# --- wait -------------------------------------------------------------------------

def wait_for_scope(ident, scope: str, timeout: float, port: int | None = None) -> dict[str, str]:
    """Wait for the scope's peers; their addresses by FQDN ({} for scope none)."""
    if scope == "none":
        return {}
    from . import peers

    hosts = ident.scope_hosts(scope)
    fqdns = [ident.fqdn(h) for h in hosts]
    what = f"{len(fqdns)} host{'s' if len(fqdns) != 1 else ''} ({scope})" + (f", TCP port {port}" if port else "")
    logger.info("waiting for %s, up to %gs", what, timeout)
    found = peers.wait_for_hosts(fqdns, port=port, timeout=timeout, family=peers.family_of(ident.pod_ip))
    logger.info("all %d ready", len(fqdns))
    return found


def address_of(ident, fqdn: str, known: dict, timeout: float) -> str:
    """`fqdn`'s address as the runtime's own resolver answered it (JOBSET_RUNTIME_NAMESERVERS, else
    resolv.conf's servers): from the wait when it asked for it, else asked now.  Never the system
    resolver, which may not know names only the configured servers answer."""
    if fqdn in known:
        return known[fqdn]
    from . import peers

    return peers.wait_for_hosts([fqdn], timeout=timeout, family=peers.family_of(ident.pod_ip))[fqdn]


def cmd_wait(args) -> int:
    wait_for_scope(_identity(), args.scope, args.timeout, args.port)
    return 0


# --- doctor ----------------------------------------------------------------------------

def cmd_doctor(args) -> int:
    from . import doctor

    return doctor.run(fmt=args.format)


def _doctor_then(args, command: list) -> int:
    """`jobset-run --doctor`: wait as usual, then report on the pod's environment whether or
    not the wait succeeded (a failed wait is what the report explains); then run the command."""
    from . import doctor
    from .errors import PeersTimeout

    waited = None
    try:
        wait_for_scope(_identity(), args.wait, args.timeout)
    except (PeersTimeout, ConfigError) as e:
        waited = e
        logger.error("%s", e)
    verdict = doctor.run(fmt="text", out=sys.stderr)
    if not command:
        return verdict or (waited.exit_code if waited else 0)
    if waited:
        raise waited
    args.doctor = False
    return cmd_run(args)


# --- run (the wrapper) ----------------------------------------------------------------

def _run_parser(prog: str) -> argparse.ArgumentParser:
    p = _Parser(
        prog=prog,
        description="Wait for peers, export the pod's identity for any framework, run CMD, and report how it ended.",
        usage=f"{prog} [options] -- CMD [ARGS...]",
    )
    _run_options(p)
    return p


def _run_options(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--wait", choices=contract.WAIT_SCOPES, default="coordinator",
                   help="which peers must resolve in DNS before CMD starts (default: coordinator); with the "
                        "group channel its gang start checks every pod's name, so no wait of its own (docs/peers.md)")
    _wait_options(p, 300.0)
    tpu = p.add_mutually_exclusive_group()
    tpu.add_argument("--tpu", dest="tpu", action="store_true", default=None,
                     help="export TPU_WORKER_* and MEGASCALE_* (default: when GKE's TPU env is present)")
    tpu.add_argument("--no-tpu", dest="tpu", action="store_false")
    p.add_argument("--jax", action="store_true",
                   help="export JAX_COORDINATOR_ADDRESS/PORT (and libtpu's env on TPU) for jax.distributed")
    p.add_argument("--jax-port", type=_port, default=contract.JAX_PORT, metavar="P",
                   help=f"the JAX coordinator port (default {contract.JAX_PORT}; docs/jax.md says why)")
    p.add_argument("--master-port", type=_port, default=contract.TORCH_PORT, metavar="P",
                   help=f"MASTER_PORT for PyTorch (default {contract.TORCH_PORT})")
    p.add_argument("--master-addr", choices=("name", "ip"), default="name",
                   help="MASTER_ADDR for PyTorch: the coordinator's DNS name (default), or the address "
                        "the wait resolved it to, so torch does not look it up again")
    p.add_argument("--grace", type=_non_negative, default=10.0, metavar="S",
                   help="seconds between SIGTERM and SIGKILL when stopping leftovers of CMD (default 10)")
    p.add_argument("--termination-log", metavar="PATH",
                   help=f"where to write the cause of a failure (default ${contract.TERMINATION_LOG_ENV} or {contract.TERMINATION_LOG})")
    g = p.add_argument_group("fail fast across the group (docs/fail-fast.md)")
    g.add_argument("--group", choices=("auto", "on", "off"), default="auto",
                   help="the group channel between the pods' wrappers (default auto: on when the token file exists)")
    g.add_argument("--group-token", metavar="PATH",
                   help=f"the shared token (default ${contract.GROUP_TOKEN_FILE_ENV} or {contract.GROUP_TOKEN_FILE})")
    g.add_argument("--insecure", action="store_true", help="run the group channel without authentication")
    g.add_argument("--group-port", type=_port, default=contract.GROUP_PORT, metavar="P",
                   help=f"the coordinator's group port (default {contract.GROUP_PORT})")
    g.add_argument("--group-tree", choices=("auto", "on", "off"), default="auto",
                   help="relay through slice leaders, one per Job (default auto: above 1,024 pods)")
    g.add_argument("--group-timeout", type=_non_negative, metavar="S",
                   help="gang start and restart barrier deadline (default: --timeout)")
    g.add_argument("--heartbeat-deadline", type=_non_negative, default=3.0, metavar="S",
                   help="a member or coordinator silent this long has failed (default 3)")
    g.add_argument("--restarts", type=_count, default=0, metavar="N",
                   help="restart the whole group in place up to N times before exiting (default 0)")
    p.add_argument("--exec", dest="exec_", action="store_true",
                   help="become the command once the wait is done and its env is set, as a shell "
                        "entrypoint's final `exec`: one process less, but no signal relay, restarts, group "
                        "channel or termination message from jobset-run (the command writes its own)")
    p.add_argument("--doctor", action="store_true",
                   help="check this pod's environment first (`jobset-runtime doctor`); without a command, "
                        "exit with its verdict (0 all well, 1 a check failed)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")


class Stopped(BaseException):
    """The pod was told to stop (SIGTERM, Ctrl-C) before its command started.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way swallows it."""

    def __init__(self, signum: int):
        import signal

        super().__init__(f"stopped by {signal.Signals(signum).name} before the command started")
        self.exit_code = contract.EXIT_SIGNAL_BASE + signum


def _stop_before_start(signum, _frame):
    raise Stopped(signum)


def cmd_run(args) -> int:
    import signal

    from . import exports, supervisor

    # Until the command runs (waits, gang start), a stop request ends us with a cause;
    # from then on the supervisor forwards it to the command.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop_before_start)

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command and not args.doctor:
        raise ConfigError("no command given: use jobset-run [options] -- CMD [ARGS...]")
    token = args.group_token or os.environ.get(contract.GROUP_TOKEN_FILE_ENV) or contract.GROUP_TOKEN_FILE
    group = args.group == "on" or (args.group == "auto" and (args.insecure or os.path.exists(token)))
    if args.exec_ and (args.restarts or group):
        if args.restarts or args.group == "on" or args.insecure:
            what = "--restarts" if args.restarts else "--group on" if args.group == "on" else "--insecure"
            raise ConfigError(f"--exec leaves no jobset-run to {'restart' if args.restarts else 'run the group channel'}: "
                              f"drop {what} or --exec")
        # The other pods would wait for this one at the gang start until their deadline.
        raise ConfigError(f"--exec, but the group token is mounted at {token}, so this pod belongs to a "
                          "group channel: pass --group off to leave it, or drop --exec")
    if args.doctor:
        return _doctor_then(args, command)
    ident = _identity()
    # With the group channel, the wait is folded into the gang start (docs/peers.md, DNS load):
    # each member asks DNS only for the server it joins, each server checks the name of every pod
    # that joins it, and the start says when every name of the world resolved.
    resolved = {} if group else wait_for_scope(ident, args.wait, args.timeout)
    exported = exports.runtime_env(ident)
    master = (address_of(ident, ident.fqdn(ident.coordinator), resolved, args.timeout)
              if args.master_addr == "ip" else None)
    exported.update(exports.torch_env(ident, args.master_port, master_addr=master))
    tpu = args.tpu if args.tpu is not None else any(k in os.environ for k in contract.TPU_PRESENCE_ENV)
    if tpu:
        exported.update(exports.tpu_env(ident))
    if args.jax:
        from . import jax as jax_env

        exported.update(jax_env.wrapper_env(ident, port=args.jax_port))
    env, warnings = exports.merge(os.environ, exported)
    for w in warnings:
        logger.warning(w)
    # The command may write its own cause (an MPI launcher names the worker it lost): keep it.
    term_log = supervisor.termination_log_path(args.termination_log)
    if term_log:
        env[contract.TERMINATION_LOG_ENV] = term_log
    before = supervisor.read_termination_message(term_log)
    who = f"pod {ident.pod_name or ident.hostname}"
    try:
        who += f" (rank {ident.rank})"
    except ConfigError:
        pass
    if args.exec_:
        code = supervisor.exec_replace(command, env)
        supervisor.write_termination_message(f"{who}: cannot run {command[0]}", term_log)
        return code
    if not group:
        if args.restarts:
            raise ConfigError(f"--restarts needs the group channel: mount the group token at {token} "
                              "(generated manifests do), or pass --insecure")
        code = supervisor.run(command, env, grace=args.grace)
        cause = f"{who}: {supervisor.describe_exit(command[0], code)}"
    else:
        from .group.session import GroupOptions, open_session

        group_timeout = args.group_timeout if args.group_timeout is not None else args.timeout
        session = open_session(ident, GroupOptions(
            token_path=token, insecure=args.insecure, port=args.group_port, leaders_port=args.group_port + 1,
            tree=args.group_tree, addresses=resolved,
            join_timeout=group_timeout, deadline=args.heartbeat_deadline))
        outcome = supervisor.Outcome(contract.EXIT_PEER_FAILED)
        try:
            if not session.member.names_resolved:
                # A group whose servers could not vouch for the names: wait as without one.
                wait_for_scope(ident, args.wait, args.timeout)
            outcome = supervisor.run_in_group(command, env, session.member, session.member.me,
                                              restarts=args.restarts, grace=args.grace,
                                              barrier_timeout=group_timeout)
        finally:
            session.close(success=outcome.code == 0)
        code, cause = outcome.code, f"{who}: {outcome.cause}"
    if code != 0:
        logger.error("%s; exit code %d", cause, code)
        own = supervisor.read_termination_message(term_log)
        if own and own != before:
            cause = f"{who}: {own}"
        supervisor.write_termination_message(cause, term_log)
    return code


# --- entry points -------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="jobset-runtime", description="Bring a distributed job up inside JobSet pods.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    e = sub.add_parser("env", help="print this pod's identity")
    _common(e)
    e.add_argument("--format", choices=("json", "shell"), default="json")
    e.set_defaults(func=cmd_env)

    w = sub.add_parser("wait", help="wait until peers resolve in DNS (and accept TCP)")
    _common(w)
    w.add_argument("scope", choices=SCOPES)
    w.add_argument("--port", type=_port, metavar="P", help="also wait until each accepts TCP on port P")
    _wait_options(w, 300.0)
    w.set_defaults(func=cmd_wait)

    d = sub.add_parser("doctor", help="check this pod's environment: identity, DNS path, MTU, Secrets, clock")
    _common(d)
    d.add_argument("--format", choices=("text", "json"), default="text")
    d.set_defaults(func=cmd_doctor)

    r = sub.add_parser("run", help="the jobset-run wrapper", usage="jobset-runtime run [options] -- CMD [ARGS...]")
    _run_options(r)
    r.set_defaults(func=cmd_run)

    # Subcommands with parsers of their own; everything after the name is theirs.
    sub.add_parser("manifest", help="generate or validate JobSet manifests", add_help=False)
    sub.add_parser("local", help="run a JobSet on this machine", add_help=False)
    return p


def _stdout_closed() -> bool:
    """Whether the reader of stdout has gone (a pipe with no reader polls as an error)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def _quiet_on_closed_stdout() -> int:
    """`jobset-runtime ... | head -1`: stop quietly, as kubectl does.  A Go program is killed by
    SIGPIPE, which the shell reports as 141; Python ignores SIGPIPE (and must, for its sockets), so
    the write raised instead.  stdout then points at /dev/null, so that the flush at exit cannot
    raise again."""
    import os
    import signal

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return contract.EXIT_SIGNAL_BASE + signal.SIGPIPE


def _guard(fn, args, termination_log: str | None = None) -> int:
    """Errors for people: message, no traceback, the error's exit code.  The one place every
    command of both entry points passes through, so also where a closed stdout is handled."""
    try:
        code = fn(args)
        sys.stdout.flush()  # what is still buffered for a pipe is written inside the guard
        return code
    except BrokenPipeError:
        if not _stdout_closed():
            raise  # a socket's, not stdout's: not ours to hide
        return _quiet_on_closed_stdout()
    except (JobSetRuntimeError, Stopped) as e:
        logger.error("%s", e)
        from .supervisor import write_termination_message

        write_termination_message(str(e), termination_log)
        return e.exit_code
    except KeyboardInterrupt:
        return contract.EXIT_SIGNAL_BASE + 2


# The extra each command outside the pod's path needs beyond the core install.
_EXTRAS = {"manifest": "manifests", "local": "local"}


def _require_extra(command: str) -> None:
    from .extras import require

    require(_EXTRAS[command], f"`jobset-runtime {command}`")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["manifest"], ["local"]):
        log.setup("jobset-runtime")

        def sub(rest):
            _require_extra(argv[0])
            if argv[0] == "manifest":
                from .manifests.cli import main as sub_main
            else:
                from .local.cli import main as sub_main
            return sub_main(rest)

        return _guard(sub, argv[1:])
    args = _parser().parse_args(argv)
    log.setup("jobset-runtime", args.log_format, args.log_level)
    return _guard(args.func, args, getattr(args, "termination_log", None))


def run_main(argv: list[str] | None = None) -> int:
    """The `jobset-run` program.  Run as the program (argv None), it ends the process itself once
    the command's outcome is written: see _end."""
    args = _run_parser("jobset-run").parse_args(sys.argv[1:] if argv is None else argv)
    log.setup("jobset-run", args.log_format, args.log_level)
    code = _guard(cmd_run, args, args.termination_log)
    # Under a profiler or coverage (a trace or profile hook is set), they write their data at exit.
    if argv is None and sys.gettrace() is None and sys.getprofile() is None:
        _end(code)
    return code


def _end(code: int) -> None:
    """Exit without the interpreter's teardown (freeing every module and object: several ms
    after the command has already ended, docs/fail-fast.md, Start-up cost).  Nothing is left for
    it to do: the child is reaped, the termination message written and closed, the group's
    session closed and its threads joined or daemons; the log and stdio are flushed here."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can reach it
            pass
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
