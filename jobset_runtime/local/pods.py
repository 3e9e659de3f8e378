"""Pods as processes: network, UTS and mount namespaces on a private bridge, or loopback.

netns mode (root): the runner creates one "cluster" network namespace holding a
bridge on 198.18.0.1/15 (RFC 2544 benchmarking range).  Each pod gets its own
network namespace with a veth into that bridge and its own address from the
range; the bridge is never connected to the host's network, so nothing in a
pod is reachable from, or routed to, the outside.  The DNS server runs inside
the cluster namespace on 198.18.0.1:53 (a thread of the runner that entered
that namespace with setns(2) before opening its sockets), which every pod
reaches over the bridge.

Each container is started as

    ip netns exec NS unshare --uts -- /bin/sh -c SHIM shim HOST WORKDIR [SRC DST ro|rw]... -- ARGV...

`ip netns exec` enters the pod's network namespace, makes a private mount
namespace and bind-mounts /etc/netns/NS/{hosts,resolv.conf} over /etc's
(iproute2 ip/ipnetns.c); `unshare --uts` gives the container its own
hostname, which SHIM writes to /proc/sys/kernel/hostname; SHIM bind-mounts
the pod's volumes and execs the container's command.  SHIM is a fixed script;
user values travel only as positional arguments, never as shell text.

rootless mode (not root, unprivileged user namespaces allowed): the same
design inside a user namespace.  The command line runs the runner under

    unshare --user --map-root-user --mount --pid --fork --mount-proc --kill-child

so it is root over namespaces it owns (and its own uid on the host).  /run/netns
and /etc/netns belong to the host's root, so namespaces are bind-mounted nsfs
files under a private tmpfs (created with `unshare --net=FILE`, entered with
`nsenter --net=FILE`) and the pod's /etc/hosts and /etc/resolv.conf are bound
by SHIM itself.  The runner is PID 1 of its own PID namespace: when it dies,
however it dies, the kernel kills every pod process, and with them go the
mount namespace, the nsfs mounts and so every network namespace.

IP families (`--ip-family`): `ipv4` (the default) as above; `ipv6` gives each pod one
address from fd6a:7372::/64 (a ULA prefix of ours) with the gateway, and the DNS
server, on fd6a:7372::1; `dual` gives each pod both, IPv6 first, as an IPv6-first
dual-stack cluster does (status.podIP is the IPv6 one, status.podIPs both).

loopback mode: no namespaces.  Each pod gets its own 127.x address (only
programs that bind it explicitly use it), the DNS server listens on
127.0.0.1:<port> and pods find it through JOBSET_RUNTIME_NAMESERVERS.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading

from .. import contract

CLUSTER_NET = ipaddress.ip_network("198.18.0.0/15")
GATEWAY = str(CLUSTER_NET.network_address + 1)
CLUSTER_NET6 = ipaddress.ip_network("fd6a:7372::/64")
GATEWAY6 = str(CLUSTER_NET6.network_address + 1)
# Each family's (network, gateway), and the families of each --ip-family, primary first.
NETWORKS = {"ipv4": (CLUSTER_NET, GATEWAY), "ipv6": (CLUSTER_NET6, GATEWAY6)}
IP_FAMILIES = {"ipv4": ("ipv4",), "ipv6": ("ipv6",), "dual": ("ipv6", "ipv4")}
LOOPBACK_BASE = int(ipaddress.ip_address("127.18.0.0"))
NETNS_DIR = "/run/netns"
ETC_NETNS = "/etc/netns"
CLONE_NEWNET = 0x40000000
BRIDGE_MAC = "02:6a:73:72:00:01"  # locally administered
# A Linux bridge has at most 1,023 ports (BR_MAX_PORTS, port 0 unused; net/bridge/br_if.c):
# past PORTS_PER_BRIDGE pods go on further bridges, each joined to br0 by a veth pair in
# the ports br0 keeps for that (room for ~24,000 pods at once).
BRIDGE_MAX_PORTS = 1023
PORTS_PER_BRIDGE = 1000
MNT_DETACH = 2
USERNS_FLAGS = ("--user", "--map-root-user", "--mount")

SHIM = (
    # In a user namespace /proc/sys/kernel/hostname belongs to the host's root:
    # sethostname(2) through hostname(1) is allowed there (CAP_SYS_ADMIN over the UTS namespace).
    '{ printf %s "$1" > /proc/sys/kernel/hostname || hostname "$1"; } 2>/dev/null || exit 128\n'
    'wd=$2; shift 2\n'
    'while [ "$1" != -- ]; do\n'
    '  case "$3" in\n'
    '  ov) mount -t tmpfs tmpfs "$1" && mkdir "$1/u" "$1/w" &&\n'
    '      mount -t overlay overlay -o "lowerdir=$2,upperdir=$1/u,workdir=$1/w" "$2" || exit 128 ;;\n'
    '  dir) mkdir -p "$2" || exit 128 ;;\n'
    '  file) mkdir -p "${2%/*}" && : > "$2" || exit 128 ;;\n'
    # sysfs of the pod's own network namespace, where the kernel allows it (as `ip netns exec` does).
    '  sys) mount -t sysfs sysfs "$2" 2>/dev/null ;;\n'
    '  *) mount --bind "$1" "$2" || exit 128\n'
    '     if [ "$3" = ro ]; then mount -o remount,bind,ro "$2" || exit 128; fi ;;\n'
    '  esac\n'
    '  shift 3\n'
    'done\n'
    'shift\n'
    'if [ -n "$wd" ]; then cd "$wd" || exit 128; fi\n'
    'exec "$@"\n'
)

LOOPBACK_LIMITS = (
    "loopback mode: pods share this machine's hostname, /etc/hosts, /etc/resolv.conf "
    "and ports. Pod names resolve only through the embedded DNS server named in "
    "JOBSET_RUNTIME_NAMESERVERS (glibc, ssh and MPI do not see them); two pods that "
    "bind the same port on 0.0.0.0 collide; volumeMounts are not mounted (a "
    "downwardAPI volume's directory is passed as JOBSET_RUNTIME_PODINFO instead)."
)


def run_id() -> str:
    """`<runner pid>-<4 hex>`: names carry the pid so a later run can tell a dead run's leftovers."""
    return f"{os.getpid()}-{os.urandom(2).hex()}"


_OURS = re.compile(r"^jsr-(\d+)-[0-9a-f]{4}(-\d+)?$")
_OUR_FILES = re.compile(r"^jsr-(\d+)-[0-9a-f]{4}-files-\w+$")  # Runner._private_dir, under the temp dir


def _alive(pid: int) -> bool:
    """Running, not a zombie: a SIGKILLed runner whose parent has not reaped it yet
    (an orphan under a PID 1 that is slow to reap) has left everything behind already."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def reap_stale() -> list:
    """Delete namespaces, /etc/netns entries and private file directories left by runs
    whose runner was killed outright (SIGKILL leaves no chance to clean up).  Returns
    the names removed."""
    tmp = tempfile.gettempdir()
    files = [n for n in os.listdir(tmp) if (m := _OUR_FILES.match(n)) and not _alive(int(m.group(1)))]
    for n in files:
        shutil.rmtree(os.path.join(tmp, n), ignore_errors=True)
    stale = _our_namespaces(lambda m: not _alive(int(m.group(1))))
    return files + _reap(stale)


def reap_run(run_id: str) -> list:
    """Everything one run left, whether or not its runner is still a process (a zombie is):
    what the runner's watchdog does when the runner was killed outright."""
    tmp = tempfile.gettempdir()
    files = [n for n in os.listdir(tmp) if _OUR_FILES.match(n) and n.startswith(f"jsr-{run_id}-files-")]
    for n in files:
        shutil.rmtree(os.path.join(tmp, n), ignore_errors=True)
    mine = re.compile(rf"^jsr-{re.escape(run_id)}(-\d+)?$")
    return files + _reap(_our_namespaces(lambda m: mine.match(m.group(0))))


def _our_namespaces(pick) -> list:
    names = []
    for d in (NETNS_DIR, ETC_NETNS):
        try:
            found = os.listdir(d)
        except OSError:
            continue
        for n in found:
            m = _OURS.match(n)
            if m and pick(m) and n not in names:
                names.append(n)
    return names


def _reap(stale: list) -> list:
    """Kill every process in these namespaces, delete them and their /etc/netns entries."""
    if not stale:
        return []
    net = Network.__new__(Network)
    net._made = []
    net.kill_all_in(stale)
    for n in stale:
        if os.path.exists(os.path.join(NETNS_DIR, n)):
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
        shutil.rmtree(os.path.join(ETC_NETNS, n), ignore_errors=True)
    return stale


def _offset(ip: str) -> int:
    """A pod address's offset in its family's cluster network (the same in both for a dual-stack pod)."""
    addr = ipaddress.ip_address(ip)
    return int(addr) - int(NETWORKS["ipv6" if addr.version == 6 else "ipv4"][0].network_address)


def pod_mac(ip: str) -> str:
    """A pod's fixed, locally administered MAC: its offset in the cluster network (17 bits)."""
    n = _offset(ip)
    return f"02:6a:73:{n >> 16:02x}:{(n >> 8) & 0xff:02x}:{n & 0xff:02x}"


def _sysctls(values: dict) -> None:
    """Write /proc/sys entries of the calling thread's network namespace."""
    for key, value in values.items():
        with open(f"/proc/sys/{key}", "w") as f:
            f.write(value)


def _run_ip(args, stdin=None):
    r = subprocess.run(["ip", *args], input=stdin, capture_output=True, text=True)
    if r.returncode != 0:
        raise OSError(f"ip {' '.join(args[:3])}: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout


def netns_available() -> tuple[bool, str]:
    """(usable, why not): root, the `ip` tool, and a namespace that can be made."""
    if os.geteuid() != 0:
        return False, "not running as root"
    if shutil.which("ip") is None or shutil.which("unshare") is None:
        return False, "the `ip` (iproute2) or `unshare` (util-linux) tool is missing"
    try:
        r = subprocess.run(["unshare", "--net", "--uts", "--mount", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"unshare failed: {e}"
    if r.returncode != 0:
        return False, f"unshare failed: {r.stderr.decode(errors='replace').strip()}"
    return True, ""


def setns_thread_call(netns_path: str, fn):
    """Run `fn()` in a short-lived thread that has entered the network namespace at
    `netns_path`; sockets it opens (and threads it starts) stay in that namespace
    while the rest of the process stays where it was.  setns(2) on CLONE_NEWNET
    changes only the calling thread."""
    result, error = [], []

    def body():
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(netns_path, os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {netns_path}: {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as e:  # handed to the caller
            error.append(e)

    t = threading.Thread(target=body, name="netns-enter")
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]


class Network:
    """The addresses and namespaces of one run; cleanup() undoes everything, twice is fine."""

    mode = "netns"
    namespaced = True
    netns_dir = NETNS_DIR
    etc_dir = ETC_NETNS
    mtu: int | None = None  # both ends of every pod's veth (a CNI's MTU); None: the kernel's 1500

    def __init__(self, run_id: str, ip_family: str = "ipv4"):
        self.run_id = run_id
        self.families = IP_FAMILIES[ip_family]
        self.cluster_ns = f"jsr-{run_id}"
        self._seq = 0
        self._made: list = []          # pod netns names that exist now
        self._bridge_of: dict = {}     # pod netns name -> index of its bridge (br0, br1, ...)
        self._ports: list = [0]        # pods on each bridge
        self._cluster_made = False
        self._lock = threading.Lock()

    # --- setup ---------------------------------------------------------------
    def setup(self) -> None:
        reap_stale()
        self._watch_runner()
        self._setup_cluster()

    def _watch_runner(self) -> None:
        """A watchdog in a session of its own that outlives a runner killed outright (SIGKILL):
        it waits for the runner's end of a pipe to close, which happens however the runner ends,
        then reaps this run (reap_run), so pods do not keep running until the next run.  After
        a clean cleanup it finds nothing.  A pipe, not a pid: nothing to race with pid reuse."""
        r, w = os.pipe()  # not inheritable: pods never hold the runner's end
        try:
            subprocess.Popen([sys.executable, "-c", "import os, sys\nos.read(0, 1)\n"
                              "from jobset_runtime.local.pods import reap_run\nreap_run(sys.argv[1])",
                              self.run_id], stdin=r, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        finally:
            os.close(r)
        self._watchdog = w

    def _setup_cluster(self) -> None:
        self._add_netns([self.cluster_ns])
        self._cluster_made = True
        # Pods send everything through the gateway, which routes between them (see
        # create()); it must not tell them to go direct instead.
        setns_thread_call(self.cluster_netns_path, lambda: _sysctls({
            "net/ipv4/ip_forward": "1", "net/ipv4/conf/all/send_redirects": "0",
            "net/ipv4/conf/default/send_redirects": "0", "net/ipv6/conf/all/forwarding": "1"}))
        # nodad: an IPv6 address is usable at once, not after duplicate address detection.
        addresses = [f"addr add {NETWORKS[f][1]}/{NETWORKS[f][0].prefixlen} dev br0" + (" nodad" if f == "ipv6" else "")
                     for f in self.families]
        self._ip_batch(self.cluster_ns, "\n".join([
            "link set lo up",
            # A fixed address: a bridge without one takes the lowest MAC of its ports and
            # changes it when that port leaves, which leaves every pod's ARP entry for
            # the gateway (and so the DNS server) pointing nowhere for half a minute.
            f"link add br0 address {BRIDGE_MAC} type bridge",
            *addresses,
            "link set br0 up",
        ]) + "\n")

    @property
    def cluster_netns_path(self) -> str:
        return self.netns_path(self.cluster_ns)

    def netns_path(self, ns: str) -> str:
        return os.path.join(self.netns_dir, ns)

    # How namespaces are made, named and entered: `ip netns` here, nsfs files
    # of our own in RootlessNetwork.
    def _add_netns(self, names) -> None:
        _run_ip(["-batch", "-"], stdin="".join(f"netns add {ns}\n" for ns in names))

    def _del_netns(self, names) -> None:
        subprocess.run(["ip", "-force", "-batch", "-"], input="".join(f"netns del {n}\n" for n in names),
                       capture_output=True, text=True)

    def _ip_cmd(self, ns: str) -> list:
        """An `ip` command line that acts inside namespace `ns`."""
        return ["ip", "-n", ns]

    def _ip_batch(self, ns: str, script: str) -> None:
        r = subprocess.run([*self._ip_cmd(ns), "-batch", "-"], input=script, capture_output=True, text=True)
        if r.returncode != 0:
            raise OSError(f"ip -batch in {ns}: {r.stderr.strip() or r.stdout.strip()}")

    def _ref(self, ns: str) -> str:
        """How `ip link ... netns X` names namespace `ns`."""
        return ns

    def dns_address(self) -> tuple[str, int]:
        return NETWORKS[self.families[0]][1], 53

    def next_ip(self) -> str:
        """The next pod's primary address (pod_ips() gives all of a dual-stack pod's)."""
        with self._lock:
            self._seq += 1
            # .0 is the network, .1 the gateway: pods from .2 on, never reused in a run.
            return str(NETWORKS[self.families[0]][0].network_address + 1 + self._seq)

    def pod_ips(self, ip: str) -> tuple[str, ...]:
        """Every address of the pod whose primary address is `ip`, primary first (status.podIPs)."""
        n = _offset(ip)
        return tuple(str(NETWORKS[f][0].network_address + n) for f in self.families)

    def create(self, slots: list) -> None:
        """Make the namespaces for `slots` = [(ns name, ip)] at once: one `ip` per batch,
        plus one per pod to configure its side (an interface's addresses go when it
        moves between namespaces, so they are set from inside).

        Every ARP entry is a fixed one: the kernel's neighbour table holds 1,024
        learned entries across *all* namespaces (gc_thresh3, a host-wide setting) and
        drops packets past that ("neighbor table overflow"), which a JobSet of a
        thousand pods would reach.  Entries set `permanent` do not count.  So each pod
        has a /32 address and one neighbour, the gateway; the gateway knows every pod's
        MAC (derived from its IP) and routes between them."""
        if not slots:
            return
        self._add_netns([ns for ns, _ in slots])
        with self._lock:
            self._made.extend(ns for ns, _ in slots)
        lines = []
        for ns, ip in slots:
            host_if = "v" + ns.rsplit("-", 1)[1]
            mtu = f" mtu {self.mtu}" if self.mtu else ""
            lines.append(f"link add {host_if}{mtu} type veth peer name eth0{mtu} address {pod_mac(ip)} "
                         f"netns {self._ref(ns)}")
            lines.append(f"link set {host_if} master br{self._bridge_for(ns, lines)} up")
            lines += [f"neigh replace {a} lladdr {pod_mac(ip)} dev br0 nud permanent" for a in self.pod_ips(ip)]
        self._ip_batch(self.cluster_ns, "\n".join(lines) + "\n")
        procs = []
        for ns, ip in slots:
            script = "link set lo up\n"
            for family, addr in zip(self.families, self.pod_ips(ip)):
                script += f"addr add {addr}/128 dev eth0 nodad\n" if family == "ipv6" else f"addr add {addr}/32 dev eth0\n"
            script += "link set eth0 up\n"
            for family in self.families:
                gateway = NETWORKS[family][1]
                script += (f"route add {gateway} dev eth0 scope link\nroute add default via {gateway} dev eth0\n"
                           f"neigh replace {gateway} lladdr {BRIDGE_MAC} dev eth0 nud permanent\n")
            p = subprocess.Popen([*self._ip_cmd(ns), "-batch", "-"], stdin=subprocess.PIPE,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            procs.append((p, script, ns))
        errors = []
        for p, script, ns in procs:
            _, err = p.communicate(script)
            if p.returncode != 0:
                errors.append(f"{ns}: {err.strip()}")
        if errors:
            raise OSError("configuring pod network namespaces failed: " + "; ".join(errors[:3]))

    def _bridge_for(self, ns: str, lines: list) -> int:
        """The bridge with a free port for pod `ns`; a new one (its `ip` lines added to
        `lines`) when all are full.  Ports come back when pods are released."""
        with self._lock:
            # Bridge i > 0 spends one of its ports on its link to br0.
            free = [i for i, n in enumerate(self._ports) if n < PORTS_PER_BRIDGE - (i > 0)]
            if free:
                i = free[0]
            else:
                i = len(self._ports)
                if PORTS_PER_BRIDGE + i > BRIDGE_MAX_PORTS:
                    raise OSError(f"{sum(self._ports):,} pods at once fill the local network's bridges; "
                                  "run a smaller JobSet")
                lines += [f"link add br{i} type bridge", f"link set br{i} up",
                          f"link add up{i} type veth peer name dn{i}",
                          f"link set up{i} master br0 up", f"link set dn{i} master br{i} up"]
                self._ports.append(0)
            self._ports[i] += 1
            self._bridge_of[ns] = i
            return i

    def new_slot(self) -> tuple[str, str]:
        with self._lock:
            n = self._seq + 1
        ip = self.next_ip()
        return f"{self.cluster_ns}-{n}", ip

    def write_etc(self, ns: str, hosts: str, resolv: str) -> None:
        d = os.path.join(self.etc_dir, ns)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "hosts"), "w") as f:
            f.write(hosts)
        with open(os.path.join(d, "resolv.conf"), "w") as f:
            f.write(resolv)

    def argv(self, ns: str, hostname: str, workdir: str, mounts: list, command: list) -> list:
        flat = []
        for src, dst, mode in mounts:
            flat += [src, dst, mode]
        return ["ip", "netns", "exec", ns, "unshare", "--uts", "--", "/bin/sh", "-c", SHIM, "shim",
                hostname, workdir or "", *flat, "--", *command]

    # --- teardown ------------------------------------------------------------
    def ns_inodes(self, names) -> dict:
        out = {}
        for ns in names:
            try:
                out[os.stat(self.netns_path(ns)).st_ino] = ns
            except OSError:
                pass
        return out

    def pids_in(self, names) -> dict:
        """{netns name: [pids]} for processes inside those namespaces (one /proc scan)."""
        inodes = self.ns_inodes(names)
        found = {}
        if not inodes:
            return found
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                st = os.stat(f"/proc/{entry}/ns/net")
            except OSError:
                continue
            ns = inodes.get(st.st_ino)
            if ns is not None:
                found.setdefault(ns, []).append(int(entry))
        return found

    def kill_all_in(self, names) -> None:
        for pids in self.pids_in(names).values():
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

    def release(self, names) -> None:
        """Delete pod namespaces (their veths go with them) and their /etc/netns files."""
        names = [n for n in names if n in self._made]
        if not names:
            return
        self.kill_all_in(names)
        self._del_netns(names)
        with self._lock:
            self._made = [n for n in self._made if n not in names]
            for n in names:
                if n in self._bridge_of:
                    self._ports[self._bridge_of.pop(n)] -= 1
        for n in names:
            shutil.rmtree(os.path.join(self.etc_dir, n), ignore_errors=True)

    def cleanup(self) -> None:
        self._cleanup()
        w, self._watchdog = getattr(self, "_watchdog", None), None
        if w is not None:
            os.close(w)  # all clean: the watchdog wakes, finds nothing and exits

    def _cleanup(self) -> None:
        names = list(self._made) + ([self.cluster_ns] if self._cluster_made else [])
        if names:
            # Twice: a process may fork between the scan and the kill.
            for _ in range(2):
                self.kill_all_in(names)
        self.release(list(self._made))
        if self._cluster_made:
            subprocess.run(["ip", "netns", "del", self.cluster_ns], capture_output=True)
            self._cluster_made = False
        # Anything of this run that an interrupted call left behind.
        try:
            for n in os.listdir(NETNS_DIR):
                if n == self.cluster_ns or n.startswith(self.cluster_ns + "-"):
                    subprocess.run(["ip", "netns", "del", n], capture_output=True)
        except OSError:
            pass
        try:
            for n in os.listdir(ETC_NETNS):
                if n.startswith(self.cluster_ns + "-"):
                    shutil.rmtree(os.path.join(ETC_NETNS, n), ignore_errors=True)
            if not os.listdir(ETC_NETNS):
                os.rmdir(ETC_NETNS)
        except OSError:
            pass


class RootlessNetwork(Network):
    """The netns design inside the user namespace the runner runs in (see the module
    docstring): namespaces are nsfs files under `state_dir`, a tmpfs of this mount
    namespace, so nothing of them is ever written to the host's filesystem."""

    mode = "rootless"

    def __init__(self, run_id: str, state_dir: str, ip_family: str = "ipv4"):
        super().__init__(run_id, ip_family)
        self.state_dir = state_dir
        self.netns_dir = os.path.join(state_dir, "netns")
        self.etc_dir = os.path.join(state_dir, "etc")
        self._mounted = False

    def setup(self) -> None:
        # No reap_stale(): a killed rootless run leaves nothing (its PID namespace went with it).
        _mount("tmpfs", self.state_dir, "tmpfs", 0, "mode=0700")
        self._mounted = True
        os.mkdir(self.netns_dir)
        os.mkdir(self.etc_dir)
        self._setup_cluster()

    def _add_netns(self, names) -> None:
        procs = []
        for ns in names:
            path = self.netns_path(ns)
            open(path, "x").close()
            procs.append((ns, subprocess.Popen(["unshare", f"--net={path}", "true"], stdin=subprocess.DEVNULL,
                                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)))
        errors = []
        for ns, p in procs:
            _, err = p.communicate()
            if p.returncode != 0:
                errors.append(f"{ns}: {err.strip()}")
        if errors:
            raise OSError("creating network namespaces failed: " + "; ".join(errors[:3]))

    def _del_netns(self, names) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        for ns in names:
            path = self.netns_path(ns)
            libc.umount2(path.encode(), MNT_DETACH)
            try:
                os.unlink(path)
            except OSError:
                pass

    def _ip_cmd(self, ns: str) -> list:
        # `ip -n` only takes names under /run/netns; nsenter takes a path.
        return ["nsenter", f"--net={self.netns_path(ns)}", "ip"]

    def _ref(self, ns: str) -> str:
        return self.netns_path(ns)  # `ip link ... netns` opens a name with a slash as a path

    def argv(self, ns: str, hostname: str, workdir: str, mounts: list, command: list) -> list:
        # What `ip netns exec` does for netns mode (its /etc binds, sysfs), done by SHIM.
        etc = os.path.join(self.etc_dir, ns)
        steps = [(os.path.join(etc, "hosts"), contract.HOSTS_FILE, "rw"),
                 (os.path.join(etc, "resolv.conf"), contract.RESOLV_CONF, "rw"),
                 ("-", "/sys", "sys"), *mounts]
        flat = []
        for src, dst, mode in steps:
            flat += [src, dst, mode]
        return ["nsenter", f"--net={self.netns_path(ns)}", "unshare", "--mount", "--uts", "--",
                "/bin/sh", "-c", SHIM, "shim", hostname, workdir or "", *flat, "--", *command]

    def cleanup(self) -> None:
        names = list(self._made) + ([self.cluster_ns] if self._cluster_made else [])
        for _ in range(2 if names else 0):
            self.kill_all_in(names)
        self.release(list(self._made))
        if self._cluster_made:
            self._del_netns([self.cluster_ns])
            self._cluster_made = False
        if self._mounted:
            ctypes.CDLL(None, use_errno=True).umount2(self.state_dir.encode(), MNT_DETACH)
            self._mounted = False


def _mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(source.encode(), target.encode(), fstype.encode(), ctypes.c_ulong(flags), data.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype} on {target}: {os.strerror(err)}")


def rootless_available() -> tuple[bool, str]:
    """(usable, why not): unprivileged user namespaces in which this user can make
    network and mount namespaces, and the iproute2/util-linux tools."""
    for tool in ("ip", "unshare", "nsenter"):
        if shutil.which(tool) is None:
            return False, f"the `{tool}` tool is missing (iproute2, util-linux)"
    for path, why in (("/proc/sys/kernel/unprivileged_userns_clone", "kernel.unprivileged_userns_clone is 0"),
                      ("/proc/sys/user/max_user_namespaces", "user.max_user_namespaces is 0")):
        try:
            with open(path) as f:
                if f.read().strip() == "0":
                    return False, why
        except OSError:
            pass
    try:
        r = subprocess.run(["unshare", *USERNS_FLAGS, "--net", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"unshare failed: {e}"
    if r.returncode != 0:
        return False, f"user namespaces are not allowed here: {r.stderr.decode(errors='replace').strip()}"
    return True, ""


def userns_argv(inner: list) -> list:
    """The command that runs `inner` as root of a new user namespace (the invoking
    user's uid outside) with its own mount and PID namespaces, so that its death,
    however it comes, ends every process it started.  Where the kernel refuses the
    PID namespace's /proc (a container that masks parts of its own), it goes without."""
    pid = ["--pid", "--fork", "--mount-proc", "--kill-child"]
    r = subprocess.run(["unshare", *USERNS_FLAGS, *pid, "true"], capture_output=True)
    return ["unshare", *USERNS_FLAGS, *(pid if r.returncode == 0 else ["--fork", "--kill-child"]), "--", *inner]


class Loopback:
    """No namespaces: a 127.x address per pod, DNS on 127.0.0.1."""

    mode = "loopback"
    namespaced = False

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.families = ("ipv4",)
        self._seq = 1

    def setup(self) -> None:
        pass

    def dns_address(self) -> tuple[str, int]:
        return "127.0.0.1", 0

    def new_slot(self) -> tuple[str, str]:
        self._seq += 1
        return "", str(ipaddress.ip_address(LOOPBACK_BASE + self._seq))

    def pod_ips(self, ip: str) -> tuple[str, ...]:
        return (ip,)

    def create(self, slots) -> None:
        pass

    def release(self, names) -> None:
        pass

    def cleanup(self) -> None:
        pass
