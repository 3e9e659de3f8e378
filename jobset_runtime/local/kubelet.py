"""What the kubelet does to a container before it runs: pure functions.

Env from `value`/`valueFrom` (fieldRef, resourceFieldRef, secretKeyRef,
configMapKeyRef), `envFrom`, `$(VAR)` expansion in env, command and args,
downward-API volume files, volume file modes and ownership, the process's user
and groups (securityContext), and the pod's /etc/hosts and /etc/resolv.conf.
Each function names the upstream code whose behaviour it reproduces
(kubernetes/kubernetes); none of it touches files, processes or sockets.
"""

from __future__ import annotations

import base64
import math
import re
import unicodedata
from dataclasses import dataclass, field

from .. import contract
from ..errors import ConfigError


# --- $(VAR) expansion ------------------------------------------------------------
# third_party/forked/golang/expansion/expand.go: `$$` is an escaped `$`,
# `$(NAME)` is replaced when NAME is known and left as written when it is not,
# an unclosed `$(` and a `$` before any other character stay literal.

def expand(text: str, env: dict) -> str:
    """Expand `$(VAR)` references in `text` from `env` exactly as the kubelet does."""
    out = []
    checkpoint = 0
    cursor = 0
    n = len(text)
    while cursor < n:
        if text[cursor] == "$" and cursor + 1 < n:
            out.append(text[checkpoint:cursor])
            nxt = text[cursor + 1]
            if nxt == "$":
                out.append("$")
                advance = 1
            elif nxt == "(":
                close = text.find(")", cursor + 2)
                if close == -1:
                    out.append("$(")
                    advance = 1
                else:
                    name = text[cursor + 2:close]
                    out.append(env[name] if name in env else f"$({name})")
                    advance = close - cursor
            else:
                out.append("$" + nxt)
                advance = 1
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    out.append(text[checkpoint:])
    return "".join(out)


# --- Go string quoting -----------------------------------------------------------
# strconv.Quote (Go): printable runes as they are, `"` and `\` escaped, the
# C escapes \a\b\f\n\r\t\v, other runes below 0x80 as \xhh, other non-printable
# runes as \uhhhh or \Uhhhhhhhh.  Go's unicode.IsPrint is: letters, marks,
# numbers, punctuation, symbols, and the ASCII space.

_C_ESCAPES = {"\a": r"\a", "\b": r"\b", "\f": r"\f", "\n": r"\n", "\r": r"\r", "\t": r"\t", "\v": r"\v"}


def _go_printable(ch: str) -> bool:
    if ch == " ":
        return True
    return unicodedata.category(ch)[0] in "LMNPS"


def go_quote(value: str) -> str:
    """`value` as Go's strconv.Quote (and so fmt's %q) writes it."""
    out = ['"']
    for ch in value:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif _go_printable(ch):
            out.append(ch)
        elif ch in _C_ESCAPES:
            out.append(_C_ESCAPES[ch])
        else:
            code = ord(ch)
            if code < 0x80:
                out.append(f"\\x{code:02x}")
            elif code < 0x10000:
                out.append(f"\\u{code:04x}")
            else:
                out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def format_map(m: dict) -> str:
    """pkg/fieldpath/fieldpath.go FormatMap: `key="value"` lines sorted by key, no final newline."""
    return "\n".join(f"{k}={go_quote(m[k])}" for k in sorted(m))


# --- Pod facts the kubelet resolves ------------------------------------------------

@dataclass
class PodFacts:
    """What fieldRefs and downward-API volumes can read about one pod."""

    name: str
    namespace: str
    uid: str
    labels: dict
    annotations: dict
    hostname: str
    subdomain: str
    pod_ip: str
    host_ip: str
    node_name: str
    service_account: str = "default"
    cluster_domain: str = contract.DEFAULT_CLUSTER_DOMAIN
    node_cpus: int = 1
    node_memory: int = 0
    objects: dict = field(default_factory=dict)  # (kind, name) -> manifest dict from the same file
    pod_ips: tuple = ()  # every address, primary first (dual-stack); () means (pod_ip,)


_KEYED = re.compile(r"^metadata\.(labels|annotations)\['(.*)'\]$")


def field_value(facts: PodFacts, path: str, *, volume: bool = False) -> str:
    """The value of a fieldRef, as pkg/kubelet/kubelet_pods.go podFieldSelectorRuntimeValue
    and pkg/fieldpath/fieldpath.go ExtractFieldPathAsString give it.  Whole label
    and annotation maps are allowed only in volumes (pkg/apis/core/validation)."""
    m = _KEYED.match(path)
    if m:
        src = facts.labels if m.group(1) == "labels" else facts.annotations
        return src.get(m.group(2), "")
    simple = {
        "metadata.name": facts.name,
        "metadata.namespace": facts.namespace,
        "metadata.uid": facts.uid,
        "spec.nodeName": facts.node_name,
        "spec.serviceAccountName": facts.service_account,
        "status.podIP": facts.pod_ip,
        "status.podIPs": ",".join(facts.pod_ips or (facts.pod_ip,)),
        "status.hostIP": facts.host_ip,
        "status.hostIPs": facts.host_ip,
    }
    if path in simple:
        return simple[path]
    if volume and path == "metadata.labels":
        return format_map(facts.labels)
    if volume and path == "metadata.annotations":
        return format_map(facts.annotations)
    raise ConfigError(f"fieldRef fieldPath {path!r} is not supported by Kubernetes here; "
                      "use metadata.name, metadata.namespace, metadata.uid, metadata.labels['KEY'], "
                      "metadata.annotations['KEY'], spec.nodeName, status.podIP or status.hostIP")


_QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_SUFFIX = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def _quantity(q) -> float:
    m = _QUANTITY.match(str(q).strip())
    if not m or m.group(2) not in _SUFFIX:
        raise ConfigError(f"resource quantity {q!r} is not a Kubernetes quantity (e.g. 500m, 2, 1Gi)")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def resource_value(facts: PodFacts, container: dict, ref: dict) -> str:
    """resourceFieldRef: the container's request/limit divided by `divisor`, rounded up
    (pkg/api/v1/resource/helpers.go ExtractContainerResourceValue); an unset limit
    reads as the node's allocatable (here: this machine's CPUs and memory)."""
    res = ref.get("resource", "")
    kind, _, name = res.partition(".")
    spec = (container.get("resources") or {})
    value = (spec.get(kind) or {}).get(name)
    if value is None and kind == "requests":
        value = (spec.get("limits") or {}).get(name)
    if value is None:
        value = facts.node_cpus if name == "cpu" else facts.node_memory
    amount = _quantity(value)
    divisor = _quantity(ref.get("divisor", "1"))
    return str(int(math.ceil(amount / divisor - 1e-9)))


def _object_data(facts: PodFacts, kind: str, name: str) -> dict:
    """A Secret's or ConfigMap's data from the same file: Secret `data` is base64
    and `stringData` overrides it (the API server merges it on write)."""
    obj = facts.objects.get((kind, name))
    if obj is None:
        raise KeyError(name)
    if kind == "Secret":
        data = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        data.update({k: str(v) for k, v in (obj.get("stringData") or {}).items()})
        return data
    return {k: str(v) for k, v in (obj.get("data") or {}).items()}


def _key_ref(facts: PodFacts, kind: str, ref: dict, var: str):
    name, key = ref.get("name", ""), ref.get("key", "")
    optional = bool(ref.get("optional", False))
    try:
        data = _object_data(facts, kind, name)
    except KeyError:
        if optional:
            return None
        raise ConfigError(f"env {var}: {kind} {name!r} is not in the file; add it (same file, "
                          f"namespace {facts.namespace}) or mark the reference optional")
    if key not in data:
        if optional:
            return None
        raise ConfigError(f"env {var}: {kind} {name!r} has no key {key!r}; add it or mark the reference optional")
    return data[key]


def container_env(facts: PodFacts, container: dict, extra: dict | None = None) -> dict:
    """The container's environment, as pkg/kubelet/kubelet_pods.go makeEnvironmentVariables
    builds it: envFrom first, then `env` in order; a literal `value` is expanded
    with the variables defined before it; valueFrom values are not expanded.
    `extra` are variables the runtime adds first (HOSTNAME, as the container runtime does)."""
    env = dict(extra or {})
    for src in container.get("envFrom") or []:
        prefix = src.get("prefix", "")
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            ref = src.get(key)
            if ref is None:
                continue
            try:
                data = _object_data(facts, kind, ref.get("name", ""))
            except KeyError:
                if ref.get("optional"):
                    continue
                raise ConfigError(f"envFrom: {kind} {ref.get('name')!r} is not in the file; add it or mark it optional")
            for k, v in data.items():
                env[prefix + k] = v
    for item in container.get("env") or []:
        name = item["name"]
        if "valueFrom" in item:
            vf = item["valueFrom"]
            if "fieldRef" in vf:
                value = field_value(facts, vf["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in vf:
                value = resource_value(facts, container, vf["resourceFieldRef"])
            elif "secretKeyRef" in vf:
                value = _key_ref(facts, "Secret", vf["secretKeyRef"], name)
            elif "configMapKeyRef" in vf:
                value = _key_ref(facts, "ConfigMap", vf["configMapKeyRef"], name)
            else:
                raise ConfigError(f"env {name}: valueFrom needs fieldRef, resourceFieldRef, secretKeyRef or configMapKeyRef")
            if value is None:
                continue
        else:
            value = expand(str(item.get("value", "")), env)
        env[name] = value
    return env


def container_argv(container: dict, env: dict) -> list:
    """command + args with `$(VAR)` expanded (pkg/kubelet/container/helpers.go
    ExpandContainerCommandAndArgs).  The image is ignored, so a command is required."""
    command = [str(c) for c in container.get("command") or []]
    args = [str(a) for a in container.get("args") or []]
    if not command:
        raise ConfigError(f"container {container.get('name', '?')!r} has no command: the local runner ignores "
                          "images (and so their entrypoints); set `command` in the container")
    return [expand(c, env) for c in command] + [expand(a, env) for a in args]


# --- Volumes --------------------------------------------------------------------------

def volume_files(facts: PodFacts, volume: dict, container: dict | None = None) -> dict | None:
    """{relative path: content} for downwardAPI, secret and configMap volumes
    (pkg/volume/downwardapi, pkg/volume/secret, pkg/volume/configmap); None for
    an emptyDir (an empty directory); ConfigError for any other kind."""
    if "emptyDir" in volume:
        return None
    if "downwardAPI" in volume:
        files = {}
        for item in volume["downwardAPI"].get("items") or []:
            if "fieldRef" in item:
                files[item["path"]] = field_value(facts, item["fieldRef"]["fieldPath"], volume=True)
            elif "resourceFieldRef" in item:
                files[item["path"]] = resource_value(facts, container or {}, item["resourceFieldRef"])
        return files
    for kind, key, name_key in (("Secret", "secret", "secretName"), ("ConfigMap", "configMap", "name")):
        if key in volume:
            src = volume[key]
            try:
                data = _object_data(facts, kind, src.get(name_key, ""))
            except KeyError:
                if src.get("optional"):
                    return {}
                raise ConfigError(f"volume {volume.get('name')!r}: {kind} {src.get(name_key)!r} is not in the file; "
                                  "add it to the same YAML file")
            items = src.get("items")
            if items:
                return {i["path"]: data[i["key"]] for i in items if i["key"] in data}
            return data
    raise ConfigError(f"volume {volume.get('name')!r}: only emptyDir, downwardAPI, secret and configMap "
                      "volumes are supported by the local runner")


# pkg/apis/core/v1: SecretVolumeSourceDefaultMode, ConfigMapVolumeSourceDefaultMode,
# DownwardAPIVolumeSourceDefaultMode are all 0644.
DEFAULT_FILE_MODE = 0o644


def volume_file_modes(volume: dict) -> tuple[int, dict]:
    """(defaultMode, {path: item mode}) of a secret, configMap or downwardAPI volume."""
    for key in ("secret", "configMap", "downwardAPI"):
        if key in volume:
            src = volume[key] or {}
            default = _mode(src.get("defaultMode", DEFAULT_FILE_MODE), f"volume {volume.get('name')!r}: defaultMode")
            items = {i["path"]: _mode(i["mode"], f"volume {volume.get('name')!r}: items[{i['path']!r}].mode")
                     for i in src.get("items") or [] if "mode" in i}
            return default, items
    return DEFAULT_FILE_MODE, {}


def _mode(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o777:
        raise ConfigError(f"{what}: {value!r} is not a file mode between 0 and 0777 (write it as 0440 or 288)")
    return value


def fs_group_mode(mode: int, *, read_only: bool, is_dir: bool) -> int:
    """A file's mode once the volume is given to an fsGroup (pkg/volume/volume_linux.go,
    changeFilePermission): group read (and write unless read-only), and on directories
    group execute and setgid, so that new files inherit the group."""
    mask = 0o440 if read_only else 0o660
    if is_dir:
        mask |= 0o2110
    return mode | mask


@dataclass(frozen=True)
class Credentials:
    """The container process's ids (pkg/kubelet/kuberuntime/security_context.go)."""

    uid: int | None           # None: the image's user, which here is the runner's own
    gid: int | None
    groups: tuple[int, ...]   # supplementary: fsGroup, then supplementalGroups

    @property
    def set(self) -> bool:
        return self.uid is not None or self.gid is not None or bool(self.groups)


def credentials(pod_spec: dict, container: dict, primary_gid=lambda uid: None) -> Credentials:
    """runAsUser and runAsGroup from the container's securityContext, else the pod's;
    fsGroup and supplementalGroups from the pod's.  With runAsUser but no runAsGroup
    the group is the user's primary group in the image's /etc/passwd, 0 when it has
    none (what containerd does); `primary_gid(uid)` looks it up here."""
    pod_sc = pod_spec.get("securityContext") or {}
    ctr_sc = container.get("securityContext") or {}

    def pick(key):
        value = ctr_sc.get(key, pod_sc.get(key))
        return None if value is None else _id(value, key)

    uid, gid = pick("runAsUser"), pick("runAsGroup")
    if uid is not None and gid is None:
        gid = primary_gid(uid) or 0
    groups = []
    if pod_sc.get("fsGroup") is not None:
        groups.append(_id(pod_sc["fsGroup"], "fsGroup"))
    for g in pod_sc.get("supplementalGroups") or []:
        if _id(g, "supplementalGroups") not in groups:
            groups.append(g)
    return Credentials(uid, gid, tuple(groups))


def _id(value, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
        raise ConfigError(f"securityContext.{key}: {value!r} is not a user or group id (0 to 2147483647)")
    return value


def setpriv_argv(creds: Credentials) -> list:
    """util-linux setpriv(1) in front of the command: it sets the groups, then the gid,
    then the uid (dropping root's capabilities), and execs the command."""
    argv = ["setpriv"]
    if creds.uid is not None:
        argv.append(f"--reuid={creds.uid}")
    if creds.gid is not None:
        argv.append(f"--regid={creds.gid}")
    argv.append(f"--groups={','.join(map(str, creds.groups))}" if creds.groups else "--clear-groups")
    return [*argv, "--"]


# --- /etc/hosts and /etc/resolv.conf --------------------------------------------------

def hosts_file(facts: PodFacts, host_aliases=()) -> str:
    """pkg/kubelet/kubelet_pods.go managedHostsFileContent for a pod that is not on
    the host network: the loopback boilerplate, then `<ip> <fqdn> <hostname>` when
    the pod has a subdomain (`<ip> <hostname>` when not), then hostAliases."""
    lines = [
        "# Kubernetes-managed hosts file.",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "fe00::0\tip6-localnet",
        "fe00::0\tip6-mcastprefix",
        "fe00::1\tip6-allnodes",
        "fe00::2\tip6-allrouters",
    ]
    # One line per pod IP: a dual-stack pod's name maps to both.
    for ip in facts.pod_ips or (facts.pod_ip,):
        if facts.subdomain:
            fqdn = f"{facts.hostname}.{facts.subdomain}.{facts.namespace}.svc.{facts.cluster_domain}"
            lines.append(f"{ip}\t{fqdn}\t{facts.hostname}")
        else:
            lines.append(f"{ip}\t{facts.hostname}")
    if host_aliases:
        lines.append("")
        lines.append("# Entries added by HostAliases.")
        for alias in host_aliases:
            lines.append(f"{alias['ip']}\t" + "\t".join(alias.get("hostnames") or []))
    return "\n".join(lines) + "\n"


def resolv_conf(namespace: str, nameserver: str, cluster_domain: str = contract.DEFAULT_CLUSTER_DOMAIN,
                dns_policy: str | None = None, dns_config: dict | None = None) -> str:
    """dnsPolicy ClusterFirst (pkg/kubelet/network/dns/dns.go): the cluster DNS server,
    the three cluster search domains, ndots:5.  The host's own search domains are
    left out so nothing in a pod depends on the machine it runs on.

    dnsConfig is merged as GetPodDNS/appendDNSConfig do: its nameservers after the cluster's
    (at most 3), its searches after the cluster's (duplicates dropped), its options replacing
    same-named ones; with dnsPolicy None only dnsConfig counts (a node-local cache such as
    169.254.20.10 is put in a pod's path this way)."""
    servers, searches = [nameserver], [f"{namespace}.svc.{cluster_domain}", f"svc.{cluster_domain}", cluster_domain]
    options = {"ndots": "5"}
    if dns_policy == "None":
        servers, searches, options = [], [], {}
    cfg = dns_config or {}
    servers = list(dict.fromkeys(servers + list(cfg.get("nameservers") or [])))[:3]
    searches = list(dict.fromkeys(searches + list(cfg.get("searches") or [])))
    for opt in cfg.get("options") or []:
        options[opt["name"]] = opt.get("value")
    lines = [f"search {' '.join(searches)}"] if searches else []
    lines += [f"nameserver {s}" for s in servers]
    if options:
        lines.append("options " + " ".join(k if v is None else f"{k}:{v}" for k, v in options.items()))
    return "\n".join(lines) + "\n"
