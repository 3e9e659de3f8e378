"""Errors meant for people, each carrying the exit code it ends the process with.

The CLI catches `JobSetRuntimeError` subclasses, prints the message (no traceback) and
exits with `exit_code`.  A message names the input at fault and the fix.
"""

from . import contract


class JobSetRuntimeError(Exception):
    """Base: printed as-is by the CLI, which exits with `exit_code`."""

    exit_code = 1


class ConfigError(JobSetRuntimeError):
    """Bad configuration: restarting the pod cannot fix it."""

    exit_code = contract.EXIT_CONFIG


class PeersTimeout(JobSetRuntimeError):
    """Peers did not appear (in DNS or on a port) before the deadline."""

    exit_code = contract.EXIT_PEERS_TIMEOUT


class DnsUnavailable(PeersTimeout):
    """No DNS server answered at all before the deadline.

    An infrastructure fault (cluster DNS down or unreachable for a while), not a
    configuration error: a restart can fix it, so it exits like a peers timeout and the
    generated failure policy restarts the JobSet instead of failing it.
    """


def first_few(items, n=5):
    """`a, b, c (+49 more)`: a short, readable list for progress and errors."""
    items = list(items)
    shown = ", ".join(str(i) for i in items[:n])
    return shown + (f" (+{len(items) - n} more)" if len(items) > n else "")
