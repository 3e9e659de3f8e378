"""The daemon command mpirun hands its remote-start agent, read without a shell.

mpirun starts its per-host daemon through an ssh-like agent:
`AGENT [options] HOST WORD...`, where the words are meant for a remote shell.
What the installed wheels really pass (Open MPI 5.0.11 and 4.1.8, MPICH 5.0.2,
Intel MPI 2021.18):

    PRTE_PREFIX=/p;export PRTE_PREFIX;LD_LIBRARY_PATH=/p/lib:$LD_LIBRARY_PATH;export LD_LIBRARY_PATH;/p/bin/prted --prtemca ess "env" ...
    OPAL_PREFIX=/p ; export OPAL_PREFIX; PATH=/p/bin:$PATH ; export PATH ; LD_LIBRARY_PATH=/p/lib:${LD_LIBRARY_PATH:-} ; ... /p/bin/orted -mca ess "env" ...
    "/p/bin/hydra_pmi_proxy" --control-port host:port ...

The ssh-free transport runs that on a worker *without* a shell: the words are
tokenised like a POSIX shell would (quotes removed), then only three kinds of
statement are accepted: `NAME=VALUE` (where `$NAME`, `${NAME}` and
`${NAME:-WORD}` with a plain WORD are the only expansions), `export NAME...`, and one final command, which must be an MPI
daemon.  Anything else (pipes, redirections, subshells, `$(...)`, a second
command) is refused.  Pure functions; the worker applies the result.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass

# The programs an mpirun starts on remote hosts: PRRTE (Open MPI 5), ORTE (Open MPI 4),
# Hydra (MPICH; Intel MPI starts hydra_bstrap_proxy, which starts hydra_pmi_proxy itself).
DAEMONS = frozenset({"prted", "orted", "hydra_pmi_proxy", "pmi_proxy", "hydra_bstrap_proxy"})
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_REF = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?)-([^${}`]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")
# Env an agent may set for the daemon: where the MPI lives, nothing that injects code (LD_PRELOAD...).
_ENV_ALLOWED = re.compile(r"(PATH|LD_LIBRARY_PATH|DYLD_LIBRARY_PATH|[A-Z0-9_]+_PREFIX)\Z")


class CommandError(ValueError):
    """The words are not a daemon command this transport runs."""


@dataclass(frozen=True)
class RemoteCommand:
    assignments: tuple[tuple[str, str], ...]  # (NAME, VALUE) in order; VALUE may hold $NAME refs
    argv: tuple[str, ...]

    def to_wire(self) -> dict:
        return {"env": [list(a) for a in self.assignments], "argv": list(self.argv)}

    @classmethod
    def from_wire(cls, msg: dict) -> "RemoteCommand":
        env, argv = msg.get("env"), msg.get("argv")
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            raise CommandError("argv is not a list of strings")
        if not isinstance(env, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(s, str) for s in p) for p in env
        ):
            raise CommandError("env is not a list of [name, value] pairs")
        if any("\0" in s for s in [*argv, *(s for p in env for s in p)]):
            raise CommandError("a NUL byte in the command or its environment")
        return cls(tuple((n, v) for n, v in env), tuple(argv))


def parse(words: list[str]) -> RemoteCommand:
    """Remote-shell words -> RemoteCommand; CommandError for anything but assignments + one command."""
    line = " ".join(words)
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|<>()")
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        tokens = list(lexer)
    except ValueError as e:  # unbalanced quotes
        raise CommandError(f"cannot tokenise the command: {e}") from None
    statements: list[list[str]] = [[]]
    for tok in tokens:
        if tok == ";":
            statements.append([])
        elif tok and set(tok) <= set(";&|<>()"):
            raise CommandError(f"shell operator {tok!r} is not supported")
        else:
            statements[-1].append(tok)
    statements = [s for s in statements if s]
    if not statements:
        raise CommandError("empty command")
    assignments: list[tuple[str, str]] = []
    for stmt in statements[:-1]:
        if stmt[0] == "export" and all(_NAME.match(n) for n in stmt[1:]):
            continue  # every assignment is exported to the daemon anyway
        if len(stmt) == 1 and "=" in stmt[0]:
            name, value = stmt[0].split("=", 1)
            if _NAME.match(name):
                assignments.append((name, value))
                continue
        raise CommandError(f"statement {' '.join(stmt)[:80]!r} is neither NAME=VALUE nor export")
    argv = statements[-1]
    # Leading NAME=VALUE words of the command itself are assignments too.
    while argv and "=" in argv[0] and _NAME.match(argv[0].split("=", 1)[0]):
        assignments.append(tuple(argv.pop(0).split("=", 1)))  # type: ignore[arg-type]
    if not argv:
        raise CommandError("no command after the assignments")
    if any("$(" in w or "`" in w for w in argv):
        raise CommandError("command substitution is not supported")
    return RemoteCommand(tuple(assignments), tuple(argv))


def check_allowed(cmd: RemoteCommand) -> None:
    """Only MPI daemons, only env that says where MPI lives: the worker's own second check."""
    prog = os.path.basename(cmd.argv[0]) if cmd.argv else ""
    if prog not in DAEMONS:
        raise CommandError(f"{prog!r} is not an MPI daemon ({', '.join(sorted(DAEMONS))})")
    for name, value in cmd.assignments:
        if not _ENV_ALLOWED.match(name):
            raise CommandError(f"setting {name} is not allowed")
        if "$(" in value or "`" in value:
            raise CommandError("command substitution is not supported")


_PATH_LISTS = frozenset({"PATH", "LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH"})


def _inside(path: str, prefix: str) -> bool:
    real = os.path.realpath(path)
    return real == prefix or real.startswith(prefix.rstrip("/") + "/")


def confine(cmd: RemoteCommand, base: dict[str, str]) -> RemoteCommand:
    """The daemon resolved in this worker's own file system, and its env kept to its installation.

    The program must be an executable file here whose real name is an MPI daemon (a bare name is
    looked up on the worker's own PATH, never on one the request sets); its installation is the
    directory above its bin/.  Every directory the request puts in PATH, LD_LIBRARY_PATH or
    DYLD_LIBRARY_PATH must lie inside that installation or already be in the worker's own value,
    and every *_PREFIX inside the installation.  This does not make the transport safe against a
    token holder (a daemon starts whatever programs it is asked to, docs/mpi.md): it keeps a
    request from pointing a real daemon at libraries or programs of its own choosing."""
    import shutil

    prog = cmd.argv[0]
    if "/" not in prog:
        prog = shutil.which(prog, path=base.get("PATH", os.defpath)) or ""
    real = os.path.realpath(prog) if prog else ""
    if not (real and os.path.isfile(real) and os.access(real, os.X_OK)):
        raise CommandError(f"{cmd.argv[0][:200]!r} is not an executable file on this worker")
    if os.path.basename(real) not in DAEMONS:
        raise CommandError(f"{cmd.argv[0][:200]!r} is {real[:200]!r}, not an MPI daemon")
    prefix = os.path.dirname(os.path.dirname(real))
    env = environment(cmd, base)
    for name, _ in cmd.assignments:
        value = env[name]
        if name in _PATH_LISTS:
            own = set(base.get(name, "").split(":"))
            bad = [d for d in value.split(":") if d and d not in own and not _inside(d, prefix)]
            if bad:
                raise CommandError(f"{name} may add only directories of the MPI installation {prefix} "
                                   f"(not {bad[0][:200]!r})")
        elif value and not _inside(value, prefix):
            raise CommandError(f"{name}={value[:200]!r} is outside the MPI installation {prefix}")
    return RemoteCommand(cmd.assignments, (prog, *cmd.argv[1:]))


def expand(value: str, env: dict[str, str]) -> str:
    """`$NAME` and `${NAME}` from env (empty when unset), `${NAME-WORD}` (WORD when
    unset) and `${NAME:-WORD}` (WORD when unset or empty); nothing else is special."""
    def one(m: re.Match) -> str:
        name = m.group(1) or m.group(4)
        value = env.get(name)
        if m.group(3) is not None and (value is None or (m.group(2) and not value)):
            return m.group(3)
        return value or ""
    return _REF.sub(one, value)


def environment(cmd: RemoteCommand, base: dict[str, str]) -> dict[str, str]:
    """The daemon's env: `base` with the assignments applied in order."""
    env = dict(base)
    for name, value in cmd.assignments:
        env[name] = expand(value, env)
    return env


def split_agent_args(args: list[str]) -> tuple[str, list[str]]:
    """`[ssh options] HOST WORD...` -> (HOST, words).

    mpirun passes its own ssh options first (Hydra adds `-x`); options that take
    a value are skipped with it, as ssh reads them.
    """
    i = 0
    with_value = set("BbcDEeFIiJLlmOoPpQRSWw")
    while i < len(args) and args[i].startswith("-") and len(args[i]) > 1:
        opt = args[i]
        i += 1
        if len(opt) == 2 and opt[1] in with_value:
            i += 1
    if i >= len(args):
        raise CommandError("no host in the agent's arguments")
    host, words = args[i], args[i + 1:]
    if not words:
        raise CommandError(f"no command for host {host}")
    return host, words
