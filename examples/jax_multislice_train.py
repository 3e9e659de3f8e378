"""One data-parallel training step, repeated, across TPU slices: the batch is split over
slices (DCN, between slices) and over the chips of each slice (ICI, within a slice).

On a TPU multislice JobSet (`jobset-runtime manifest tpu-multislice`) the platform is
detected; on CPU (JAX_PLATFORMS=cpu, the local runner or a laptop) the same program runs
with each group of hosts_per_slice processes standing in for a slice.  Every process
checks the distributed result against the same steps computed locally with NumPy.
"""

import argparse
import json
import sys

import numpy as np

import jobset_runtime.jax as jrjax


def slice_mesh(jax, hosts_per_slice: int):
    """A (slice, data) mesh: devices of one slice share a row."""
    from jax.sharding import Mesh

    devices = jax.devices()
    if devices[0].platform == "tpu" and hasattr(devices[0], "slice_index"):
        from jax.experimental import mesh_utils

        slices = len({d.slice_index for d in devices})
        per_slice = len(devices) // slices
        grid = mesh_utils.create_hybrid_device_mesh((1, per_slice), (slices, 1), devices)
    else:  # no slices on CPU/GPU: consecutive processes form one
        def slice_of(d):
            return d.process_index // hosts_per_slice

        slices = len({slice_of(d) for d in devices})
        grid = np.array(sorted(devices, key=lambda d: (slice_of(d), d.process_index, d.id))).reshape(slices, -1)
    return Mesh(grid, ("slice", "data"))


def reference(x, y, w, lr, steps):
    losses = []
    for _ in range(steps):
        err = x @ w - y
        losses.append(float(np.mean(err ** 2)))
        w = w - lr * (2.0 / len(x)) * (x.T @ err)
    return w, losses


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=None, help="CPU devices per process (CPU only)")
    ap.add_argument("--port", type=int, default=jrjax.contract.JAX_PORT)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--initialization-timeout", type=int, default=jrjax.DEFAULT_INITIALIZATION_TIMEOUT)
    ap.add_argument("--timeout", type=float, default=None)
    args = ap.parse_args(argv)

    plan = jrjax.initialize(port=args.port, num_cpu_devices=args.devices,
                            initialization_timeout=args.initialization_timeout, timeout=args.timeout)

    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from jobset_runtime.podinfo import current_identity

    ident = current_identity()
    mesh = slice_mesh(jax, ident.hosts_per_slice)
    batch, features, lr = 16 * jax.device_count(), 8, 0.1
    rng = np.random.default_rng(0)  # every process builds the same global batch, and keeps its shards
    x_all = rng.normal(size=(batch, features)).astype(np.float32)
    w_true = rng.normal(size=(features,)).astype(np.float32)
    y_all = x_all @ w_true

    rows = NamedSharding(mesh, P(("slice", "data")))
    x = jax.make_array_from_callback(x_all.shape, rows, lambda i: x_all[i])
    y = jax.make_array_from_callback(y_all.shape, rows, lambda i: y_all[i])
    w = jax.device_put(jnp.zeros(features, jnp.float32), NamedSharding(mesh, P()))

    @jax.jit
    def step(w, x, y):
        loss, grad = jax.value_and_grad(lambda w: jnp.mean((x @ w - y) ** 2))(w)
        return w - lr * grad, loss  # the mean over the batch is an all-reduce over both mesh axes

    losses = []
    for _ in range(args.steps):
        w, loss = step(w, x, y)
        losses.append(float(loss))
    w_ref, losses_ref = reference(x_all, y_all, np.zeros(features, np.float32), lr, args.steps)
    got = np.asarray(w.addressable_data(0))
    ok = bool(np.allclose(got, w_ref, rtol=1e-4, atol=1e-5) and np.allclose(losses, losses_ref, rtol=1e-4)
              and losses[-1] < losses[0])
    print(json.dumps({"process_id": plan.args.process_id, "platform": plan.platform,
                      "mesh": dict(mesh.shape), "losses": losses, "ok": ok}), flush=True)
    jax.distributed.shutdown()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
