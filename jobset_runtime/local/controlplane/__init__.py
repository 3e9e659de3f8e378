"""The real Kubernetes control plane on one machine, with jobset-runtime as the node."""
