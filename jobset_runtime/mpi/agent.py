"""The ssh-free remote-start agent: what mpirun runs where it would run `ssh HOST COMMAND`.

mpirun calls `AGENT [options] HOST WORD...` (PRRTE's plm_ssh_agent, Hydra's
launcher exec).  The agent reads the words into an argv list plus env
assignments (command.py; no shell on either side), connects to the worker's
authenticated channel on HOST, asks it to start the daemon, relays its output
and exits with its exit code, as ssh would.  When mpirun kills the agent, the
connection closes and the worker stops the daemon.
"""

from __future__ import annotations

import os
import socket
import sys
import time

from .. import contract
from ..group.wire import ProtocolError
from . import channel, command
from .tokens import load_key


def port_from_env(env=os.environ) -> int:
    return int(env.get(contract.MPI_PORT_ENV) or contract.MPI_PORT)


def main(args: list[str]) -> int:
    try:
        host, words = command.split_agent_args(args)
        cmd = command.parse(words)
        command.check_allowed(cmd)
    except command.CommandError as e:
        print(f"jobset-runtime mpi agent: {e}", file=sys.stderr)
        return 255
    try:
        key = load_key()
        # A worker that turns the connection away (admission.py) is asked again, with backoff.
        chan = channel.connect_until(host, port_from_env(), key, role="exec", pod=socket.gethostname(),
                                     deadline=time.monotonic() + contract.MPI_AGENT_CONNECT_S)
        chan.send({"t": "exec", **cmd.to_wire()})
        while True:
            msg = chan.recv()
            if msg is None:
                print(f"jobset-runtime mpi agent: {host} closed the connection", file=sys.stderr)
                return 255
            kind = msg["t"]
            if kind == "out":
                stream = sys.stdout if msg["fd"] == 1 else sys.stderr
                stream.write(msg["data"])
                stream.flush()
            elif kind == "exit":
                return msg["code"]
            elif kind == "refused":
                print(f"jobset-runtime mpi agent: {host} refused to start the daemon: {msg['cause']}", file=sys.stderr)
                return 255
            elif kind != "started":
                raise ProtocolError(f"unexpected {kind}")
    except (OSError, ProtocolError) as e:
        # 255 is what ssh returns when it cannot connect; mpirun reports the host.
        print(f"jobset-runtime mpi agent: cannot start the daemon on {host}: {e}", file=sys.stderr)
        return 255
    except Exception as e:  # noqa: BLE001 -- a ConfigError (token) is for people too
        print(f"jobset-runtime mpi agent: {e}", file=sys.stderr)
        return 255


def script_text(python: str) -> str:
    """An executable file mpirun can name as its agent (Hydra takes one path, no arguments)."""
    return f"#!{python}\nimport sys\nfrom jobset_runtime.mpi.agent import main\nsys.exit(main(sys.argv[1:]))\n"
