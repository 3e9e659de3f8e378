"""What the embedded runner implements, field by field, so nothing is silently ignored.

Every field of a JobSet, its ReplicatedJobs, Job templates, pod templates and
containers is in one of three sets:

- implemented: the runner does what a cluster does with it (docs/local-runner.md
  says how, and where it differs);
- satisfied on one machine: scheduling, placement and accounting (node
  selectors, tolerations, resources, images...): one node runs every pod, so the
  field has nothing to decide; `notices` names each one present;
- refused: anything else, including fields this table does not know (a newer
  API's): `refusals` names each one, and the runner exits 2 before starting.

Values matter for a few fields: `suspend: true`, a foreign `managedBy`, the
InPlaceRestart strategy and RestartJob actions, `hostNetwork: true`, DNS
policies other than ClusterFirst are refused; their defaults are implemented.
"""

from __future__ import annotations

from .. import contract

# The JobSet controller reconciles only JobSets without managedBy or with this value
# (kubernetes-sigs/jobset api/jobset/v1alpha2 jobset_types.go JobSetControllerName).
JOBSET_CONTROLLER = "jobset.sigs.k8s.io/jobset-controller"

SPEC = {"replicatedJobs", "network", "successPolicy", "failurePolicy", "startupPolicy", "coordinator",
        "suspend", "managedBy"}
SPEC_ONE_MACHINE = {"ttlSecondsAfterFinished"}  # the run ends with the JobSet
NETWORK = {"enableDNSHostnames", "subdomain", "publishNotReadyAddresses"}
FAILURE_POLICY = {"maxRestarts", "restartStrategy", "rules"}
RULE = {"name", "action", "onJobFailureReasons", "onJobFailureMessagePatterns", "targetReplicatedJobs"}
RJOB = {"name", "groupName", "replicas", "template", "dependsOn"}
JOB = {"parallelism", "completions", "completionMode", "backoffLimit", "backoffLimitPerIndex", "maxFailedIndexes",
       "podFailurePolicy", "activeDeadlineSeconds", "template", "podReplacementPolicy", "suspend"}
JOB_ONE_MACHINE = {"ttlSecondsAfterFinished"}
POD = {"containers", "initContainers", "volumes", "restartPolicy", "terminationGracePeriodSeconds",
       "securityContext", "serviceAccountName", "serviceAccount", "hostAliases", "hostNetwork", "dnsPolicy",
       "dnsConfig", "enableServiceLinks"}
POD_ONE_MACHINE = {"nodeSelector", "affinity", "tolerations", "schedulerName", "priorityClassName", "priority",
                   "preemptionPolicy", "topologySpreadConstraints", "runtimeClassName", "overhead", "nodeName",
                   "imagePullSecrets", "automountServiceAccountToken", "os", "resources"}
CONTAINER = {"name", "image", "command", "args", "workingDir", "ports", "env", "envFrom", "volumeMounts",
             "readinessProbe", "livenessProbe", "startupProbe", "restartPolicy", "securityContext",
             "terminationMessagePolicy", "terminationMessagePath", "stdin", "stdinOnce", "tty"}
CONTAINER_ONE_MACHINE = {"imagePullPolicy", "resources", "resizePolicy"}
TERMINATION_LOG = contract.TERMINATION_LOG


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _fields(obj: dict, path: str, implemented: set, one_machine: set, refused: list, notices: list) -> None:
    for key in obj:
        if key in implemented:
            continue
        (notices if key in one_machine else refused).append(f"{path}.{key}")


def review(js: dict) -> tuple[list, list]:
    """(refused fields, fields with no effect on one machine) of a defaulted JobSet, as JSON paths."""
    refused: list = []
    notices: list = []
    spec = _dict(js.get("spec"))
    _fields(spec, "spec", SPEC, SPEC_ONE_MACHINE, refused, notices)
    if spec.get("suspend"):
        refused.append("spec.suspend (true: the runner would never start it)")
    if spec.get("managedBy") not in (None, JOBSET_CONTROLLER):
        refused.append(f"spec.managedBy ({spec['managedBy']!r}: the JobSet controller leaves it to that manager)")
    _fields(_dict(spec.get("network")), "spec.network", NETWORK, set(), refused, notices)
    policy = _dict(spec.get("failurePolicy"))
    _fields(policy, "spec.failurePolicy", FAILURE_POLICY, set(), refused, notices)
    if policy.get("restartStrategy", "Recreate") not in ("Recreate", "BlockingRecreate"):
        refused.append(f"spec.failurePolicy.restartStrategy ({policy['restartStrategy']}; use Recreate or "
                       "BlockingRecreate)")
    for i, rule in enumerate(policy.get("rules") or []):
        _fields(_dict(rule), f"spec.failurePolicy.rules[{i}]", RULE, set(), refused, notices)
        if _dict(rule).get("action") in ("RestartJob", "RestartJobAndIgnoreMaxRestarts"):
            refused.append(f"spec.failurePolicy.rules[{i}].action ({rule['action']}; use RestartJobSet)")
    if (spec.get("startupPolicy") or {}).get("startupPolicyOrder") == "InOrder" and \
            any(_dict(r).get("dependsOn") for r in spec.get("replicatedJobs") or []):
        # The CRD's CEL rule on JobSetSpec (jobset_types.go) rejects this on a cluster;
        # the runner checks no CRD, so it says so itself.
        refused.append("spec.startupPolicy (InOrder with dependsOn: the API server rejects the two together)")
    for i, rjob in enumerate(spec.get("replicatedJobs") or []):
        rpath = f"spec.replicatedJobs[{i}]"
        _fields(_dict(rjob), rpath, RJOB, set(), refused, notices)
        job = _dict(_dict(_dict(rjob).get("template")).get("spec"))
        _job(job, f"{rpath}.template.spec", refused, notices)
    return refused, notices


def _job(job: dict, path: str, refused: list, notices: list) -> None:
    _fields(job, path, JOB, JOB_ONE_MACHINE, refused, notices)
    if job.get("suspend"):
        refused.append(f"{path}.suspend (true: the Job would never start)")
    pod = _dict(_dict(job.get("template")).get("spec"))
    ppath = f"{path}.template.spec"
    _fields(pod, ppath, POD, POD_ONE_MACHINE, refused, notices)
    if pod.get("hostNetwork"):
        refused.append(f"{ppath}.hostNetwork (true: pods run in their own network namespaces here)")
    dns = pod.get("dnsPolicy", "ClusterFirst")
    # kubelet.resolv_conf: ClusterFirst, and None with dnsConfig (merged into either).
    if dns not in ("ClusterFirst", "ClusterFirstWithHostNet", "None"):
        refused.append(f"{ppath}.dnsPolicy ({dns}: ClusterFirst and None are implemented)")
    for kind in ("initContainers", "containers"):
        for k, c in enumerate(pod.get(kind) or []):
            cpath = f"{ppath}.{kind}[{k}]"
            c = _dict(c)
            _fields(c, cpath, CONTAINER, CONTAINER_ONE_MACHINE, refused, notices)
            if c.get("terminationMessagePath", TERMINATION_LOG) != TERMINATION_LOG:
                refused.append(f"{cpath}.terminationMessagePath (only {TERMINATION_LOG}, as "
                               f"{contract.TERMINATION_LOG_ENV})")
            for flag in ("stdin", "stdinOnce", "tty"):
                if c.get(flag):
                    refused.append(f"{cpath}.{flag} (true: pods have no terminal here)")
