"""`jobset-runtime local run --backend cluster FILE.yaml`: the same run on the real control plane.

Starts a cluster of its own (nodes shaped for the JobSet by placement()), or
uses a running one (--kubeconfig); applies the file with kubectl; streams the
node agent's pod output and events; waits for the JobSet's terminal state;
prints the same final table as the embedded backend from the JobSet's real
status; stops what it started.  Exit codes as `local run`: 0 Completed,
1 Failed, 2 bad input, 124 --timeout, 130 interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ... import contract
from ...errors import ConfigError
from ..result import INTERRUPTED, TIMEOUT, ReplicatedJobCounts, Result
from . import binaries, cluster

CONTROL_PLANE_LOGS = "control-plane-logs"
_STANDARD = {"cpu", "memory", "ephemeral-storage", "pods"}


def placement(js: dict) -> tuple[int, list[str], list[str]]:
    """(nodes, --node-labels per node, --node-capacity) for a cluster that can run `js`.

    One node per pod when a pod asks for an extended resource (a TPU host owns its
    chips) or when JobSet's exclusive placement is asked for; then each Job gets
    its own value of the exclusive topology key (a node pool per slice), and every
    node carries every nodeSelector label of the pods.  Otherwise one node."""
    spec = js.get("spec") or {}
    ann = (js.get("metadata") or {}).get("annotations") or {}
    exclusive = ann.get(contract.EXCLUSIVE_TOPOLOGY_KEY)
    selector: dict = {}
    capacity: dict = {}
    jobs = []  # pods per Job, in global Job order
    for rj in spec.get("replicatedJobs") or []:
        job = ((rj.get("template") or {}).get("spec") or {})
        tmpl = (job.get("template") or {})
        pod_spec = tmpl.get("spec") or {}
        exclusive = exclusive or ((tmpl.get("metadata") or {}).get("annotations") or {}).get(
            contract.EXCLUSIVE_TOPOLOGY_KEY) or ((rj.get("template") or {}).get("metadata") or {}).get(
            "annotations", {}).get(contract.EXCLUSIVE_TOPOLOGY_KEY)
        selector.update(pod_spec.get("nodeSelector") or {})
        for c in pod_spec.get("containers") or []:
            res = c.get("resources") or {}
            for src in (res.get("limits") or {}, res.get("requests") or {}):
                for k, v in src.items():
                    if k not in _STANDARD:
                        capacity[k] = str(max(int(str(v)), int(capacity.get(k, 0))))
        pods = int(job.get("parallelism", 1))
        jobs += [pods] * int(rj.get("replicas", 1))
    sel = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
    if not capacity and not exclusive:
        return 1, [sel] if sel else [], []
    labels = []
    for j, pods in enumerate(jobs):
        pool = f"{exclusive}=pool-{j}" if exclusive else ""
        labels += [",".join(x for x in (sel, pool) if x)] * pods
    if not all(labels):
        labels = []
    return max(1, sum(jobs)), labels, [f"{k}={v}" for k, v in sorted(capacity.items())]


class ClusterRun:
    def __init__(self, args, js: dict):
        self.args, self.js = args, js
        self.name = js["metadata"]["name"]
        self.namespace = js["metadata"].get("namespace", "default")
        self.bin_dir = binaries.locate()
        self.kubeconfig = args.kubeconfig
        self.state: Path | None = None
        self.out = sys.stdout
        self._tail_stop = threading.Event()
        self._t0 = time.monotonic()

    def kubectl(self, *a: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        r = subprocess.run([str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *a],
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise ConfigError(f"kubectl {' '.join(a)}: {r.stderr.strip()}")
        return r

    def start_cluster(self) -> None:
        nodes, labels, capacity = placement(self.js)
        base = Path(self.args.run_dir or os.path.join("runs", f"{self.name}-{time.strftime('%Y%m%d-%H%M%S')}"))
        base = base.resolve()
        base.mkdir(parents=True, exist_ok=True)
        self.run_dir = base
        self.state = Path(tempfile.mkdtemp(prefix="cluster-", dir=base))
        self.state.rmdir()  # up makes it
        print(f"run directory: {base}", file=self.out, flush=True)
        port = cluster.free_port()
        # Pod logs and volumes in the run directory, as the embedded backend keeps them there.
        agent = [f"--mode={self.args.mode}", f"--workdir={os.getcwd()}", f"--pods-dir={base}",
                 *[f"--node-capacity={c}" for c in capacity]]
        if self.args.crash_backoff is not None:
            agent.append(f"--crash-backoff={self.args.crash_backoff}")
        if self.args.dns_delay:
            agent.append(f"--dns-delay={self.args.dns_delay}")
        rc = cluster.up(self.state, port, nodes, labels, foreground=False, timeout=300.0,
                        out=open(os.devnull, "w"), agent_args=agent)
        if rc != 0:
            raise ConfigError(f"the cluster did not start (exit {rc})") if rc == 2 else RuntimeError(
                f"the cluster did not start (exit {rc}); logs in {self.state}/logs")
        self.kubeconfig = str(self.state / "kubeconfig")
        self._event(f"cluster up: {nodes} node(s), API https://127.0.0.1:{port}")
        threading.Thread(target=self._tail, args=(self.state / "logs" / "node-agent.log",), daemon=True).start()

    def _event(self, msg: str) -> None:
        print(f"[{time.monotonic() - self._t0:7.2f}s] {msg}", file=self.out, flush=True)

    def _tail(self, path: Path) -> None:
        """The node agent's pod output and events, as the embedded runner prints them."""
        with open(path, "rb") as f:
            buf = b""
            while not self._tail_stop.is_set():
                data = f.read()
                if not data:
                    time.sleep(0.1)
                    continue
                buf += data
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    text = line.decode(errors="replace")
                    if text.startswith("["):
                        print(text, file=self.out, flush=True)

    def status(self) -> dict:
        r = self.kubectl("get", "jobset", self.name, "-n", self.namespace, "-o", "json", check=False)
        return json.loads(r.stdout) if r.returncode == 0 else {}

    def _report_changes(self, js: dict, seen: dict) -> None:
        """The JobSet's own events, from its status: conditions that turn True, restarts."""
        st = js.get("status") or {}
        if st.get("restarts", 0) != seen.get("restarts", 0):
            seen["restarts"] = st.get("restarts", 0)
            self._event(f"jobset {self.name} restarting (restarts {seen['restarts']})")
        for c in st.get("conditions") or []:
            key = (c["type"], c.get("reason"))
            if c.get("status") == "True" and key not in seen:
                seen[key] = True
                self._event(f"jobset {self.name} {c['type']}: {c.get('reason', '')}: {c.get('message', '')}")

    def run(self) -> int:
        outcome, js, seen = None, {}, {}

        def interrupt(signum, frame):
            raise KeyboardInterrupt

        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, interrupt)
        try:
            if not self.kubeconfig:
                self.start_cluster()
            self.kubectl("apply", "-f", self.args.file)
            self._event(f"jobset {self.name} applied")
            deadline = time.monotonic() + self.args.timeout if self.args.timeout else None
            while True:
                js = self.status()
                self._report_changes(js, seen)
                state = (js.get("status") or {}).get("terminalState")
                if state:
                    outcome = state
                    break
                if deadline and time.monotonic() > deadline:
                    outcome = TIMEOUT
                    break
                time.sleep(0.3)
        except KeyboardInterrupt:
            outcome = INTERRUPTED
        finally:
            self._tail_stop.set()
            if outcome in ("Completed", "Failed"):
                time.sleep(0.5)  # the last lines of output
            js = js or {}
            result = self._result(js, outcome)
            for line in result.lines():
                print(line, file=self.out)
            if self.state is not None:
                print(f"logs: {self.run_dir} (control plane: {self.run_dir / CONTROL_PLANE_LOGS})", file=self.out,
                      flush=True)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # the teardown runs to its end
                    signal.signal(sig, signal.SIG_IGN)
                # The components' logs outlive the cluster, beside the pods' (down removes its directory).
                cluster.down(self.state, keep_logs=self.run_dir / CONTROL_PLANE_LOGS)
        return result.exit_code()

    def _result(self, js: dict, outcome) -> Result:
        """The run's end from the JobSet's real status."""
        st = js.get("status") or {}
        conds = {c["type"]: c for c in st.get("conditions") or []}
        state = st.get("terminalState") or ""
        by_name = {r["name"]: r for r in st.get("replicatedJobsStatus") or []}
        rjobs = tuple(ReplicatedJobCounts(rj["name"], *(int(by_name.get(rj["name"], {}).get(k, 0))
                                                        for k in ("ready", "succeeded", "failed", "active")))
                      for rj in (js.get("spec") or self.js["spec"]).get("replicatedJobs") or [])
        term = (conds.get("Failed") if state == "Failed" else conds.get("Completed")) or {}
        return Result(self.name, outcome, state, st.get("restarts", 0),
                      completed=(conds.get("Completed") or {}).get("status") == "True",
                      suspended=bool((js.get("spec") or {}).get("suspend", False)),
                      age=time.monotonic() - self._t0, rjobs=rjobs, reason=term.get("reason", ""),
                      message=term.get("message") or "")


def run_on_cluster(args) -> int:
    from .. import spec

    js, _ = spec.read_file(args.file)
    from ..cli import NEEDS_ROOT

    if not args.kubeconfig and (os.geteuid() != 0 or args.mode in ("loopback", "rootless")):
        raise ConfigError(f"--backend cluster{' --mode ' + args.mode if args.mode != 'auto' else ''}: {NEEDS_ROOT}")
    refused = [("--skew", args.skew), ("--pod-backoff", args.pod_backoff)]
    if args.kubeconfig:
        refused.append(("--dns-delay", args.dns_delay))  # the DNS of a running cluster is not ours to slow
    for flag, value in refused:
        if value:
            raise ConfigError(f"{flag} is not available with --backend cluster: the real controllers and DNS "
                              "decide those timings; drop it or use --backend embedded")
    return ClusterRun(args, js).run()
