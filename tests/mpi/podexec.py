"""Run a command as a local "pod": set this UTS namespace's hostname, then exec.

Used as `unshare --uts -- python podexec.py HOSTNAME PROGRAM ARGS...` inside a
network namespace; no shell is involved.
"""

import ctypes
import os
import sys

host = sys.argv[1].encode()
if ctypes.CDLL(None, use_errno=True).sethostname(host, len(host)) != 0:
    sys.exit(f"sethostname failed: {os.strerror(ctypes.get_errno())}")
os.execvp(sys.argv[2], sys.argv[2:])
