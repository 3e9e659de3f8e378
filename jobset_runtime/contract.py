"""Every name shared by the runtime and the manifests that feed it.

JobSet label/annotation keys, the Job controller's keys, our own env vars,
downward-API paths, exit codes and default ports are written here once and
imported wherever they are read (identity, peers, supervisor) or injected
(manifests, the local runner).  Nothing else in the project spells them.
"""

# --- JobSet v0.12 (kubernetes-sigs/jobset) ------------------------------------
# api/jobset/v1alpha2/jobset_types.go and pkg/constants/constants.go; applied by
# labelAndAnnotateObject in pkg/controllers/jobset_controller.go, each one set as
# both a label and an annotation with the same decimal-string value.
JOBSET_API_VERSION = "jobset.x-k8s.io/v1alpha2"
JOBSET_KIND = "JobSet"

JOBSET_NAME_KEY = "jobset.sigs.k8s.io/jobset-name"
JOBSET_UID_KEY = "jobset.sigs.k8s.io/jobset-uid"
REPLICATED_JOB_NAME_KEY = "jobset.sigs.k8s.io/replicatedjob-name"
REPLICATED_JOB_REPLICAS_KEY = "jobset.sigs.k8s.io/replicatedjob-replicas"
JOB_INDEX_KEY = "jobset.sigs.k8s.io/job-index"
JOB_GLOBAL_INDEX_KEY = "jobset.sigs.k8s.io/job-global-index"
GLOBAL_REPLICAS_KEY = "jobset.sigs.k8s.io/global-replicas"
JOB_KEY = "jobset.sigs.k8s.io/job-key"
RESTART_ATTEMPT_KEY = "jobset.sigs.k8s.io/restart-attempt"
GROUP_NAME_KEY = "jobset.sigs.k8s.io/group-name"
GROUP_REPLICAS_KEY = "jobset.sigs.k8s.io/group-replicas"
JOB_GROUP_INDEX_KEY = "jobset.sigs.k8s.io/job-group-index"
# `<js>-<rjob>-<jobIdx>-<podIdx>.<subdomain>`; only when spec.coordinator is set.
COORDINATOR_KEY = "jobset.sigs.k8s.io/coordinator"
DEFAULT_GROUP_NAME = "default"

# Annotation-only keys.
EXCLUSIVE_TOPOLOGY_KEY = "alpha.jobset.sigs.k8s.io/exclusive-topology"
NODE_SELECTOR_STRATEGY_KEY = "alpha.jobset.sigs.k8s.io/node-selector"
IN_PLACE_RESTART_ATTEMPT_KEY = "jobset.sigs.k8s.io/in-place-restart-attempt"

# --- Kubernetes (Job controller, kubelet) --------------------------------------
# pkg/controller/job/indexed_job_utils.go: Indexed pods get this annotation and
# label, and the env var below.
JOB_COMPLETION_INDEX_KEY = "batch.kubernetes.io/job-completion-index"
JOB_COMPLETION_INDEX_ENV = "JOB_COMPLETION_INDEX"
# The Job controller's own pod labels, with and without the batch.kubernetes.io/ prefix.
JOB_CONTROLLER_UID_KEY = "batch.kubernetes.io/controller-uid"
JOB_NAME_KEY = "batch.kubernetes.io/job-name"
LEGACY_CONTROLLER_UID_KEY = "controller-uid"
LEGACY_JOB_NAME_KEY = "job-name"
HOSTNAME_ENV = "HOSTNAME"
DEFAULT_CLUSTER_DOMAIN = "cluster.local"
HOSTS_FILE = "/etc/hosts"
RESOLV_CONF = "/etc/resolv.conf"
# Every pod with a service account token mounted (the default) has its namespace here.
SERVICE_ACCOUNT_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
# What many hand-written manifests set from fieldRef metadata.namespace.
POD_NAMESPACE_ENV = "POD_NAMESPACE"
TERMINATION_LOG = "/dev/termination-log"
TERMINATION_MESSAGE_MAX = 4096  # the kubelet truncates beyond this
# Kubernetes DNS-1123 label limit; JobSet keeps 6 more characters for the
# pod-name suffix, so a JobSet pod hostname is at most 57 characters.
DNS_LABEL_MAX = 63
POD_NAME_SUFFIX_LEN = 6
HOSTNAME_MAX = DNS_LABEL_MAX - POD_NAME_SUFFIX_LEN
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# A JobSet CRD file (`kubectl get crd jobsets.jobset.x-k8s.io -o yaml`) that
# `jobset-runtime manifest` validates against when --crd is not given.
JOBSET_CRD_ENV = "JOBSET_CRD"

# --- Downward API --------------------------------------------------------------
# The volume the manifests mount: files `labels` and `annotations` (one
# key="value" per line, value Go-quoted) plus `name` and `namespace`.
PODINFO_ENV = "JOBSET_RUNTIME_PODINFO"
PODINFO_DIR = "/etc/podinfo"
PODINFO_VOLUME = "jobset-runtime-podinfo"
PODINFO_LABELS = "labels"
PODINFO_ANNOTATIONS = "annotations"
PODINFO_NAME = "name"
PODINFO_NAMESPACE = "namespace"

# --- Our env vars ---------------------------------------------------------------
ENV_PREFIX = "JOBSET_RUNTIME_"
# `name:REPLICASxPODS,...` in spec order, e.g. `launcher:1x1,worker:2x4`.
TOPOLOGY_ENV = "JOBSET_RUNTIME_TOPOLOGY"
# `ip[:port],...`: ask these servers instead of /etc/resolv.conf's.
NAMESERVERS_ENV = "JOBSET_RUNTIME_NAMESERVERS"
CLUSTER_DOMAIN_ENV = "JOBSET_RUNTIME_CLUSTER_DOMAIN"
TERMINATION_LOG_ENV = "JOBSET_RUNTIME_TERMINATION_LOG"
# The pod's own IP (fieldRef status.podIP); else the kubelet's /etc/hosts line gives it.
POD_IP_ENV = "JOBSET_RUNTIME_POD_IP"
LOG_FORMAT_ENV = "JOBSET_RUNTIME_LOG_FORMAT"
# The in-place restart epoch handed to the child (0 on the first start).
RESTART_ENV = "JOBSET_RUNTIME_RESTART"
# The fail-fast group channel's shared token: a file mounted from a Secret.
GROUP_TOKEN_FILE_ENV = "JOBSET_RUNTIME_GROUP_TOKEN_FILE"
GROUP_TOKEN_DIR = "/etc/jobset-runtime/group"  # where the group Secret is mounted
GROUP_TOKEN_KEY = "token"                      # its one key
GROUP_TOKEN_FILE = f"{GROUP_TOKEN_DIR}/{GROUP_TOKEN_KEY}"
GROUP_VOLUME = "jobset-runtime-group"

# One env var per identity field: read as input (a hand-written JobSet sets them
# from fieldRefs) and exported by `jobset-run` for the child.  Same name both
# ways, so a nested call sees exactly what its parent derived.
IDENTITY_ENV = {
    "jobset_name": "JOBSET_RUNTIME_JOBSET_NAME",
    "jobset_uid": "JOBSET_RUNTIME_JOBSET_UID",
    "namespace": "JOBSET_RUNTIME_NAMESPACE",
    "pod_name": "JOBSET_RUNTIME_POD_NAME",
    "replicated_job": "JOBSET_RUNTIME_REPLICATED_JOB",
    "replicated_job_replicas": "JOBSET_RUNTIME_REPLICATED_JOB_REPLICAS",
    "job_index": "JOBSET_RUNTIME_JOB_INDEX",
    "job_global_index": "JOBSET_RUNTIME_JOB_GLOBAL_INDEX",
    "global_replicas": "JOBSET_RUNTIME_GLOBAL_REPLICAS",
    "pod_index": "JOBSET_RUNTIME_POD_INDEX",
    "restart_attempt": "JOBSET_RUNTIME_RESTART_ATTEMPT",
    "subdomain": "JOBSET_RUNTIME_SUBDOMAIN",
    "coordinator": "JOBSET_RUNTIME_COORDINATOR",
}
# The labels/annotations each identity field comes from, for the fieldRef env
# route and for the manifests that write it.
IDENTITY_KEYS = {
    "jobset_name": JOBSET_NAME_KEY,
    "jobset_uid": JOBSET_UID_KEY,
    "replicated_job": REPLICATED_JOB_NAME_KEY,
    "replicated_job_replicas": REPLICATED_JOB_REPLICAS_KEY,
    "job_index": JOB_INDEX_KEY,
    "job_global_index": JOB_GLOBAL_INDEX_KEY,
    "global_replicas": GLOBAL_REPLICAS_KEY,
    "pod_index": JOB_COMPLETION_INDEX_KEY,
    "restart_attempt": RESTART_ATTEMPT_KEY,
    "coordinator": COORDINATOR_KEY,
}
# Exported only (derived, never read back as input).
RANK_ENV = "JOBSET_RUNTIME_RANK"
WORLD_SIZE_ENV = "JOBSET_RUNTIME_WORLD_SIZE"
SLICE_ID_ENV = "JOBSET_RUNTIME_SLICE_ID"
NUM_SLICES_ENV = "JOBSET_RUNTIME_NUM_SLICES"
HOSTS_PER_SLICE_ENV = "JOBSET_RUNTIME_HOSTS_PER_SLICE"
WORKER_ID_ENV = "JOBSET_RUNTIME_WORKER_ID"
HOST_ENV = "JOBSET_RUNTIME_HOSTNAME"
FQDN_ENV = "JOBSET_RUNTIME_FQDN"
COORDINATOR_ADDRESS_ENV = "JOBSET_RUNTIME_COORDINATOR_ADDRESS"

# --- Framework env (names owned by the frameworks) ------------------------------
# PyTorch (torch.distributed env:// init, torchrun's PET_* argument env).
TORCH_MASTER_ADDR = "MASTER_ADDR"
TORCH_MASTER_PORT = "MASTER_PORT"
TORCH_WORLD_SIZE = "WORLD_SIZE"
TORCH_RANK = "RANK"
TORCH_NODE_RANK = "NODE_RANK"
TORCHRUN_NNODES = "PET_NNODES"
TORCHRUN_NODE_RANK = "PET_NODE_RANK"
TORCHRUN_MASTER_ADDR = "PET_MASTER_ADDR"
TORCHRUN_MASTER_PORT = "PET_MASTER_PORT"
TORCHRUN_NPROC_PER_NODE = "PET_NPROC_PER_NODE"
# libtpu / Cloud TPU (jax/_src/clusters/cloud_tpu_cluster.py reads these).
TPU_WORKER_ID = "TPU_WORKER_ID"
TPU_WORKER_HOSTNAMES = "TPU_WORKER_HOSTNAMES"
MEGASCALE_COORDINATOR_ADDRESS = "MEGASCALE_COORDINATOR_ADDRESS"
MEGASCALE_NUM_SLICES = "MEGASCALE_NUM_SLICES"
MEGASCALE_SLICE_ID = "MEGASCALE_SLICE_ID"
MEGASCALE_PORT = "MEGASCALE_PORT"
# Read by jax.distributed.initialize (jax/_src/distributed.py) and its Cloud TPU
# detection (jax/_src/clusters/cluster.py).
JAX_COORDINATOR_ADDRESS_ENV = "JAX_COORDINATOR_ADDRESS"
JAX_COORDINATOR_PORT_ENV = "JAX_COORDINATOR_PORT"
# Set by GKE on TPU nodes; their presence marks a TPU workload.  Not TPU_SKIP_MDS_QUERY:
# `import jax` sets it to 1 on machines with *no* TPU chip (jax/_src/cloud_tpu_init.py).
TPU_PRESENCE_ENV = ("TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES")

# MPI implementations (REFERENCE.md, MPI): what the launcher and the generated manifests set.
# Open MPI reads an MCA parameter from `<prefix><framework>_<name>` in the environment.  With
# Open MPI 5 the launch settings moved to PRRTE, which reads its own prefix and names only: the
# 4.x (ORTE) names are ignored, and every rank then runs on the launcher (kubeflow/trainer#4028,
# mpi-operator#842).  Each pair is (Open MPI 5 / PRRTE, Open MPI 4 / ORTE).
OPENMPI_HOSTFILE_ENV = ("PRTE_MCA_prte_default_hostfile", "OMPI_MCA_orte_default_hostfile")
OPENMPI_KEEP_FQDN_ENV = ("PRTE_MCA_prte_keep_fqdn_hostnames", "OMPI_MCA_orte_keep_fqdn_hostnames")
OPENMPI_AGENT_ENV = ("PRTE_MCA_plm_ssh_agent", "OMPI_MCA_plm_rsh_agent")
OPENMPI_AGENT_ARGS_ENV = ("PRTE_MCA_plm_ssh_args", "OMPI_MCA_plm_rsh_args")
OPENMPI_NO_TREE_SPAWN_ENV = ("PRTE_MCA_plm_ssh_no_tree_spawn", "OMPI_MCA_plm_rsh_no_tree_spawn")
# Read by every rank's Open MPI (4 and 5): the mpi manifest sets it where pods have fewer CPUs than slots.
OPENMPI_YIELD_WHEN_IDLE_ENV = "OMPI_MCA_mpi_yield_when_idle"
# MPICH's Hydra (mpiexec).
MPICH_HOST_FILE_ENV = "HYDRA_HOST_FILE"
MPICH_LAUNCHER_ENV = "HYDRA_LAUNCHER"
MPICH_LAUNCHER_EXEC_ENV = "HYDRA_LAUNCHER_EXEC"
MPICH_LAUNCHER_EXTRA_ARGS_ENV = "HYDRA_LAUNCHER_EXTRA_ARGS"
# Intel MPI's own Hydra.
INTEL_HOST_FILE_ENV = "I_MPI_HYDRA_HOST_FILE"
INTEL_BOOTSTRAP_ENV = "I_MPI_HYDRA_BOOTSTRAP"
INTEL_BOOTSTRAP_EXEC_ENV = "I_MPI_HYDRA_BOOTSTRAP_EXEC"
INTEL_BOOTSTRAP_EXEC_EXTRA_ARGS_ENV = "I_MPI_HYDRA_BOOTSTRAP_EXEC_EXTRA_ARGS"
INTEL_BRANCH_COUNT_ENV = "I_MPI_HYDRA_BRANCH_COUNT"
INTEL_PERHOST_ENV = "I_MPI_PERHOST"

# `jobset-run --wait` scopes: the peers that must resolve before the command starts.
# Workers wait for their coordinator (TPU: their slice); only a launcher waits for
# all, so cluster DNS load stays linear in the number of pods.
WAIT_SCOPES = ("coordinator", "slice", "all", "none")

# --- Ports ---------------------------------------------------------------------
TORCH_PORT = 29500  # torchrun's default --master-port
# JAX coordinator: kept at 8476 although JAX >= 0.8.1 defaults to 8482 on Cloud TPU, because
# GCP's default TPU firewall rules open 8476 (jax#35905); passed explicitly, so the JAX
# version does not matter (docs/jax.md).
JAX_PORT = 8476
MEGASCALE_DEFAULT_PORT = 8080  # libtpu's default MEGASCALE_PORT
GROUP_PORT = 7470   # the fail-fast group channel
GROUP_LEADERS_PORT = GROUP_PORT + 1  # the leaders' group of the two-level tree (always the group port + 1)
SSH_PORT = 2222     # sshd in MPI workers, as mpi-operator runs it
MPI_PORT = 7472     # the MPI worker's authenticated channel (launcher watch, ssh-free daemon start)
MPI_AGENT_CONNECT_S = 60.0  # how long the remote-start agent keeps asking a worker that turns it away

# --- MPI ssh transport -----------------------------------------------------------
# The manifest generator makes a key pair per JobSet and ships it in a Secret of
# type kubernetes.io/ssh-auth, mounted read-only here in the launcher and workers.
SSH_DIR = "/etc/jobset-runtime/ssh"
SSH_VOLUME = "jobset-runtime-ssh"
SSH_PRIVATE_KEY = "ssh-privatekey"    # OpenSSH private key (ed25519)
SSH_PUBLIC_KEY = "ssh-publickey"      # `ssh-ed25519 AAAA... comment`
SSH_AUTHORIZED_KEYS = "authorized_keys"
# The launcher-worker channel's secret: this file if set, else the ssh private key
# above (already shared by exactly the launcher and the workers of one JobSet).
MPI_TOKEN_FILE_ENV = "JOBSET_RUNTIME_MPI_TOKEN_FILE"
MPI_PORT_ENV = "JOBSET_RUNTIME_MPI_PORT"  # overrides MPI_PORT (tests, hosts sharing one network)
SSH_DIR_ENV = "JOBSET_RUNTIME_SSH_DIR"    # overrides SSH_DIR
# sshd's static settings (port 2222, keys only, runs as a non-root user); Dockerfile.mpi copies
# launchers/sshd_config here.  JOBSET_RUNTIME_SSHD_CONFIG overrides the path.
SSHD_CONFIG = "/etc/jobset-runtime/sshd_config"
SSHD_CONFIG_ENV = "JOBSET_RUNTIME_SSHD_CONFIG"
# Dockerfile.mpi's non-root user (uid and gid).  The `mpi` manifest sets it as the pods'
# securityContext.fsGroup: the kubelet then gives the Secret's files to that group, and
# adds the group to every container process, so the user can read the key (mode 0440).
MPI_IMAGE_UID = 1000
MPI_FS_GROUP = 1000

# --- Exit codes ----------------------------------------------------------------
# Chosen so a manifest's podFailurePolicy/failurePolicy can tell causes apart.
EXIT_OK = 0
EXIT_CONFIG = 2          # bad configuration: restarting cannot fix it -> fail the JobSet
EXIT_PEERS_TIMEOUT = 69  # sysexits EX_UNAVAILABLE: peers never appeared before the deadline
EXIT_RUN_FAILED = 70     # sysexits EX_SOFTWARE: the MPI run failed though every pod lived on (a daemon
                         # died inside a worker pod): counts as this pod's failure, unlike 75
EXIT_PEER_FAILED = 75    # sysexits EX_TEMPFAIL: stopped because another pod failed first
EXIT_SIGNAL_BASE = 128   # child killed by signal N -> 128 + N, as shells report it
EXIT_NOT_EXECUTABLE = 126  # the command exists but cannot run, as shells report it
EXIT_NOT_FOUND = 127       # no such command, as shells report it
# `jobset-runtime local run` (local/result.py): 0 Completed, 1 Failed, 2 bad input, and
EXIT_LOCAL_TIMEOUT = 124      # --timeout reached, as timeout(1)
EXIT_LOCAL_INTERRUPTED = 130  # Ctrl-C or SIGTERM, as shells report SIGINT

# --- The real control plane (`jobset-runtime local cluster`) -------------------
# Versions of the components built from their published Go modules
# (jobset_runtime/local/controlplane/build.py) and cached under
# ~/.cache/jobset-runtime/control-plane/<CONTROL_PLANE_VERSIONS>/.
KUBERNETES_VERSION = "v1.36.3"          # k8s.io/kubernetes
KUBERNETES_STAGING_VERSION = "v0.36.3"  # every k8s.io/* staging module it replaces
ETCD_VERSION = "v3.6.16"                # go.etcd.io/etcd/server/v3
JOBSET_VERSION = "v0.12.0"              # sigs.k8s.io/jobset
CONTROL_PLANE_VERSIONS = (f"kubernetes-{KUBERNETES_VERSION}_etcd-{ETCD_VERSION}"
                          f"_jobset-{JOBSET_VERSION}")
# A directory of prebuilt binaries used instead of the cache (e.g. kubebuilder
# envtest assets plus a JobSet manager and its CRD file).
CONTROL_PLANE_ENV = "JOBSET_RUNTIME_CONTROL_PLANE"
CONTROL_PLANE_CACHE = "~/.cache/jobset-runtime/control-plane"
CONTROL_PLANE_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager",
                          "kube-scheduler", "kubectl", "jobset-manager")
JOBSET_CRD_FILE = "jobset.x-k8s.io_jobsets.yaml"  # beside the binaries
CONTROL_PLANE_BUILD_COMMAND = "./dev control-plane"
CLUSTER_API_PORT = 6443  # kube-apiserver's port on 127.0.0.1 unless --port says otherwise
JOBSET_WEBHOOKS_FILE = "jobset-webhooks.yaml"     # config/components/webhook/manifests.yaml, beside them
