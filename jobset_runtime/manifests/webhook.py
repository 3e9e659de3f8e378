"""JobSet's validating webhook on create, rule by rule, on the defaulted JobSet.

Every rule is one of kubernetes-sigs/jobset v0.12.0 pkg/webhooks/jobset_webhook.go
ValidateCreate (and validateFailurePolicy, validateCoordinator,
validateCoordinatorLabelValue, validateVolumeClaimPolicies); each cites the check
it reproduces.  Where upstream returns a plain error without a field path, the
issue points at the field the error is about.  Feature gates are those of
pkg/features/features.go, at their defaults unless `FeatureGates` says otherwise
(the manager's --feature-gates flag).

Not reproducible without a cluster: validateVolumeClaimPolicies also reads an
existing PVC of the same name and, when there is one, requires the same spec and
retentionPolicy Retain; here no PVC is taken to exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import contract
from .. import jobset as js
from ..errors import ConfigError
from . import names
from .issues import Issue

INT32_MAX = 2 ** 31 - 1
# jobset_webhook.go constants.
MAX_MANAGED_BY = 63
MAX_VOLUME_CLAIM_NAME = 63
MAX_REPLICAS_WITH_RESTART_JOB = 1024
RULE_NAME_MIN, RULE_NAME_MAX = 1, 128
JOB_FAILURE_REASONS = ("BackoffLimitExceeded", "DeadlineExceeded", "FailedIndexes",
                       "MaxFailedIndexesExceeded", "PodFailurePolicy")
RESTART_JOB_ACTIONS = ("RestartJob", "RestartJobAndIgnoreMaxRestarts")
POD_NAME_SUFFIX = "-abcde"
GENERATED_SUFFIX = 5  # k8s.io/apiserver pkg/storage/names randomLength  # the webhook's stand-in for the pod name's random suffix

# pkg/features/features.go defaultFeatureGates: name -> default.
FEATURE_GATES = {"InPlaceRestart": False, "TLSOptions": True, "RestartJob": False, "ElasticJobSet": False}


@dataclass(frozen=True)
class FeatureGates:
    """The JobSet manager's feature gates; the defaults unless overridden."""

    overrides: dict = field(default_factory=dict)

    def enabled(self, name: str) -> bool:
        return self.overrides.get(name, FEATURE_GATES[name])

    @classmethod
    def parse(cls, text: str | None) -> "FeatureGates":
        """`A=true,B=false`, as component-base's --feature-gates flag reads it."""
        out = {}
        for item in (text or "").split(","):
            item = item.strip()
            if not item:
                continue
            key, sep, value = item.partition("=")
            key = key.strip()
            if key not in FEATURE_GATES:
                raise ConfigError(f"--feature-gates {item!r}: unknown gate; JobSet v0.12 has "
                                  f"{', '.join(sorted(FEATURE_GATES))}")
            if not sep or value.strip().lower() not in ("true", "false"):
                raise ConfigError(f"--feature-gates {item!r}: write {key}=true or {key}=false")
            out[key] = value.strip().lower() == "true"
        return cls(out)


def _rule_regexp():
    import re

    # jobset_webhook.go ruleNameFmt.
    return re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")


def _int(value, default=None):
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value) -> list:
    return value if isinstance(value, list) else []


def jobset_name(meta: dict) -> str:
    """The name the webhook sees: metadata.name, or for generateName the name the API
    server generates (k8s.io/apiserver pkg/storage/names: prefix cut to 58, plus 5)."""
    name = meta.get("name")
    if isinstance(name, str) and name:
        return name
    prefix = meta.get("generateName")
    if isinstance(prefix, str) and prefix:
        return prefix[:contract.DNS_LABEL_MAX - GENERATED_SUFFIX] + "x" * GENERATED_SUFFIX
    return ""


def webhook_issues(doc: dict, gates: FeatureGates | None = None, path: str = "") -> list:
    """ValidateCreate on a defaulted JobSet document: every rule it breaks."""
    gates = gates or FeatureGates()
    out: list = []
    meta = _dict(doc.get("metadata"))
    spec = _dict(doc.get("spec"))
    name = jobset_name(meta)
    rjobs = [r if isinstance(r, dict) else {} for r in _list(spec.get("replicatedJobs"))]
    policy = spec.get("failurePolicy") if isinstance(spec.get("failurePolicy"), dict) else None
    strategy = (policy or {}).get("restartStrategy")
    p = f"{path}.spec"

    # "InPlaceRestart restart strategy cannot be set when InPlaceRestart feature gate is disabled"
    if not gates.enabled("InPlaceRestart") and strategy == "InPlaceRestart":
        out.append(Issue(f"{p}.failurePolicy.restartStrategy", "InPlaceRestart restart strategy cannot be set when "
                         "the InPlaceRestart feature gate is disabled (alpha, off by default)",
                         "use Recreate or BlockingRecreate, or --feature-gates InPlaceRestart=true "
                         "if the cluster's JobSet manager runs with it"))

    # "DependsOn can't be set for the first ReplicatedJob"
    if rjobs and rjobs[0].get("dependsOn") is not None:
        out.append(Issue(f"{p}.replicatedJobs[0].dependsOn", "DependsOn can't be set for the first ReplicatedJob",
                         "remove it, or move the replicatedJob after the one it depends on"))

    # Subdomain: IsDNS1123Subdomain, then IsDNS1035Label (it names the headless Service).
    sub = _dict(spec.get("network")).get("subdomain")
    if isinstance(sub, str) and sub:
        for problem in names.dns1123_subdomain(sub) + names.dns1035_label(sub):
            out.append(Issue(f"{p}.network.subdomain", f"Invalid value {sub!r}: {problem}",
                             "use a short DNS-1035 label (lower-case letters, digits, '-'; a letter first)"))

    # managedBy: IsDomainPrefixedPath and at most maxManagedByLength.
    managed_by = spec.get("managedBy")
    if isinstance(managed_by, str):
        for problem in names.domain_prefixed_path(managed_by):
            out.append(Issue(f"{p}.managedBy", f"Invalid value {managed_by!r}: {problem}",
                             "use a domain-prefixed path such as example.com/my-controller"))
        if len(managed_by) > MAX_MANAGED_BY:
            out.append(Issue(f"{p}.managedBy", f"Too long: may not be more than {MAX_MANAGED_BY} bytes",
                             "shorten it"))

    seen: list = []
    in_place = gates.enabled("InPlaceRestart") and strategy == "InPlaceRestart"
    for i, rjob in enumerate(rjobs):
        out += _rjob_issues(name, rjob, f"{p}.replicatedJobs[{i}]", seen, in_place)

    # "invalid replicatedJob name '%s' does not appear in .spec.ReplicatedJobs"
    for k, target in enumerate(_list(_dict(spec.get("successPolicy")).get("targetReplicatedJobs"))):
        if target not in seen:
            out.append(Issue(f"{p}.successPolicy.targetReplicatedJobs[{k}]",
                             f"invalid replicatedJob name {target!r} does not appear in .spec.replicatedJobs",
                             f"use one of {seen}"))

    if policy is not None:
        out += _failure_policy_issues(policy, rjobs, seen, gates, f"{p}.failurePolicy")
    if spec.get("coordinator") is not None:
        out += _coordinator_issues(doc, name, rjobs, f"{p}.coordinator")
    vcps = _list(spec.get("volumeClaimPolicies"))
    if vcps:
        out += _volume_claim_issues(name, vcps, rjobs, f"{p}")
    return out


def _rjob_issues(name: str, rjob: dict, path: str, seen: list, in_place: bool) -> list:
    out = []
    rname = rjob.get("name") if isinstance(rjob.get("name"), str) else ""
    seen.append(rname)
    replicas = _int(rjob.get("replicas"), 1)
    job = _dict(_dict(rjob.get("template")).get("spec"))
    parallelism = _int(job.get("parallelism"), 1)

    # "the product of replicas and parallelism must not exceed MaxInt32"
    if parallelism * replicas > INT32_MAX:
        out.append(Issue(f"{path}.replicas", f"the product of replicas and parallelism must not exceed {INT32_MAX} "
                         f"for replicatedJob {rname!r}", "use fewer Jobs or fewer pods per Job"))

    # groupName: IsDNS1035Label.
    group = rjob.get("groupName") if isinstance(rjob.get("groupName"), str) else ""
    for problem in names.dns1035_label(group):
        out.append(Issue(f"{path}.groupName", f"Invalid value {group!r}: {problem}",
                         "use a DNS-1035 label, or leave it out (default: default)"))

    # The longest child Job name, GenJobName(js, rjob, replicas-1): IsDNS1035Label.
    longest_job = js.job_name(name, rname, replicas - 1)
    for problem in names.dns1035_label(longest_job):
        out.append(Issue(f"{path}.name", f"Invalid value {longest_job!r} (the longest Job name): {problem}",
                         "shorten the JobSet or replicatedJob name; lower-case letters, digits and '-'"))

    # The longest pod name, GenPodName + "-abcde", for Indexed Jobs with completions set.
    completions = _int(job.get("completions"))
    if job.get("completionMode") == "Indexed" and job.get("completions") is not None and completions is not None:
        longest_pod = f"{js.pod_hostname(name, rname, replicas - 1, completions - 1)}{POD_NAME_SUFFIX}"
        for problem in names.dns1035_label(longest_pod):
            out.append(Issue(f"{path}.name", f"Invalid value {longest_pod!r} (the longest pod name, with its "
                             f"5-character suffix): {problem}",
                             f"shorten the JobSet or replicatedJob name so the hostname stays within "
                             f"{contract.HOSTNAME_MAX} characters"))

    # "replicatedJob: %s cannot depend on replicatedJob: %s": the names seen so far
    # (upstream inserts this replicatedJob's own name before the check).
    for k, dep in enumerate(_list(rjob.get("dependsOn"))):
        dep_name = _dict(dep).get("name")
        if dep_name not in seen:
            out.append(Issue(f"{path}.dependsOn[{k}].name", f"replicatedJob: {rname} cannot depend on "
                             f"replicatedJob: {dep_name}", f"depend on one listed before it: {seen[:-1]}"))

    # InPlaceRestart (gate on): backoffLimit MaxInt32, podReplacementPolicy Failed,
    # completions and parallelism set and equal.
    if in_place:
        if job.get("backoffLimit") != INT32_MAX:
            out.append(Issue(f"{path}.template.spec.backoffLimit", f"replicatedJob {rname}: must be set to "
                             f"{INT32_MAX} (MaxInt32) when in-place restart is enabled", f"set backoffLimit: {INT32_MAX}"))
        if job.get("podReplacementPolicy") != "Failed":
            out.append(Issue(f"{path}.template.spec.podReplacementPolicy", f"replicatedJob {rname}: must be set "
                             "to Failed when in-place restart is enabled", "set podReplacementPolicy: Failed"))
        if job.get("completions") is None or job.get("parallelism") is None or \
                job.get("completions") != job.get("parallelism"):
            out.append(Issue(f"{path}.template.spec.completions", f"replicatedJob {rname}: completions and "
                             "parallelism must be set and equal to each other when in-place restart is enabled",
                             "set both to the pods per Job"))
    return out


def _failure_policy_issues(policy: dict, rjobs: list, names_: list, gates: FeatureGates, path: str) -> list:
    out = []
    rules = [r if isinstance(r, dict) else {} for r in _list(policy.get("rules"))]
    restart_job = [i for i, r in enumerate(rules) if r.get("action") in RESTART_JOB_ACTIONS]
    if restart_job:
        i = restart_job[0]
        if not gates.enabled("RestartJob"):
            # Upstream returns at once: no other failure-policy rule is checked.
            return [Issue(f"{path}.rules[{i}].action", "RestartJob and RestartJobAndIgnoreMaxRestarts failure "
                          "policy actions are not allowed when the RestartJob feature gate is disabled "
                          "(alpha, off by default)", "use RestartJobSet, or --feature-gates RestartJob=true if "
                          "the cluster's JobSet manager runs with it")]
        for k, rjob in enumerate(rjobs):
            if _int(rjob.get("replicas"), 1) > MAX_REPLICAS_WITH_RESTART_JOB:
                out.append(Issue(f"{path.rsplit('.', 1)[0]}.replicatedJobs[{k}].replicas", "JobSet cannot have "
                                 "a failure policy rule with RestartJob or RestartJobAndIgnoreMaxRestarts action "
                                 f"and a replicated job with replicas > {MAX_REPLICAS_WITH_RESTART_JOB}",
                                 f"use at most {MAX_REPLICAS_WITH_RESTART_JOB} replicas, or RestartJobSet"))
                break
    by_name: dict = {}
    regexp = _rule_regexp()
    for i, rule in enumerate(rules):
        rpath = f"{path}.rules[{i}]"
        rname = rule.get("name") if isinstance(rule.get("name"), str) else ""
        if not RULE_NAME_MIN <= len(rname) <= RULE_NAME_MAX:
            out.append(Issue(f"{rpath}.name", f"invalid failure policy rule name of length {len(rname)}, the rule "
                             f"name must be at least {RULE_NAME_MIN} characters long and at most {RULE_NAME_MAX} "
                             "characters long", "shorten the name"))
        by_name.setdefault(rname, []).append(i)
        if not regexp.match(rname):
            out.append(Issue(f"{rpath}.name", f"invalid failure policy rule name {rname!r}: it must start with a "
                             "letter, optionally followed by letters, digits or '_,:', and end with a letter, "
                             "digit or '_'", "rename the rule, e.g. ConfigurationError"))
        for k, target in enumerate(_list(rule.get("targetReplicatedJobs"))):
            if target not in names_:
                out.append(Issue(f"{rpath}.targetReplicatedJobs[{k}]", f"invalid replicatedJob name {target!r} in "
                                 "failure policy does not appear in .spec.replicatedJobs", f"use one of {names_}"))
        for k, reason in enumerate(_list(rule.get("onJobFailureReasons"))):
            if reason not in JOB_FAILURE_REASONS:
                out.append(Issue(f"{rpath}.onJobFailureReasons[{k}]", f"invalid job failure reason {reason!r} in "
                                 "failure policy is not a recognized job failure reason",
                                 f"use one of {', '.join(JOB_FAILURE_REASONS)}"))
    for rname, indices in by_name.items():
        if len(indices) > 1:
            out.append(Issue(f"{path}.rules[{indices[-1]}].name", f"rule names are not unique, rules with indices "
                             f"{indices} all have the same name {rname!r}", "give each rule a unique name"))
    return out


def _coordinator_issues(doc: dict, name: str, rjobs: list, path: str) -> list:
    """validateCoordinator (the first failing check only), then validateCoordinatorLabelValue."""
    coord = _dict(doc["spec"]["coordinator"])
    out = []
    target = coord.get("replicatedJob")
    job_index, pod_index = _int(coord.get("jobIndex"), 0), _int(coord.get("podIndex"), 0)
    rjob = next((r for r in rjobs if r.get("name") == target), None)
    if rjob is None:
        out.append(Issue(f"{path}.replicatedJob", f"coordinator replicatedJob {target} does not exist",
                         "name one of spec.replicatedJobs"))
    else:
        replicas = _int(rjob.get("replicas"), 1)
        job = _dict(_dict(rjob.get("template")).get("spec"))
        completions = _int(job.get("completions"))
        if not 0 <= job_index < replicas:
            out.append(Issue(f"{path}.jobIndex", f"coordinator job index {job_index} is invalid for replicatedJob "
                             f"{target}", f"use 0..{replicas - 1}"))
        elif job.get("completionMode") != "Indexed" or completions is None:
            out.append(Issue(f"{path}.replicatedJob", "job for coordinator pod must be indexed completion mode, "
                             "and completions number must be set", "set completions (and completionMode Indexed)"))
        elif not 0 <= pod_index < completions:
            out.append(Issue(f"{path}.podIndex", f"coordinator pod index {pod_index} is invalid for replicatedJob "
                             f"{target} job index {job_index}", f"use 0..{completions - 1}"))
    # CoordinatorEndpoint: <js>-<rjob>-<jobIndex>-<podIndex>.<subdomain>, a label value (jobset#1056).
    sub = js.subdomain({"metadata": {"name": name}, "spec": doc["spec"]})
    endpoint = f"{name}-{target}-{job_index}-{pod_index}.{sub}"
    problems = names.label_value(endpoint)
    if problems:
        out.append(Issue(path, f"spec will lead to invalid label value {endpoint!r} for coordinator label "
                         f"{contract.COORDINATOR_KEY!r} (long JobSet / ReplicatedJob / SubDomain name?): "
                         f"{', '.join(problems)}", "shorten the JobSet, replicatedJob or subdomain name"))
    return out


def _volume_claim_issues(name: str, vcps: list, rjobs: list, path: str) -> list:
    out = []
    claims: set = set()
    for i, vcp in enumerate(vcps):
        ppath = f"{path}.volumeClaimPolicies[{i}]"
        for t, template in enumerate(_list(_dict(vcp).get("templates"))):
            tpath = f"{ppath}.templates[{t}]"
            tname = _dict(_dict(template).get("metadata")).get("name")
            tname = tname if isinstance(tname, str) else ""
            if tname in claims:
                out.append(Issue(f"{tpath}.metadata.name", f"Invalid value {tname!r}: names must be unique for "
                                 "VolumeClaimPolicies template", "rename one of them"))
            for problem in names.dns1123_subdomain(tname):
                out.append(Issue(f"{tpath}.metadata.name", f"Invalid value {tname!r}: {problem}", "rename it"))
            pvc = f"{tname}-{name}"  # controllers.GeneratePVCName
            if len(pvc) > MAX_VOLUME_CLAIM_NAME:
                out.append(Issue(f"{tpath}.metadata.name", f"Invalid value {tname!r}: VolumeClaimPolicies template "
                                 f"name is too long (the PVC {pvc!r} is {len(pvc)} characters, more than "
                                 f"{MAX_VOLUME_CLAIM_NAME})", "shorten the template or JobSet name"))
            out += _claim_mount_issues(tname, rjobs, path)
            claims.add(tname)
    return out


def _claim_mount_issues(claim: str, rjobs: list, path: str) -> list:
    """validateReplicatedJobsVolumeClaims: no pod volume of the claim's name, and a
    volumeMount of it in some container or init container."""
    out = []
    mounted = False
    for i, rjob in enumerate(rjobs):
        pod = _dict(_dict(_dict(_dict(rjob.get("template")).get("spec")).get("template")).get("spec"))
        for v, volume in enumerate(_list(pod.get("volumes"))):
            if _dict(volume).get("name") == claim:
                out.append(Issue(f"{path}.replicatedJobs[{i}].template.spec.template.spec.volumes[{v}].name",
                                 f"volume name conflicts with VolumeClaimPolicy template name: {claim}",
                                 "remove the volume: the JobSet controller adds it"))
        for c in _list(pod.get("initContainers")) + _list(pod.get("containers")):
            if any(_dict(m).get("name") == claim for m in _list(_dict(c).get("volumeMounts"))):
                mounted = True
    if not mounted:
        out.append(Issue(f"{path}.replicatedJobs", f"replicatedJob containers don't have a matching volumeMount: "
                         f"{claim} from VolumeClaimPolicies", f"mount {claim!r} in a container"))
    return out
