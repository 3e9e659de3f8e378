"""Expand each generated pod as JobSet + the Job controller would, then run the
runtime's identity code on it: ranks 0..N-1 without gaps, and the coordinator and
hostnames the manifest implies."""

import pytest
import yaml

import manifest_cases as mc
from jobset_runtime import contract
from jobset_runtime import exports
from jobset_runtime import jobset as js
from jobset_runtime.local import kubelet
from jobset_runtime import manifests
from jobset_runtime.identity import PodMetadata, derive
from jobset_runtime.podinfo import read_pod_metadata

KINDS = sorted(mc.EXAMPLES_ARGV)
IDS = [f"kind={k}" for k in KINDS]  # a bare "mpi" id would be taken for pytest-mpi's marker


def the_jobset(docs):
    (doc,) = [d for d in docs if d["kind"] == contract.JOBSET_KIND]
    return doc


def pod_template(doc, rjob_name):
    return js.rjob_by_name(doc, rjob_name)["template"]["spec"]["template"]["spec"]


def expand(doc, ref, tmp_path, restart_attempt=0):
    """Write the pod's downward-API volume and /etc/hosts as the kubelet would, build its
    env from the container spec, and read it all back through the runtime's reader."""
    labels, annotations = js.child_pod_metadata(doc, ref.replicated_job, ref.job_index, ref.pod_index,
                                                restart_attempt=restart_attempt, uid="0f4c-uid")
    host = js.pod_hostname(js.name(doc), ref.replicated_job, ref.job_index, ref.pod_index)
    facts = kubelet.PodFacts(name=js.pod_name(doc, ref.replicated_job, ref.job_index, ref.pod_index),
                             namespace=js.namespace(doc), uid="pod-uid", labels=labels, annotations=annotations,
                             hostname=host, subdomain=js.subdomain(doc), pod_ip="10.0.0.7", host_ip="10.0.0.1",
                             node_name="node-1")
    spec = pod_template(doc, ref.replicated_job)
    (container,) = spec["containers"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == contract.PODINFO_VOLUME)
    volume = next(v for v in spec["volumes"] if v["name"] == contract.PODINFO_VOLUME)
    podinfo = tmp_path / host / mount["mountPath"].lstrip("/")
    podinfo.mkdir(parents=True)
    for rel, text in kubelet.volume_files(facts, volume, container).items():
        (podinfo / rel).write_text(text)
    hosts = tmp_path / host / "hosts"
    hosts.write_text(kubelet.hosts_file(facts))
    env = kubelet.container_env(facts, container, extra={contract.HOSTNAME_ENV: host,
                                                        contract.JOB_COMPLETION_INDEX_ENV: str(ref.pod_index)})
    env[contract.PODINFO_ENV] = str(podinfo)  # the mount path, inside this test's directory
    return derive(read_pod_metadata(env, str(hosts))), host


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_every_pod_gets_a_distinct_rank_and_agrees_with_the_manifest(kind, tmp_path):
    code, out, err = mc.run_cli(mc.EXAMPLES_ARGV[kind], env={contract.JOBSET_CRD_ENV: ""})
    assert code == 0, err
    doc = the_jobset(list(yaml.safe_load_all(out)))
    refs = list(js.all_pods(doc))
    coord = doc["spec"]["coordinator"]
    coord_host = js.pod_hostname(js.name(doc), coord["replicatedJob"], coord["jobIndex"], coord["podIndex"])
    ranks = []
    for ref in refs:
        ident, host = expand(doc, ref, tmp_path)
        ranks.append(ident.rank)
        assert ident.world_size == len(refs)
        assert ident.hostname == host
        assert ident.coordinator == coord_host
        assert ident.subdomain == js.subdomain(doc)
        assert ident.fqdn() == f"{host}.{js.subdomain(doc)}.{js.namespace(doc)}.svc.cluster.local"
        assert ident.namespace == js.namespace(doc) and ident.jobset_uid == "0f4c-uid"
        assert ident.pod_name.startswith(host + "-")
        assert ident.all_hosts()[ident.rank] == host
    assert ranks == list(range(len(refs)))


# One multi-host type per generation (tpu_shapes.GENERATIONS): hosts per slice as the docs give them.
TPU_TYPES = [("v4-16", 2), ("v5litepod-16", 4), ("v5p-64", 8), ("v6e-32", 8), ("tpu7x-32", 4)]


@pytest.mark.parametrize("tpu_type, hosts", TPU_TYPES)
def test_tpu_exports_match_the_slices(tpu_type, hosts, tmp_path):
    *_, doc = manifests.tpu_multislice(name="ms", image="i", command=["t"], slices=3, tpu_type=tpu_type)
    refs = list(js.all_pods(doc))
    assert len(refs) == 3 * hosts
    for ref in refs:
        ident, host = expand(doc, ref, tmp_path)
        env = exports.tpu_env(ident)
        assert env[contract.MEGASCALE_NUM_SLICES] == "3"
        assert env[contract.MEGASCALE_SLICE_ID] == str(ref.job_index)
        assert env[contract.TPU_WORKER_ID] == str(ref.pod_index)
        assert env[contract.MEGASCALE_COORDINATOR_ADDRESS].startswith("ms-slice-0-0.ms.default.svc.")
        workers = env[contract.TPU_WORKER_HOSTNAMES].split(",")
        assert len(workers) == hosts
        assert workers[ref.pod_index].startswith(host + ".")
        assert all(w.startswith(f"ms-slice-{ref.job_index}-") for w in workers)


def test_torch_exports_point_at_the_coordinator(tmp_path):
    *_, doc = manifests.torch(name="tr", image="i", command=["torchrun", "t.py"], nodes=3, subdomain="net")
    for ref in js.all_pods(doc):
        ident, _ = expand(doc, ref, tmp_path)
        env = exports.torch_env(ident)
        assert env[contract.TORCH_MASTER_ADDR] == "tr-node-0-0.net.default.svc.cluster.local"
        assert (env[contract.TORCHRUN_NNODES], env[contract.TORCHRUN_NODE_RANK]) == ("3", str(ref.pod_index))


def test_restart_attempt_reaches_the_identity(tmp_path):
    *_, doc = manifests.jax(name="jx", image="i", command=["x"], hosts=1)
    ident, _ = expand(doc, next(js.all_pods(doc)), tmp_path, restart_attempt=4)
    assert ident.restart_attempt == 4


def test_the_largest_multislice_numbers_every_host_once():
    """199 slices x 64 hosts, straight from the pure functions (no files)."""
    *_, doc = manifests.tpu_multislice(name="big", image="i", command=["t"], slices=199, hosts_per_slice=64,
                                      accelerator="tpu-v5p-slice", topology="4x8x8")
    (container,) = pod_template(doc, "slice")["containers"]
    topology = {e["name"]: e.get("value") for e in container["env"]}[contract.TOPOLOGY_ENV]
    seen = set()
    for ref in js.all_pods(doc):
        labels, annotations = js.child_pod_metadata(doc, ref.replicated_job, ref.job_index, ref.pod_index)
        ident = derive(PodMetadata(labels=labels, annotations=annotations,
                                   env={contract.TOPOLOGY_ENV: topology}, namespace="default"))
        seen.add(ident.rank)
        assert (ident.slice_id, ident.worker_id) == (ref.job_index, ref.pod_index)
    assert seen == set(range(199 * 64))
