"""Arguments, env and config computed for jax.distributed: TPU multislice, GPU, CPU (pure)."""

import inspect
import logging
import os
import subprocess
import sys

import pytest

from jobset_runtime import contract
from jobset_runtime import jax as jrjax
from jobset_runtime.errors import ConfigError
from jobset_runtime.identity import PodMetadata, derive


def ident(rjob="slice", job=0, pod=0, topology="slice:2x2", jobset="ms", namespace="tpu", replicas=None,
          coordinator=None):
    env = {
        contract.IDENTITY_ENV["jobset_name"]: jobset,
        contract.IDENTITY_ENV["replicated_job"]: rjob,
        contract.IDENTITY_ENV["job_index"]: str(job),
        contract.IDENTITY_ENV["pod_index"]: str(pod),
        contract.IDENTITY_ENV["namespace"]: namespace,
    }
    if topology:
        env[contract.TOPOLOGY_ENV] = topology
    if replicas is not None:
        env[contract.IDENTITY_ENV["replicated_job_replicas"]] = str(replicas)
    if coordinator:
        env[contract.IDENTITY_ENV["coordinator"]] = coordinator
    return derive(PodMetadata(env=env))


# --- TPU multislice ------------------------------------------------------------------

def test_tpu_199_slices_of_64_last_host():
    me = ident(job=198, pod=63, topology="slice:199x64")
    args = jrjax.distributed_args(me, "tpu")
    assert args.process_id == 198 * 64 + 63 == 12735
    assert args.num_processes == 199 * 64 == 12736
    assert args.coordinator_address == "ms-slice-0-0.ms.tpu.svc.cluster.local:8476"
    assert args.local_device_ids is None
    assert args.cluster_detection_method == "deactivate"
    kw = args.kwargs()
    assert set(kw) >= {"coordinator_address", "num_processes", "process_id", "local_device_ids",
                       "initialization_timeout", "heartbeat_timeout_seconds", "shutdown_timeout_seconds",
                       "cluster_detection_method"}
    assert None not in [v for k, v in kw.items() if k != "local_device_ids"]


def test_tpu_199_slices_of_64_env_and_watch_list():
    me = ident(job=198, pod=63, topology="slice:199x64")
    p = jrjax.plan(me, "tpu", environ={})
    env = p.env
    assert env[contract.TPU_WORKER_ID] == "63"
    hosts = env[contract.TPU_WORKER_HOSTNAMES].split(",")
    assert hosts == [f"ms-slice-198-{i}.ms.tpu.svc.cluster.local" for i in range(64)]  # slice-local
    assert env[contract.MEGASCALE_COORDINATOR_ADDRESS] == "ms-slice-0-0.ms.tpu.svc.cluster.local"
    assert env[contract.MEGASCALE_NUM_SLICES] == "199"
    assert env[contract.MEGASCALE_SLICE_ID] == "198"
    assert env[contract.MEGASCALE_PORT] == str(contract.MEGASCALE_DEFAULT_PORT)
    assert p.config == {}
    assert not p.is_coordinator
    # A worker looks at its own slice and the coordinator at the deadline: 65 names, not 12,736.
    assert p.watch_hosts[0] == "ms-slice-0-0.ms.tpu.svc.cluster.local"
    assert list(p.watch_hosts[1:]) == hosts


def test_tpu_coordinator_watches_every_host():
    p = jrjax.plan(ident(topology="slice:199x64"), "tpu", environ={})
    assert p.is_coordinator and p.args.process_id == 0
    assert len(p.watch_hosts) == 199 * 64
    assert p.watch_hosts[-1] == "ms-slice-198-63.ms.tpu.svc.cluster.local"


def test_multislice_numbering_is_the_global_rank_for_one_replicated_job():
    seen = []
    for j in range(3):
        for w in range(4):
            me = ident(job=j, pod=w, topology="slice:3x4")
            pid, n = jrjax.process_numbering(me, "tpu")
            assert pid == me.rank == j * 4 + w
            assert (pid, n) == jrjax.process_numbering(me, "cpu")
            assert n == me.world_size == 12
            seen.append(pid)
    assert sorted(seen) == list(range(12))


def test_multislice_numbering_ignores_other_replicated_jobs():
    # A driver before the slices: JAX's world is the TPU workers, numbered within their job.
    me = ident(job=1, pod=1, topology="driver:1x1,slice:2x2")
    assert me.rank == 4
    assert jrjax.process_numbering(me, "tpu") == (3, 4)
    assert jrjax.coordinator_host(me, "tpu") == "ms-slice-0-0"
    # On CPU/GPU every pod is a JAX process and rank 0 (the driver) hosts the service.
    assert jrjax.process_numbering(me, "cpu") == (4, 5)
    assert jrjax.coordinator_host(me, "cpu") == "ms-driver-0-0"


def test_tpu_without_topology_says_what_to_set():
    me = ident(topology=None, replicas=2)
    with pytest.raises(ConfigError, match=contract.TOPOLOGY_ENV):
        jrjax.distributed_args(me, "tpu")


def test_tpu_takes_one_process_per_host():
    with pytest.raises(ConfigError, match="one JAX process"):
        jrjax.process_numbering(ident(), "tpu", processes_per_host=4)


# --- GPU ---------------------------------------------------------------------------------

def test_gpu_several_processes_per_host():
    me = ident(rjob="trainer", job=1, pod=0, topology="trainer:2x2", jobset="gpu", namespace="ml")
    assert me.rank == 2
    args = jrjax.distributed_args(me, "gpu", processes_per_host=8, local_process=3)
    assert (args.process_id, args.num_processes) == (2 * 8 + 3, 4 * 8)
    assert args.local_device_ids == (3,)
    assert args.kwargs()["local_device_ids"] == [3]
    assert args.coordinator_address == "gpu-trainer-0-0.gpu.ml.svc.cluster.local:8476"
    two = jrjax.distributed_args(me, "gpu", processes_per_host=4, local_process=3, devices_per_process=2)
    assert two.local_device_ids == (6, 7)
    assert two.process_id == 2 * 4 + 3


def test_gpu_process_ids_cover_every_gpu_once():
    ids = set()
    for rank in range(4):
        me = ident(rjob="t", job=rank // 2, pod=rank % 2, topology="t:2x2")
        for local in range(8):
            ids.add(jrjax.distributed_args(me, "gpu", processes_per_host=8, local_process=local).process_id)
    assert ids == set(range(32))


def test_gpu_one_process_per_host_sees_all_its_devices():
    assert jrjax.distributed_args(ident(), "gpu").local_device_ids is None
    assert jrjax.distributed_args(ident(), "gpu", local_device_ids=[1, 0]).local_device_ids == (1, 0)


def test_local_process_out_of_range():
    with pytest.raises(ConfigError, match="local_process=8"):
        jrjax.process_numbering(ident(), "gpu", processes_per_host=8, local_process=8)


# --- CPU -----------------------------------------------------------------------------------

def test_cpu_config_and_plan():
    p = jrjax.plan(ident(job=1, pod=1), "cpu", environ={}, num_cpu_devices=4, port=9000)
    assert p.config == {"jax_cpu_collectives_implementation": "gloo", "jax_num_cpu_devices": 4}
    assert p.env == {}
    assert p.args.coordinator_address == "ms-slice-0-0.ms.tpu.svc.cluster.local:9000"
    assert (p.args.process_id, p.args.num_processes) == (3, 4)
    assert jrjax.cpu_config() == {"jax_cpu_collectives_implementation": "gloo"}
    with pytest.raises(ConfigError):
        jrjax.cpu_config(0)


# --- timeouts -----------------------------------------------------------------------------

def test_default_timeouts_are_jax_defaults_and_our_deadline_comes_first():
    p = jrjax.plan(ident(), "cpu", environ={})
    assert (p.args.initialization_timeout, p.args.heartbeat_timeout_seconds, p.args.shutdown_timeout_seconds) == (300, 100, 300)
    assert p.timeout == 270.0 < p.args.initialization_timeout
    jax = pytest.importorskip("jax", reason="jax is a test dependency of this area")
    params = inspect.signature(jax.distributed.initialize).parameters
    for name in ("initialization_timeout", "heartbeat_timeout_seconds", "shutdown_timeout_seconds"):
        assert params[name].default == getattr(p.args, name), name


def test_our_deadline_must_be_shorter_than_jax_initialization_timeout():
    with pytest.raises(ConfigError, match="shorter than initialization_timeout=60s"):
        jrjax.plan(ident(), "cpu", environ={}, initialization_timeout=60, timeout=60)
    assert jrjax.plan(ident(), "cpu", environ={}, initialization_timeout=60, timeout=59).timeout == 59


@pytest.mark.parametrize("name", ["initialization_timeout", "heartbeat_timeout_seconds", "shutdown_timeout_seconds"])
def test_timeouts_must_be_whole_positive_seconds(name):
    with pytest.raises(ConfigError, match=name):
        jrjax.distributed_args(ident(), "cpu", **{name: 0})
    with pytest.raises(ConfigError, match=name):
        jrjax.distributed_args(ident(), "cpu", **{name: 1.5})


# --- platform, wrapper env, JAX versions --------------------------------------------------

@pytest.mark.parametrize("environ,files,want", [
    ({"JAX_PLATFORMS": "cuda"}, (), "gpu"),
    ({"JAX_PLATFORMS": "cpu"}, ("/dev/accel0",), "cpu"),
    ({"JAX_PLATFORMS": "tpu,cpu"}, (), "tpu"),
    ({"TPU_WORKER_HOSTNAMES": "a,b"}, (), "tpu"),
    ({}, ("/dev/accel0",), "tpu"),
    ({}, ("/dev/nvidiactl",), "gpu"),
    ({}, (), "cpu"),
    ({"TPU_SKIP_MDS_QUERY": "1"}, (), "cpu"),  # what `import jax` sets where there is no TPU chip
])
def test_detect_platform(environ, files, want):
    assert jrjax.detect_platform(environ, exists=lambda p: p in files) == want


def test_unknown_platform():
    with pytest.raises(ConfigError, match="'metal'"):
        jrjax.distributed_args(ident(), "metal")


def test_wrapper_env():
    cpu = jrjax.wrapper_env(ident(job=1, pod=0), "cpu")
    assert cpu == {"JAX_COORDINATOR_ADDRESS": "ms-slice-0-0.ms.tpu.svc.cluster.local:8476",
                   "JAX_COORDINATOR_PORT": "8476"}
    tpu = jrjax.wrapper_env(ident(job=1, pod=0), "tpu", port=8482)
    assert tpu["JAX_COORDINATOR_ADDRESS"].endswith(":8482")
    assert tpu[contract.MEGASCALE_SLICE_ID] == "1" and tpu[contract.TPU_WORKER_ID] == "0"
    assert tpu[contract.MEGASCALE_PORT] == "8080"


def test_supported_kwargs_for_an_older_jax():
    def old_initialize(coordinator_address=None, num_processes=None, process_id=None, local_device_ids=None,
                       initialization_timeout=300):
        pass

    args = jrjax.distributed_args(ident(), "cpu").kwargs()
    kept, dropped = jrjax.supported_kwargs(old_initialize, args)
    assert set(dropped) == {"cluster_detection_method", "heartbeat_timeout_seconds", "shutdown_timeout_seconds"}
    assert kept["process_id"] == 0 and "cluster_detection_method" not in kept


def test_the_installed_jax_takes_every_argument():
    jax = pytest.importorskip("jax", reason="jax is a test dependency of this area")
    args = jrjax.distributed_args(ident(), "cpu").kwargs()
    kept, dropped = jrjax.supported_kwargs(jax.distributed.initialize, args)
    assert dropped == [] and kept == args


# --- the edge: env set before the backend, never overriding ----------------------------------

def test_libtpu_env_never_overrides_gke_and_warns(monkeypatch, caplog):
    p = jrjax.plan(ident(job=1, pod=1), "tpu", environ={})
    # A copy of the environment, so that nothing set here outlives the test.
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if k not in p.env})
    os.environ[contract.TPU_WORKER_ID] = "5"  # as if GKE's webhook had injected it
    with caplog.at_level(logging.WARNING, logger="jobset_runtime"):
        jrjax._apply_env(p.env)
    assert os.environ[contract.TPU_WORKER_ID] == "5"
    assert os.environ[contract.MEGASCALE_SLICE_ID] == "1"
    assert any("TPU_WORKER_ID='5'" in r.getMessage() and "'1'" in r.getMessage() for r in caplog.records)
    assert os.environ[contract.MEGASCALE_PORT] == "8080"


def test_importing_the_module_does_not_import_jax():
    code = "import sys, jobset_runtime.jax; sys.exit('jax' in sys.modules)"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert subprocess.run([sys.executable, "-c", code], check=False, env={**os.environ, "PYTHONPATH": root}).returncode == 0
