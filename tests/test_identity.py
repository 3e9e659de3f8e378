import pytest
from hypothesis import given, strategies as st

from jobset_runtime import contract
from jobset_runtime.errors import ConfigError
from jobset_runtime.identity import PodMetadata, Topology, derive, fqdn_from_hosts, hostname_of
from jobset_runtime.podinfo import current_identity


def meta(topology=None, **labels):
    base = {
        contract.JOBSET_NAME_KEY: "js",
        contract.REPLICATED_JOB_NAME_KEY: "worker",
        contract.REPLICATED_JOB_REPLICAS_KEY: "2",
        contract.JOB_INDEX_KEY: "1",
        contract.JOB_GLOBAL_INDEX_KEY: "2",
        contract.GLOBAL_REPLICAS_KEY: "3",
        contract.JOB_COMPLETION_INDEX_KEY: "3",
    }
    base.update(labels)
    base = {k: v for k, v in base.items() if v is not None}
    env = {contract.TOPOLOGY_ENV: topology} if topology else {}
    return PodMetadata(labels=base, annotations=dict(base), env=env, namespace="ns")


def test_recorded_multislice_pod(podinfo):
    env, hosts = podinfo("multislice-1-3", JOBSET_RUNTIME_TOPOLOGY="slice:2x4")
    ident = current_identity(env, hosts)
    d = ident.to_dict()
    assert {k: d[k] for k in ("rank", "world_size", "jobset_name", "namespace", "replicated_job", "job_index",
                              "pod_index", "slice_id", "num_slices", "hosts_per_slice", "worker_id", "hostname",
                              "subdomain", "coordinator", "restart_attempt")} == {
        "rank": 7, "world_size": 8, "jobset_name": "train", "namespace": "ml-team", "replicated_job": "slice",
        "job_index": 1, "pod_index": 3, "slice_id": 1, "num_slices": 2, "hosts_per_slice": 4, "worker_id": 3,
        "hostname": "train-slice-1-3", "subdomain": "train", "coordinator": "train-slice-0-0", "restart_attempt": 0,
    }
    assert d["pod_name"] == "train-slice-1-3-x7k2p"
    assert d["jobset_uid"] == "0d4f5e6a-7b8c-4d9e-a0f1-b2c3d4e5f607"
    assert ident.fqdn() == "train-slice-1-3.train.ml-team.svc.cluster.local"
    assert ident.slice_hosts() == [f"train-slice-1-{p}" for p in range(4)]


def test_recorded_pod_without_coordinator_uses_hosts_file(podinfo):
    env, hosts = podinfo("mpi-worker-0-1", JOBSET_RUNTIME_TOPOLOGY="launcher:1x1,worker:1x4")
    ident = current_identity(env, hosts)
    assert ident.rank == 2
    assert ident.world_size == 5
    assert ident.restart_attempt == 2
    # subdomain and cluster domain come from the kubelet's /etc/hosts line
    assert ident.fqdn() == "pi-worker-0-1.mpi-net.hpc.svc.corp.example"
    # no spec.coordinator: pod 0 of job 0 of the first replicated job
    assert ident.coordinator == "pi-launcher-0-0"
    assert ident.scope_hosts("all")[0] == "pi-launcher-0-0"


def test_without_topology_known_values_and_actionable_error():
    ident = derive(meta())
    assert ident.slice_id == 1 and ident.worker_id == 3 and ident.num_slices == 2
    assert ident.to_dict()["rank"] is None
    with pytest.raises(ConfigError, match=contract.TOPOLOGY_ENV):
        ident.rank
    # not the first replicated job and no spec.coordinator: coordinator unknown, error says what to add
    with pytest.raises(ConfigError, match="spec.coordinator"):
        ident.coordinator


def test_first_replicated_job_is_its_own_coordinator_without_topology():
    ident = derive(meta(**{contract.JOB_GLOBAL_INDEX_KEY: "1"}))
    assert ident.coordinator == "js-worker-0-0"


@pytest.mark.parametrize("topology,match", [
    ("worker:3x4,launcher:1x1", "replicas"),       # replicas disagree with the label
    ("launcher:1x1,worker:2x2", "pod index 3"),     # completion index outside the pods per job
    ("worker:2x4,launcher:1x1", "sum to 3|global index"),  # order: worker first puts it at global index 1
    ("other:1x1", "no replicated job 'worker'"),
])
def test_topology_that_disagrees_with_labels(topology, match):
    with pytest.raises(ConfigError, match=match):
        derive(meta(topology))


@pytest.mark.parametrize("text", ["worker", "worker:2", "Worker:1x1", "a:1x1,a:1x2", "a:1x0", "a:1x1,,b:1x1", "a:-1x2"])
def test_malformed_topology(text):
    with pytest.raises(ConfigError, match=contract.TOPOLOGY_ENV):
        Topology.parse(text)


def test_bad_numbers_and_ranges():
    with pytest.raises(ConfigError, match="job-index.*not a non-negative integer"):
        derive(meta(**{contract.JOB_INDEX_KEY: "one"}))
    with pytest.raises(ConfigError, match="out of range"):
        derive(meta(**{contract.JOB_INDEX_KEY: "2"}))
    with pytest.raises(ConfigError, match="no jobset name"):
        derive(meta(**{contract.JOBSET_NAME_KEY: None}))
    with pytest.raises(ConfigError, match="JOB_COMPLETION_INDEX"):
        derive(meta(**{contract.JOB_COMPLETION_INDEX_KEY: None}))


def test_hostname_over_63_characters():
    with pytest.raises(ConfigError, match="over the DNS label limit"):
        derive(meta(**{contract.JOBSET_NAME_KEY: "j" * 60}))


def test_label_and_annotation_must_agree():
    m = meta()
    ann = dict(m.annotations)
    ann[contract.JOB_INDEX_KEY] = "0"
    with pytest.raises(ConfigError, match="disagree"):
        derive(PodMetadata(labels=m.labels, annotations=ann, env=m.env))


def test_env_route_and_hostname_fallback():
    env = {
        "JOBSET_RUNTIME_JOBSET_NAME": "js", "JOBSET_RUNTIME_REPLICATED_JOB": "rj-a",
        "HOSTNAME": "js-rj-a-2-5", "JOBSET_RUNTIME_NAMESPACE": "ns",
        contract.TOPOLOGY_ENV: "rj-a:3x6",
    }
    ident = derive(PodMetadata(env=env))
    assert (ident.job_index, ident.pod_index, ident.rank) == (2, 5, 17)
    assert ident.num_slices == 3


def test_coordinator_annotation_is_checked():
    bad = meta(**{contract.COORDINATOR_KEY: "someone-else-0-0.js"})
    with pytest.raises(ConfigError, match="coordinator"):
        derive(bad)
    outside = meta("worker:2x4,launcher:1x1", **{contract.JOB_GLOBAL_INDEX_KEY: "1"})
    ann = dict(outside.annotations, **{contract.COORDINATOR_KEY: "js-worker-5-0.js"})
    with pytest.raises(ConfigError, match="outside"):
        derive(PodMetadata(labels=outside.labels, annotations=ann, env=outside.env))


def test_fqdn_from_hosts_ignores_other_lines():
    hosts = "10.0.0.1 js-a-0-10.sub.ns.svc.cluster.local js-a-0-10\n10.0.0.2 js-a-0-1.other\n"
    assert fqdn_from_hosts(hosts, "js-a-0-1") is None
    assert fqdn_from_hosts(hosts, "js-a-0-10") == ("sub", "ns", "cluster.local")


def test_scopes_stay_linear():
    ident = derive(meta("launcher:1x1,worker:2x4", **{contract.JOB_INDEX_KEY: "1"}))
    assert ident.scope_hosts("coordinator") == ["js-launcher-0-0"]
    assert ident.scope_hosts("slice") == ["js-launcher-0-0"] + [f"js-worker-1-{p}" for p in range(4)]
    assert len(ident.scope_hosts("all")) == 9
    with pytest.raises(ConfigError, match="unknown scope"):
        ident.scope_hosts("everyone")


shapes = st.lists(
    st.tuples(st.integers(0, 6), st.integers(1, 6)), min_size=1, max_size=5
).map(lambda xs: Topology.parse(",".join(f"r{i}:{r}x{p}" for i, (r, p) in enumerate(xs))))


@given(shapes)
def test_ranks_are_a_bijection(topology):
    ranks = [topology.rank(j.name, ji, pi) for j in topology.jobs for ji in range(j.replicas) for pi in range(j.pods)]
    assert sorted(ranks) == list(range(topology.world_size))
    for r in range(topology.world_size):
        assert topology.rank(*topology.locate(r)) == r
    assert len(set(topology.hostnames("js"))) == topology.world_size
    assert Topology.parse(str(topology)) == topology


@given(shapes, st.data())
def test_derived_rank_matches_topology(topology, data):
    candidates = [j for j in topology.jobs if j.replicas]
    if not candidates:
        return
    job = data.draw(st.sampled_from(candidates))
    ji, pi = data.draw(st.integers(0, job.replicas - 1)), data.draw(st.integers(0, job.pods - 1))
    labels = {
        contract.JOBSET_NAME_KEY: "js", contract.REPLICATED_JOB_NAME_KEY: job.name,
        contract.REPLICATED_JOB_REPLICAS_KEY: str(job.replicas), contract.JOB_INDEX_KEY: str(ji),
        contract.JOB_GLOBAL_INDEX_KEY: str(topology.job_global_index(job.name, ji)),
        contract.GLOBAL_REPLICAS_KEY: str(topology.global_replicas), contract.JOB_COMPLETION_INDEX_KEY: str(pi),
    }
    ident = derive(PodMetadata(labels=labels, env={contract.TOPOLOGY_ENV: str(topology)}))
    assert ident.rank == topology.rank(job.name, ji, pi)
    assert ident.hostname == hostname_of("js", job.name, ji, pi) == topology.hostnames("js")[ident.rank]


def test_non_ascii_digits_are_a_configuration_error():
    with pytest.raises(ConfigError, match="not a non-negative integer"):
        derive(meta(**{contract.JOB_INDEX_KEY: "²"}))


def test_default_coordinator_skips_replicated_jobs_without_pods():
    ident = derive(meta("empty:0x1,worker:2x4", **{contract.JOB_GLOBAL_INDEX_KEY: "1", contract.GLOBAL_REPLICAS_KEY: "2"}))
    assert ident.coordinator == "js-worker-0-0" == ident.all_hosts()[0]


# --- the pod's namespace: every place a pod has it, in order ------------------------------

KUBELET_RESOLV_CONF = "search team-b.svc.corp.example svc.corp.example corp.example\nnameserver 10.96.0.10\noptions ndots:5\n"
KUBELET_HOSTS = "10.1.2.3\tjs-worker-1-3.js.team-c.svc.cluster.local\tjs-worker-1-3\n"


@pytest.mark.parametrize("sources,expected", [
    ({"namespace": "a", "env": {"JOBSET_RUNTIME_NAMESPACE": "b", "POD_NAMESPACE": "c"}}, ("a", "downward-API file namespace")),
    ({"env": {"JOBSET_RUNTIME_NAMESPACE": "b", "POD_NAMESPACE": "c"}, "service_account_namespace": "d"},
     ("b", "env JOBSET_RUNTIME_NAMESPACE")),
    ({"env": {"POD_NAMESPACE": "c"}, "service_account_namespace": "d"}, ("c", "env POD_NAMESPACE")),
    ({"service_account_namespace": "d", "hosts": KUBELET_HOSTS, "resolv_conf": KUBELET_RESOLV_CONF},
     ("d", contract.SERVICE_ACCOUNT_NAMESPACE_FILE)),
    ({"hosts": KUBELET_HOSTS, "resolv_conf": KUBELET_RESOLV_CONF}, ("team-c", contract.HOSTS_FILE)),
    ({"resolv_conf": KUBELET_RESOLV_CONF}, ("team-b", "/etc/resolv.conf search list")),
])
def test_namespace_sources_in_order(sources, expected):
    base = meta()
    ident = derive(PodMetadata(labels=base.labels, annotations=base.annotations,
                               **{"env": {}, **sources}))
    assert (ident.namespace, ident.namespace_source) == expected
    assert ident.to_dict()["namespace_source"] == expected[1]


def test_search_list_gives_the_cluster_domain_too():
    base = meta()
    ident = derive(PodMetadata(labels=base.labels, annotations=base.annotations, resolv_conf=KUBELET_RESOLV_CONF))
    assert ident.fqdn() == "js-worker-1-3.js.team-b.svc.corp.example"


@pytest.mark.parametrize("resolv_conf", ["", "nameserver 1.1.1.1\n", "search example.com svc.cluster.local\n",
                                         "search a.b.svc.cluster.local\n"])
def test_no_namespace_anywhere_names_every_source(resolv_conf):
    base = meta()
    ident = derive(PodMetadata(labels=base.labels, annotations=base.annotations, resolv_conf=resolv_conf))
    assert ident.namespace is None and ident.namespace_source is None
    with pytest.raises(ConfigError) as info:
        ident.fqdn()
    for source in ("JOBSET_RUNTIME_NAMESPACE", "POD_NAMESPACE", contract.SERVICE_ACCOUNT_NAMESPACE_FILE, "resolv.conf"):
        assert source in str(info.value)
