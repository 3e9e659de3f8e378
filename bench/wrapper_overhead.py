"""What `jobset-run` adds in front of a command, in a pod set up as the generated manifests set it up.

The pods come from `jobset_runtime.manifests.jax` (2 hosts), set up as bench/pods.py says:
downward-API files, env from the manifest, the manifest's own command
(`jobset-run --wait coordinator [--group on] -- true`), DNS from dnsmasq through the pod's
resolv.conf.  Two lines, each against `true`, all runs
interleaved so machine noise hits both alike:

  default: the manifest without fail-fast: downward-API files, DNS wait for the coordinator;
  group:   the default manifest (group token mounted): both pods' wrappers started together,
           the coordinator's hosting the channel; timed is the other pod's wrapper, which
           joins, waits for the gang start, runs `true` and leaves.

Figure: added = median(wrapper) - median(`true`), with the wrapper's p90 (goal < 100 ms added).
Beside it, in the same loop: the wrapper's interpreter alone (`python -c pass`, the same venv and
env), the part of the default figure that no code of the wrapper can cut.

    sudo python bench/wrapper_overhead.py [--runs 40] [--group-runs 20]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pods  # noqa: E402
from results import Results, Stat  # noqa: E402


def timed(argv, env) -> float:
    t = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def timed_pair(coordinator, member) -> float:
    """Both pods' wrappers started together; the member's wall time."""
    c = subprocess.Popen(coordinator[0], env=coordinator[1], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t = time.perf_counter()
    subprocess.run(member[0], env=member[1], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - t
    if c.wait(30) != 0:
        raise SystemExit("the coordinator pod's jobset-run failed")
    return elapsed


def record(res: Results, name: str, command: str, setup: str, wrapped: list[float], bare: list[float]) -> None:
    """added = each wrapped run - median(`true`): its median and p90; and the wall time itself."""
    w, b = Stat.median(wrapped, "s"), Stat.median(bare, "s")
    added = [x - b.value for x in wrapped]
    res.add(name, f"time added by {command} over `true` ({setup})", Stat.median(added, "s"),
            spread=[Stat.p90(added, "s")], baseline=b, baseline_what="`true` alone",
            goal="< 100 ms added" if name == "wrapper.default" else "")
    res.add(name + ".total", f"wall time of {command} ({setup})", w, spread=[Stat.p90(wrapped, "s")],
            baseline=b, baseline_what="`true` alone")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--group-runs", type=int, default=20)
    ap.add_argument("--in-namespace", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if not pods.have_dnsmasq():
        sys.exit("dnsmasq is not installed (Debian: apt-get install dnsmasq-base): the pods' DNS needs it")
    argv = [x for x in sys.argv[1:] if x != "--in-namespace"]
    if not a.in_namespace:
        pods.enter_pod_namespaces(__file__, argv)
    res = Results(__file__, argv)
    true = shutil.which("true")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        plain = pods.pods(tmp / "plain", False)
        grouped = pods.pods(tmp / "group", True)
        dm = pods.start_dns(tmp, pods.dns_names(plain))
        argv, env = plain[1]
        print(f"default: {' '.join(argv)}", flush=True)
        for _ in range(3):  # the page cache, dnsmasq's first answers
            timed(argv, env)
        python = [str(Path(argv[0]).parent / "python"), "-c", "pass"]  # the interpreter jobset-run runs on
        bare, wrapped, interpreter = [], [], []
        for _ in range(a.runs):
            bare.append(timed([true], env))
            wrapped.append(timed(argv, env))
            interpreter.append(timed(python, env))
        record(res, "wrapper.default", "`jobset-run -- true`", "a pod of the generated manifest without fail-fast: "
               "downward-API files, DNS wait for the coordinator against dnsmasq", wrapped, bare)
        b = Stat.median(bare, "s")
        res.add("wrapper.interpreter", "time added by the wrapper's interpreter alone (`python -c pass`, the same "
                "venv and env) over `true`: the part of wrapper.default that no code of the wrapper can cut",
                Stat.median([x - b.value for x in interpreter], "s"),
                spread=[Stat.p90([x - b.value for x in interpreter], "s")], baseline=b, baseline_what="`true` alone")
        print(f"group: {' '.join(grouped[1][0])}", flush=True)
        gbare, gwrapped = [], []
        timed_pair(grouped[0], grouped[1])
        for _ in range(a.group_runs):
            gbare.append(timed([true], env))
            gwrapped.append(timed_pair(grouped[0], grouped[1]))
        dm.stop()
        record(res, "wrapper.group", "`jobset-run --group on -- true`", "the default manifest, group token mounted: "
               "2 pods started together, the non-coordinator pod's wrapper timed: DNS wait, join, gang start, leave",
               gwrapped, gbare)
    res.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
