from jobset_runtime import contract
from jobset_runtime.exports import merge, runtime_env, torch_env, tpu_env
from jobset_runtime.identity import PodMetadata, derive


def ident(topology="slice:199x64", job_index=198, pod_index=63):
    labels = {
        contract.JOBSET_NAME_KEY: "ms", contract.REPLICATED_JOB_NAME_KEY: "slice",
        contract.REPLICATED_JOB_REPLICAS_KEY: "199", contract.JOB_INDEX_KEY: str(job_index),
        contract.JOB_GLOBAL_INDEX_KEY: str(job_index), contract.GLOBAL_REPLICAS_KEY: "199",
        contract.JOB_COMPLETION_INDEX_KEY: str(pod_index), contract.COORDINATOR_KEY: "ms-slice-0-0.ms",
    }
    env = {contract.TOPOLOGY_ENV: topology} if topology else {}
    return derive(PodMetadata(labels=labels, env=env, namespace="tpu"))


def test_tpu_env_for_the_record_multislice():
    env = tpu_env(ident())
    assert env[contract.TPU_WORKER_ID] == "63"
    hosts = env[contract.TPU_WORKER_HOSTNAMES].split(",")
    assert len(hosts) == 64 and hosts[0] == "ms-slice-198-0.ms.tpu.svc.cluster.local"
    assert env[contract.MEGASCALE_COORDINATOR_ADDRESS] == "ms-slice-0-0.ms.tpu.svc.cluster.local"
    assert env[contract.MEGASCALE_NUM_SLICES] == "199"
    assert env[contract.MEGASCALE_SLICE_ID] == "198"


def test_torch_and_runtime_env():
    i = ident()
    t = torch_env(i, 1234)
    assert t["WORLD_SIZE"] == "12736" and t["RANK"] == "12735" and t["NODE_RANK"] == "12735"
    assert t["MASTER_ADDR"] == "ms-slice-0-0.ms.tpu.svc.cluster.local" and t["MASTER_PORT"] == "1234"
    assert t["PET_NNODES"] == "12736"
    r = runtime_env(i)
    assert r[contract.RANK_ENV] == "12735" and r[contract.HOSTS_PER_SLICE_ENV] == "64"
    assert r[contract.TOPOLOGY_ENV] == "slice:199x64"
    # What the runtime exports, it reads back identically (nested jobset-run); only where the
    # namespace came from differs (the env var this time).
    again = derive(PodMetadata(env=r))
    assert {**again.to_dict(), "namespace_source": None} == {**i.to_dict(), "namespace_source": None}
    assert again.namespace_source == f"env {contract.IDENTITY_ENV['namespace']}"


def test_without_topology_unknowns_are_left_out():
    r = runtime_env(ident(topology=None))
    assert contract.RANK_ENV not in r and contract.WORLD_SIZE_ENV not in r
    assert r[contract.SLICE_ID_ENV] == "198"
    assert torch_env(ident(topology=None)).keys() == {"MASTER_ADDR", "MASTER_PORT", "PET_MASTER_ADDR", "PET_MASTER_PORT"}


def test_merge_never_overrides_and_warns_on_disagreement():
    pre = {
        contract.TPU_WORKER_ID: "5",  # GKE says 5, JobSet says 63
        contract.TPU_WORKER_HOSTNAMES: ",".join(f"ms-slice-198-{p}.ms" for p in range(64)),  # same hosts, short form
        "MASTER_PORT": "9999",
    }
    env, warnings = merge(pre, {**tpu_env(ident()), **torch_env(ident())})
    assert env[contract.TPU_WORKER_ID] == "5" and env["MASTER_PORT"] == "9999"
    assert env[contract.MEGASCALE_SLICE_ID] == "198"
    assert len(warnings) == 2
    assert any("TPU_WORKER_ID='5'" in w and "'63'" in w for w in warnings)
    assert any("MASTER_PORT" in w for w in warnings)


def test_tpu_coordinator_is_a_slice_host_even_behind_a_driver():
    labels = {
        contract.JOBSET_NAME_KEY: "ms", contract.REPLICATED_JOB_NAME_KEY: "slice",
        contract.REPLICATED_JOB_REPLICAS_KEY: "2", contract.JOB_INDEX_KEY: "1",
        contract.JOB_GLOBAL_INDEX_KEY: "2", contract.GLOBAL_REPLICAS_KEY: "3",
        contract.JOB_COMPLETION_INDEX_KEY: "0",
    }
    ident = derive(PodMetadata(labels=labels, env={contract.TOPOLOGY_ENV: "driver:1x1,slice:2x2"}, namespace="t"))
    assert ident.coordinator == "ms-driver-0-0"  # the job's coordinator (torch, the group channel)
    assert tpu_env(ident)[contract.MEGASCALE_COORDINATOR_ADDRESS] == "ms-slice-0-0.ms.t.svc.cluster.local"
