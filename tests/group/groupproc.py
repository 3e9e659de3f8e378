"""A group member (or the coordinator: server + its own member) as a separate process.

Driven over stdin, one command a line: `fail CODE CAUSE`, `barrier`, `finish`, `close`.
Reports JSON lines on stdout: listening, joined, aborted, restarted, finished, error.
"""

import argparse
import json
import sys
import threading

from jobset_runtime.errors import JobSetRuntimeError
from jobset_runtime.group import GroupMember, GroupServer, MemberId, read_token


def say(**event):
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def barrier(member):
    try:
        say(event="restarted", epoch=member.restart_barrier(20))
    except (JobSetRuntimeError, RuntimeError) as e:
        say(event="error", kind=type(e).__name__, message=str(e))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--serve", action="store_true", help="host the server too (the coordinator pod)")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--world", type=int, required=True)
    ap.add_argument("--first", type=int, default=0, help="the world's first rank (a slice of a tree)")
    ap.add_argument("--token-file")
    ap.add_argument("--attempt", type=int, default=0)
    ap.add_argument("--heartbeat", type=float, default=0.2)
    ap.add_argument("--deadline", type=float, default=1.5)
    ap.add_argument("--join-timeout", type=float, default=20)
    a = ap.parse_args()
    token = read_token(a.token_file) if a.token_file else None
    world = [MemberId(r, f"pod-{r}") for r in range(a.first, a.first + a.world)]
    common = {"token": token, "insecure": token is None, "attempt": a.attempt, "heartbeat": a.heartbeat,
              "deadline": a.deadline}
    # Made before the server listens (as a wrapper's member is ready before a flood can reach it);
    # with --serve its port is the server's once it listens.
    member = GroupMember(server=("127.0.0.1", a.port), me=world[a.rank - a.first], world=world, **common)
    if a.serve:
        server = GroupServer(bind=("127.0.0.1", a.port), world=world, **common)
        member.server = ("127.0.0.1", server.start()[1])
        say(event="listening", port=member.server[1])
    member.on_abort(lambda f: say(event="aborted", rank=f.rank, pod=f.pod, code=f.code, cause=f.cause,
                                  epoch=member.epoch))
    try:
        member.join(a.join_timeout)
    except JobSetRuntimeError as e:
        say(event="error", kind=type(e).__name__, message=str(e))
        return
    say(event="joined", epoch=member.epoch)
    for line in sys.stdin:
        cmd, *args = line.split(maxsplit=2)
        try:
            if cmd == "fail":
                member.report_failure(int(args[0]), args[1].strip())
            elif cmd == "barrier":
                threading.Thread(target=barrier, args=(member,), daemon=True).start()
            elif cmd == "finish":
                say(event="finished", complete=member.finish(20))
            elif cmd == "close":
                break
        except (JobSetRuntimeError, RuntimeError) as e:
            say(event="error", kind=type(e).__name__, message=str(e))
    member.close()
    if a.serve:
        server.stop()


if __name__ == "__main__":
    main()
