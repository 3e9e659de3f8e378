"""jobset-runtime: bring a distributed job up inside the pods of a Kubernetes JobSet."""

__version__ = "0.1.0"
