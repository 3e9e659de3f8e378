"""A multi-process JAX program that runs on CPUs: a laptop, the local runner, or a JobSet.

Every process brings jax.distributed up with jobset_runtime.jax.initialize(),
then checks two cross-process collectives itself: a psum over every device of
every process, and an all-gather of (process index, slice id, worker id).
It prints one JSON line and exits 1 if anything disagrees.

    jobset-runtime local run examples/jax.yaml      # or, in a pod:
    python examples/jax_cpu_demo.py --devices 2
"""

import argparse
import json
import sys

import jobset_runtime.jax as jrjax


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=2, help="CPU devices per process")
    ap.add_argument("--port", type=int, default=jrjax.contract.JAX_PORT, help="JAX coordinator port")
    ap.add_argument("--initialization-timeout", type=int, default=jrjax.DEFAULT_INITIALIZATION_TIMEOUT)
    ap.add_argument("--timeout", type=float, default=None, help="our deadline (default 0.9 x the above)")
    ap.add_argument("--heartbeat-timeout", type=int, default=jrjax.DEFAULT_HEARTBEAT_TIMEOUT)
    ap.add_argument("--shutdown-timeout", type=int, default=jrjax.DEFAULT_SHUTDOWN_TIMEOUT)
    args = ap.parse_args(argv)

    plan = jrjax.initialize(
        "cpu",
        port=args.port,
        num_cpu_devices=args.devices,
        initialization_timeout=args.initialization_timeout,
        timeout=args.timeout,
        heartbeat_timeout_seconds=args.heartbeat_timeout,
        shutdown_timeout_seconds=args.shutdown_timeout,
    )

    import jax
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    try:
        shard_map = jax.shard_map
    except AttributeError:  # JAX before 0.7
        from jax.experimental.shard_map import shard_map

    from jobset_runtime.podinfo import current_identity

    ident = current_identity()
    n = jax.device_count()
    mesh = Mesh(np.array(jax.devices()), ("d",))
    values = np.arange(1, n + 1, dtype=np.float32)  # device i of the mesh holds i + 1
    x = jax.make_array_from_callback((n,), NamedSharding(mesh, P("d")), lambda idx: values[idx])
    total = jax.jit(shard_map(lambda b: jax.lax.psum(b, "d"), mesh=mesh, in_specs=P("d"), out_specs=P()))(x)
    psum = float(np.asarray(total.addressable_data(0))[0])

    mine = np.array([jax.process_index(), ident.slice_id, ident.worker_id], dtype=np.int32)
    everyone = np.asarray(multihost_utils.process_allgather(mine)).reshape(-1, 3).tolist()

    report = {
        "process_id": plan.args.process_id,
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "slice_id": ident.slice_id,
        "worker_id": ident.worker_id,
        "hosts_per_slice": ident.hosts_per_slice,
        "devices": n,
        "local_devices": jax.local_device_count(),
        "psum": psum,
        "expected_psum": n * (n + 1) / 2,
        "everyone": everyone,
    }
    ok = (
        psum == report["expected_psum"]
        and report["process_index"] == plan.args.process_id
        and sorted(p for p, _, _ in everyone) == list(range(jax.process_count()))
        and all(p == s * ident.hosts_per_slice + w for p, s, w in everyone)
    )
    report["ok"] = ok
    print(json.dumps(report), flush=True)
    jax.distributed.shutdown()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
