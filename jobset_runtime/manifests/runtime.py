"""The verdicts past the API server's: the child Jobs', and jobset-runtime's own.

The API server accepts a JobSet on its CRD schema and JobSet's webhook alone; two
more things can still stop it from running, and `validate` names them apart:

- `job_issues` ("jobs"): the JobSet is stored, but the Job API will reject the
  Jobs its controller creates from the template (kubernetes pkg/apis/batch/
  validation/validation.go ValidateJobSpec and the CEL rules of k8s.io/api
  batch/v1 JobSpec), checked on the template with the Job API's defaults
  (defaults.job_defaults).  The JobSet then never starts its pods.
- `runtime_issues` ("runtime"): what jobset-runtime needs to give every pod its
  identity and peers: Indexed Jobs, completions = parallelism (every pod runs at
  once), at least one replicatedJob.

`validate` prints both as warnings; `validate --for-runtime`, the generators' own
self-check and the local runner treat them as errors.
"""

from __future__ import annotations

from . import defaults
from .issues import Issue

# pkg/apis/batch/validation: maxParallelismForIndexedJob.
MAX_PARALLELISM_INDEXED = 100_000


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _rjobs(doc: dict) -> list:
    rjobs = _dict(doc.get("spec")).get("replicatedJobs")
    return [(i, r) for i, r in enumerate(rjobs if isinstance(rjobs, list) else []) if isinstance(r, dict)]


def job_issues(doc: dict, path: str = "") -> list:
    """What the Job API will reject in each replicatedJob's Job (on a defaulted JobSet)."""
    out = []
    for i, rjob in _rjobs(doc):
        jpath = f"{path}.spec.replicatedJobs[{i}].template.spec"
        job = defaults.job_defaults(_dict(rjob.get("template")).get("spec"))
        pod = _dict(_dict(job.get("template")).get("spec"))
        restart = pod.get("restartPolicy")
        indexed = job.get("completionMode") == "Indexed"
        for kind in ("initContainers", "containers"):
            for k, c in enumerate(pod.get(kind) or []):
                if isinstance(c, dict) and not c.get("name"):
                    out.append(Issue(f"{jpath}.template.spec.{kind}[{k}].name", "jobs: Required value: every "
                                     "container of a Job's pods needs a name", "name the container"))
        if restart not in ("OnFailure", "Never"):
            out.append(Issue(f"{jpath}.template.spec.restartPolicy", f"jobs: Unsupported value {restart!r}: a Job's "
                             "pods restart OnFailure or Never", "set restartPolicy: Never (or OnFailure)"))
        if job.get("podFailurePolicy") is not None and restart != "Never":
            out.append(Issue(f"{jpath}.template.spec.restartPolicy", "jobs: podFailurePolicy needs restartPolicy "
                             f"Never (here {restart}, the JobSet webhook's default when unset)",
                             "set restartPolicy: Never"))
        if indexed and job.get("completions") is None:
            out.append(Issue(f"{jpath}.completions", "jobs: Required value: when completion mode is Indexed "
                             "(parallelism is set, so the Job API leaves completions unset)",
                             "set completions, usually equal to parallelism"))
        parallelism = job.get("parallelism")
        if indexed and isinstance(parallelism, int) and parallelism > MAX_PARALLELISM_INDEXED:
            out.append(Issue(f"{jpath}.parallelism", f"jobs: must be less than or equal to {MAX_PARALLELISM_INDEXED} "
                             "when completion mode is Indexed", "use fewer pods per Job, more Jobs"))
        if job.get("maxFailedIndexes") is not None and job.get("backoffLimitPerIndex") is None:
            out.append(Issue(f"{jpath}.backoffLimitPerIndex", "jobs: Required value: when maxFailedIndexes is "
                             "specified", "set backoffLimitPerIndex"))
        if job.get("backoffLimitPerIndex") is not None and not indexed:
            out.append(Issue(f"{jpath}.backoffLimitPerIndex", "jobs: requires indexed completion mode",
                             "remove completionMode (JobSet defaults it to Indexed)"))
    return out


def runtime_issues(doc: dict, path: str = "") -> list:
    """What jobset-runtime needs beyond what the API server and the Job API accept."""
    out = []
    rjobs = _rjobs(doc)
    if not rjobs:
        out.append(Issue(f"{path}.spec.replicatedJobs", "runtime: no replicatedJobs, so no pods to run",
                         "add a replicatedJob"))
    for i, rjob in rjobs:
        jpath = f"{path}.spec.replicatedJobs[{i}].template.spec"
        job = defaults.job_defaults(_dict(rjob.get("template")).get("spec"))
        mode = job.get("completionMode")
        if mode != "Indexed":
            out.append(Issue(f"{jpath}.completionMode", f"runtime: completionMode {mode!r}; pods find their rank "
                             "in the completion index", "use Indexed (or leave it out: the JobSet default)"))
        completions, parallelism = job.get("completions"), job.get("parallelism")
        if completions is not None and completions != parallelism:
            out.append(Issue(f"{jpath}.completions", f"runtime: completions ({completions}) != parallelism "
                             f"({parallelism}); every pod must run at the same time to find its peers",
                             "set both to the pods per Job"))
    return out
