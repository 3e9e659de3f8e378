"""JobSet semantics on one machine: replicatedJobs -> Jobs -> pods, and their lifecycle.

The controller decides; a runtime (runner.py) does.  It calls
`runtime.start_pod(pod)` (IP, namespaces, volumes), `runtime.spawn(pod, container)`,
`runtime.stop_pod(pod, grace)`, `runtime.stop_containers(...)`,
`runtime.call_later(delay, fn)` and `runtime.event(msg)`, and is told
`sandbox_ready(pod)`, `container_started(...)` (startupProbe passed),
`readiness_changed(pod)`, `container_exited(pod, container, code)` and
`pod_gone(pod)` back.  Every rule names the upstream code it reproduces:

- JobSet (kubernetes-sigs/jobset v0.12) pkg/controllers/jobset_controller.go:
  child Jobs per replicatedJob, their labels/annotations, successPolicy,
  failurePolicy rules and restarts, deleting active Jobs when the JobSet ends;
  pkg/controllers/depends_on.go: dependsOn Ready/Complete;
  pkg/controllers/startup_policy.go: startupPolicy InOrder.
- Job controller (kubernetes/kubernetes pkg/controller/job/): Indexed pods,
  backoffLimit (pods for restartPolicy Never, container restarts for OnFailure),
  backoffLimitPerIndex, podFailurePolicy onExitCodes, activeDeadlineSeconds,
  pod re-creation back-off.
- kubelet: container sequencing, in-place restarts with CrashLoopBackOff
  (podlifecycle.py, shared with the node agent), here with the Job controller's
  count of container restarts toward backoffLimit.
"""

from __future__ import annotations

import random
import re
import uuid
from dataclasses import dataclass, field

from .. import contract, jobset
from .podlifecycle import (CRASH_BACKOFF_INITIAL, Container, ContainerKind, PodContainers, PodLifecycle, PodPhase,
                           containers_of)

# pkg/controller/job/job_controller.go: DefaultJobPodFailureBackOff 10 s, MaxJobPodFailureBackOff 10 min.
POD_BACKOFF_MAX = 600.0

# k8s.io/apiserver storage/names: generateName suffixes use this alphabet, 5 characters.
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def subdomain_of(js: dict) -> str:
    return jobset.subdomain(js)


def pod_metadata(js: dict, rjob_name: str, job_index: int, pod_index: int, restart_attempt: int,
                 job_uid: str = "") -> tuple[dict, dict]:
    """(labels, annotations) of one pod: the template's own, JobSet's (jobset.child_pod_metadata:
    labelAndAnnotateObject, each key both label and annotation, plus the completion index),
    and the rest of the Job controller's labels (pkg/controller/job: job-name and
    controller-uid, with and without the batch.kubernetes.io/ prefix)."""
    labels, annotations = jobset.child_pod_metadata(js, rjob_name, job_index, pod_index,
                                                    restart_attempt=restart_attempt,
                                                    uid=js["metadata"].get("uid", ""))
    jname = jobset.job_name(js["metadata"]["name"], rjob_name, job_index)
    labels.update({
        contract.JOB_CONTROLLER_UID_KEY: job_uid, contract.JOB_NAME_KEY: jname,
        contract.LEGACY_CONTROLLER_UID_KEY: job_uid, contract.LEGACY_JOB_NAME_KEY: jname,
    })
    return labels, annotations


# --- state -------------------------------------------------------------------------

@dataclass
class Pod(PodContainers):
    job: "Job"
    index: int
    name: str
    hostname: str
    uid: str
    labels: dict
    annotations: dict
    containers: list            # the main containers
    init_containers: list = field(default_factory=list)
    ip: str = ""
    init_next: int = 0          # index of the next init container to run
    phase: PodPhase = PodPhase.PENDING
    stopping: bool = False      # being deleted: exits are not failures
    gone: bool = False          # every process has ended after a delete or a terminal phase
    started: bool = False
    ready: bool = False
    ended: bool = False         # every process has exited; the runtime is told once

    @property
    def spec(self) -> dict:
        return self.job.pod_spec


@dataclass
class Job:
    rjob: str
    index: int
    name: str
    uid: str
    restart_attempt: int
    spec: dict                  # the Job spec (with defaults)
    pods: dict = field(default_factory=dict)   # index -> current Pod
    old_pods: list = field(default_factory=list)
    succeeded: set = field(default_factory=set)
    failed_indexes: set = field(default_factory=set)
    index_failures: dict = field(default_factory=dict)
    failed: int = 0             # failed pods counted toward backoffLimit
    state: str = "Active"       # Active, Complete, Failed
    reason: str = ""
    message: str = ""
    deleting: bool = False

    @property
    def pod_spec(self) -> dict:
        return self.spec["template"]["spec"]

    @property
    def completions(self) -> int:
        return int(self.spec["completions"])

    def live_pods(self):
        return [p for p in list(self.pods.values()) + self.old_pods if not p.gone]

    def ready_count(self) -> int:
        return sum(1 for p in self.pods.values() if p.ready and p.phase == PodPhase.RUNNING)


class Controller(PodLifecycle):
    """One JobSet's controller plus the Job controllers and kubelets of its children
    (the kubelets' container sequencing is PodLifecycle's)."""

    def __init__(self, js: dict, runtime, *, skew: dict | None = None,
                 crash_backoff: float = CRASH_BACKOFF_INITIAL, pod_backoff: float = 10.0):
        self.js = js
        self.rt = runtime
        self.skew = dict(skew or {})
        self.crash_backoff = crash_backoff
        self.pod_backoff = pod_backoff
        self.name = js["metadata"]["name"]
        self.namespace = js["metadata"].get("namespace", "default")
        self.subdomain = subdomain_of(js)
        js["metadata"].setdefault("uid", str(uuid.uuid4()))
        self.rjobs = js["spec"]["replicatedJobs"]
        self.restarts = 0
        self.restarts_towards_max = 0
        self.terminal_state = ""    # "", "Completed", "Failed"
        self.terminal_reason = ""
        self.terminal_message = ""
        self.jobs: dict = {}        # (rjob, index) -> Job of the current attempt
        self.old_jobs: list = []    # Jobs being deleted
        self.restarting = False
        self.halted = False         # the runner is stopping (timeout, Ctrl-C): start nothing
        self._in_order_announced: set = set()  # (restarts, replicatedJob) whose InOrder wait was reported
        self._rng = random.Random()

    # --- queries ------------------------------------------------------------------
    def all_pods(self):
        for job in list(self.jobs.values()) + self.old_jobs:
            yield from list(job.pods.values()) + job.old_pods

    def live_pods(self):
        return [p for p in self.all_pods() if not p.gone]

    @property
    def finished(self) -> bool:
        """Terminal and every process gone: the runner may exit."""
        return bool(self.terminal_state) and not self.live_pods()

    def rjob_status(self, rjob: str) -> dict:
        """ReplicatedJobStatus (jobset_controller.go): Jobs ready, succeeded, failed, active.
        A Job counts as ready when ready + succeeded pods >= parallelism."""
        jobs = [j for (r, _), j in self.jobs.items() if r == rjob]
        st = {"ready": 0, "succeeded": 0, "failed": 0, "active": 0}
        for j in jobs:
            if j.state == "Complete":
                st["succeeded"] += 1
            elif j.state == "Failed":
                st["failed"] += 1
            else:
                st["active"] += 1
                if j.ready_count() + len(j.succeeded) >= int(j.spec["parallelism"]):
                    st["ready"] += 1
        return st

    # --- start --------------------------------------------------------------------
    def start(self) -> None:
        self._create_due_jobs()

    def _dependency_reached(self, rj: dict) -> bool:
        """pkg/controllers/depends_on.go: Complete = every Job succeeded; Ready = every Job
        ready, succeeded or failed."""
        for dep in rj.get("dependsOn") or []:
            other = next(r for r in self.rjobs if r["name"] == dep["name"])
            if not any(r == dep["name"] for r, _ in self.jobs):
                return False
            st = self.rjob_status(dep["name"])
            replicas = int(other["replicas"])
            if dep["status"] == "Complete" and st["succeeded"] != replicas:
                return False
            if dep["status"] == "Ready" and st["ready"] + st["succeeded"] + st["failed"] != replicas:
                return False
        return True

    def _all_started(self, rj: dict) -> bool:
        """startup_policy.go allReplicasStarted: every Job ready, succeeded or failed."""
        st = self.rjob_status(rj["name"])
        return st["ready"] + st["succeeded"] + st["failed"] == int(rj["replicas"])

    @property
    def in_order(self) -> bool:
        """startupPolicy InOrder (startup_policy.go inOrderStartupPolicy)."""
        return (self.js["spec"].get("startupPolicy") or {}).get("startupPolicyOrder") == "InOrder"

    def _create_due_jobs(self) -> None:
        """jobset_controller.go reconcileReplicatedJobs: in spec order, a replicatedJob's
        Jobs are created once its dependsOn is reached; with startupPolicy InOrder, a
        replicatedJob whose Jobs are not all started (ready, succeeded or failed) is the
        last one created until they are."""
        if self.terminal_state or self.restarting or self.halted:
            return
        for rj in self.rjobs:
            if not self._dependency_reached(rj):
                # Later replicatedJobs wait too: dependsOn names only earlier ones.
                continue
            if self.in_order and self._all_started(rj):
                continue
            for i in range(int(rj["replicas"])):
                if (rj["name"], i) not in self.jobs:
                    self._create_job(rj, i)
            if self.in_order:
                if rj is not self.rjobs[-1] and (self.restarts, rj["name"]) not in self._in_order_announced:
                    self._in_order_announced.add((self.restarts, rj["name"]))
                    self.rt.event(f"startupPolicy InOrder: the next replicatedJob waits for {rj['name']} to be ready")
                return

    def _create_job(self, rj: dict, index: int) -> None:
        name = jobset.job_name(self.name, rj["name"], index)
        job = Job(rjob=rj["name"], index=index, name=name, uid=str(uuid.uuid4()),
                  restart_attempt=self.restarts, spec=rj["template"]["spec"])
        self.jobs[(rj["name"], index)] = job
        self.rt.event(f"job {name} created (restart-attempt {self.restarts})")
        deadline = job.spec.get("activeDeadlineSeconds")
        if deadline is not None:
            self.rt.call_later(float(deadline), lambda: self._deadline(job))
        parallelism = int(job.spec["parallelism"])
        for pod_index in range(min(parallelism, job.completions)):
            self._create_pod(job, pod_index)

    def _create_pod(self, job: Job, pod_index: int, delay: float = 0.0) -> None:
        if job.state != "Active" or job.deleting or self.halted:
            return
        hostname = f"{job.name}-{pod_index}"
        suffix = "".join(self._rng.choice(_SUFFIX_ALPHABET) for _ in range(5))
        labels, annotations = pod_metadata(self.js, job.rjob, job.index, pod_index, job.restart_attempt, job.uid)
        containers, inits = containers_of(job.pod_spec)
        pod = Pod(job=job, index=pod_index, name=f"{hostname}-{suffix}", hostname=hostname,
                  uid=str(uuid.uuid4()), labels=labels, annotations=annotations, containers=containers,
                  init_containers=inits)
        old = job.pods.get(pod_index)
        if old is not None and not old.gone:
            job.old_pods.append(old)
        job.pods[pod_index] = pod
        delay += self._skew_for(pod)
        if delay > 0:
            self.rt.call_later(delay, lambda: self._launch(pod))
        else:
            self._launch(pod)

    def _skew_for(self, pod: Pod) -> float:
        import fnmatch
        for pattern, seconds in self.skew.items():
            if fnmatch.fnmatchcase(pod.hostname, pattern) or fnmatch.fnmatchcase(pod.name, pattern):
                return float(seconds)
        return 0.0

    def _launch(self, pod: Pod) -> None:
        if pod.stopping or pod.job.deleting or pod.job.state != "Active" or self.terminal_state or self.halted:
            pod.gone = True
            pod.phase = PodPhase.FAILED if pod.phase == PodPhase.PENDING else pod.phase
            self._maybe_progress()
            return
        self.rt.start_pod(pod)

    # --- the kubelet's hooks (podlifecycle.py) ----------------------------------------
    def _pod_running(self, pod: Pod) -> None:
        self.rt.event(f"pod {pod.name} running")

    def _container_down(self, pod: Pod, container: Container) -> None:
        self.readiness_changed(pod)  # the endpoints drop it at once

    def _may_restart(self, pod: Pod) -> bool:
        return pod.job.state == "Active" and not pod.job.deleting and not self.terminal_state

    def readiness_changed(self, pod: Pod) -> None:
        """Ready = every main container and sidecar running, started and ready
        (pkg/kubelet/status generate.go GeneratePodReadyCondition)."""
        ready = (pod.started and pod.phase == PodPhase.RUNNING and not pod.stopping and
                 all(c.running and c.started and c.ready for c in pod.containers + pod.sidecars))
        if ready != pod.ready:
            pod.ready = ready
            self.rt.pod_ready_changed(pod)
            if ready:
                self._create_due_jobs()

    def _restart_later(self, pod: Pod, container: Container) -> None:
        if container.kind == ContainerKind.SIDECAR:
            # Sidecars restart whatever their exit, while the main containers run.
            self.rt.event(f"pod {pod.name}: sidecar {container.name} exited with {container.exit_code}, restarting")
            self._schedule_restart(pod, container)
            return
        # The Job controller counts container restarts toward backoffLimit
        # (pkg/controller/job pastBackoffLimitOnFailure).
        job = pod.job
        restarts = sum(c.restarts for p in job.pods.values() for c in p.all_containers()
                       if c.kind != ContainerKind.SIDECAR)
        limit = int(job.spec["backoffLimit"])
        self.rt.event(f"pod {pod.name}: container {container.name} exited with {container.exit_code} "
                      f"(restart {container.restarts})")
        if (limit == 0 and restarts > 0) or (limit > 0 and restarts >= limit):
            self._fail_job(job, "BackoffLimitExceeded", "Job has reached the specified backoff limit")
            return
        self._schedule_restart(pod, container)

    def _pod_terminal(self, pod: Pod, phase: PodPhase) -> None:
        pod.phase = phase
        self.readiness_changed(pod)
        self._stop_sidecars(pod)
        if phase == PodPhase.SUCCEEDED:
            self._index_succeeded(pod.job, pod.index)
        else:
            self._pod_failed(pod.job, pod)

    def pod_gone(self, pod: Pod) -> None:
        """Every process of the pod has ended (a delete finished, or it ran to the end)."""
        pod.gone = True
        self._maybe_progress()

    # --- Job controller -------------------------------------------------------------
    def _index_succeeded(self, job: Job, index: int) -> None:
        job.succeeded.add(index)
        self.rt.event(f"pod {job.pods[index].name} succeeded")
        if len(job.succeeded) + len(job.failed_indexes) >= job.completions:
            if job.failed_indexes:
                self._fail_job(job, "FailedIndexes", "Job has failed indexes")
            else:
                job.state = "Complete"
                self.rt.event(f"job {job.name} completed")
        else:
            self._next_index(job)
        self._evaluate()

    def _next_index(self, job: Job) -> None:
        started = set(job.pods)
        for i in range(job.completions):
            if i not in started and i not in job.succeeded:
                if sum(1 for p in job.pods.values() if p.phase in (PodPhase.PENDING, PodPhase.RUNNING)) < int(job.spec["parallelism"]):
                    self._create_pod(job, i)
                    started.add(i)

    def _pod_failed(self, job: Job, pod: Pod) -> None:
        codes = {c.name: c.exit_code for c in pod.all_containers() if c.exit_code is not None and c.kind != ContainerKind.SIDECAR}
        self.rt.event(f"pod {pod.name} failed (exit codes {', '.join(f'{k}={v}' for k, v in codes.items())})")
        action = self._pod_failure_action(job, pod)
        if action == "FailJob":
            self._fail_job(job, "PodFailurePolicy", f"Container of pod {pod.name} matched a podFailurePolicy FailJob rule")
            return
        if action == "Ignore":
            self._create_pod(job, pod.index)
            return
        per_index = job.spec.get("backoffLimitPerIndex")
        if per_index is not None:
            # Job backoffLimitPerIndex: the index fails after that many retries (or at
            # once with FailIndex); the Job fails when every index is done.
            n = job.index_failures[pod.index] = job.index_failures.get(pod.index, 0) + 1
            if action == "FailIndex" or n > int(per_index):
                job.failed_indexes.add(pod.index)
                max_failed = job.spec.get("maxFailedIndexes")
                if max_failed is not None and len(job.failed_indexes) > int(max_failed):
                    self._fail_job(job, "MaxFailedIndexesExceeded", "Job has exceeded the specified maximal number of failed indexes")
                elif len(job.succeeded) + len(job.failed_indexes) >= job.completions:
                    self._fail_job(job, "FailedIndexes", "Job has failed indexes")
                return
            self._create_pod(job, pod.index, delay=self._pod_delay(n))
            return
        if action == "FailIndex":
            self._fail_job(job, "FailedIndexes", "Job has failed indexes")
            return
        job.failed += 1
        if job.failed > int(job.spec["backoffLimit"]):
            self._fail_job(job, "BackoffLimitExceeded", "Job has reached the specified backoff limit")
            return
        self._create_pod(job, pod.index, delay=self._pod_delay(job.failed))

    def _pod_delay(self, failures: int) -> float:
        return min(self.pod_backoff * 2 ** (failures - 1), POD_BACKOFF_MAX)

    def _pod_failure_action(self, job: Job, pod: Pod) -> str:
        """podFailurePolicy (pkg/controller/job/pod_failure_policy.go): the first rule
        whose onExitCodes matches a container that failed (non-zero exit); rules on
        pod conditions never match here (no disruptions on one machine)."""
        for rule in (job.spec.get("podFailurePolicy") or {}).get("rules") or []:
            req = rule.get("onExitCodes")
            if not req:
                continue
            values = {int(v) for v in req.get("values") or []}
            for c in pod.all_containers():
                if req.get("containerName") and c.name != req["containerName"]:
                    continue
                if not c.exit_code:
                    continue
                inside = c.exit_code in values
                if inside == (req.get("operator", "In") == "In"):
                    return rule.get("action", "Count")
        return "Count"

    def _deadline(self, job: Job) -> None:
        if job.state == "Active" and not job.deleting and self.jobs.get((job.rjob, job.index)) is job:
            self._fail_job(job, "DeadlineExceeded", "Job was active longer than specified deadline")

    def _fail_job(self, job: Job, reason: str, message: str) -> None:
        if job.state != "Active":
            return
        job.state, job.reason, job.message = "Failed", reason, message
        self.rt.event(f"job {job.name} failed: {reason}")
        for p in job.live_pods():
            self._stop_pod(p)
        self._evaluate()

    # --- JobSet controller ------------------------------------------------------------
    def _evaluate(self) -> None:
        if self.terminal_state or self.restarting:
            return
        failed = [j for j in self.jobs.values() if j.state == "Failed"]
        if failed:
            self._on_job_failure(failed[0])
            return
        if self._success_reached():
            self._finish("Completed", "AllJobsCompleted", "jobset completed successfully")
            return
        self._create_due_jobs()

    def _success_reached(self) -> bool:
        """successPolicy (jobset_controller.go): All = every Job of the target
        replicatedJobs succeeded; Any = at least one did.  No targets = all of them."""
        sp = self.js["spec"]["successPolicy"]
        targets = sp.get("targetReplicatedJobs") or [r["name"] for r in self.rjobs]
        want = {(r["name"], i) for r in self.rjobs if r["name"] in targets for i in range(int(r["replicas"]))}
        done = {k for k in want if k in self.jobs and self.jobs[k].state == "Complete"}
        if sp.get("operator", "All") == "Any":
            return bool(done)
        return done == want

    def _on_job_failure(self, job: Job) -> None:
        """failurePolicy (jobset_controller.go executeFailurePolicy): no policy fails the
        JobSet; else the first matching rule's action; no match means RestartJobSet."""
        fp = self.js["spec"].get("failurePolicy")
        if fp is None:
            self._finish("Failed", "FailedJobs", f"jobset failed due to one or more job failures ({job.name}: {job.reason})")
            return
        action = "RestartJobSet"
        for rule in fp.get("rules") or []:
            if rule.get("onJobFailureReasons") and job.reason not in rule["onJobFailureReasons"]:
                continue
            if rule.get("targetReplicatedJobs") and job.rjob not in rule["targetReplicatedJobs"]:
                continue
            pats = rule.get("onJobFailureMessagePatterns")
            if pats and not any(re.search(p, job.message) for p in pats):
                continue
            action = rule["action"]
            self.rt.event(f"failurePolicy rule {rule['name']} matched job {job.name} ({job.reason}): {action}")
            break
        if action == "FailJobSet":
            self._finish("Failed", "FailJobSetActionApplied", f"job {job.name} failed with {job.reason}")
        elif action == "RestartJobSetAndIgnoreMaxRestarts":
            self._restart(count=False)
        elif self.restarts_towards_max >= int(fp.get("maxRestarts", 0)):
            self._finish("Failed", "ReachedMaxRestarts", "jobset failed due to reaching max number of restarts")
        else:
            self._restart(count=True)

    def _restart(self, count: bool) -> None:
        """Every Job of this attempt is deleted and recreated with restart-attempt = the new
        status.restarts.  Upstream Recreate may overlap old and new pods (jobset#665);
        here the new Jobs start once the old pods are gone, as BlockingRecreate does."""
        self.restarts += 1
        if count:
            self.restarts_towards_max += 1
        self.rt.event(f"jobset {self.name} restarting (restarts {self.restarts})")
        self.restarting = True
        for job in self.jobs.values():
            job.deleting = True
            for p in job.live_pods():
                self._stop_pod(p)
        self.old_jobs.extend(self.jobs.values())
        self.jobs = {}
        self._maybe_progress()

    def _finish(self, state: str, reason: str, message: str) -> None:
        self.terminal_state, self.terminal_reason, self.terminal_message = state, reason, message
        self.rt.event(f"jobset {self.name} {state}: {message}")
        # The controller deletes every active child Job; their pods get SIGTERM and
        # their grace period (jobset_controller.go deleteJobs, foreground).
        for job in list(self.jobs.values()) + self.old_jobs:
            for p in job.live_pods():
                self._stop_pod(p)
        self._maybe_progress()

    def _stop_pod(self, pod: Pod) -> None:
        if pod.stopping or pod.gone:
            return
        pod.stopping = True
        pod.ready = False
        if not pod.started and not any(c.running for c in pod.all_containers()):
            # Not started yet (skew or back-off): nothing to stop.
            if not self.rt.pod_has_processes(pod):
                pod.gone = True
                return
        self.rt.stop_pod(pod, float(pod.spec.get("terminationGracePeriodSeconds", 30)))

    def _maybe_progress(self) -> None:
        self.old_jobs = [j for j in self.old_jobs if j.live_pods()]
        if self.restarting and not self.old_jobs:
            self.restarting = False
            self._create_due_jobs()
        self.rt.wake()
