"""Hostfiles and the settings each MPI implementation really reads.

Pure functions over plain values; `mpi/detect.py` runs `mpirun --version`, and
`files.write_atomic` writes the hostfile.

Formats (REFERENCE.md, MPI):
* Open MPI / PRRTE: `host slots=N`
* MPICH Hydra and Intel MPI: `host:N`

Settings: Open MPI 5 moved its launcher to PRRTE, which ignores the
`OMPI_MCA_orte_*` and `OMPI_MCA_plm_rsh_*` names that Open MPI 4 (ORTE) read;
with the old names every rank silently runs on the launcher
(kubeflow/trainer#4028, mpi-operator#842).  So the names are chosen from the
installed version, never guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from .. import contract
from ..errors import ConfigError, first_few

OPENMPI, MPICH, INTEL = "openmpi", "mpich", "intel"
FAMILIES = (OPENMPI, MPICH, INTEL)


@dataclass(frozen=True)
class Implementation:
    family: str                 # openmpi | mpich | intel
    version: tuple[int, ...]    # (5, 0, 11); () when the output names none

    @property
    def major(self) -> int:
        return self.version[0] if self.version else 0

    @property
    def prrte(self) -> bool:
        """Open MPI >= 5 launches through PRRTE (PRTE_MCA_* names)."""
        return self.family == OPENMPI and self.major >= 5

    def __str__(self) -> str:
        return f"{self.family} {'.'.join(map(str, self.version)) or '(version unknown)'}"


_OMPI = re.compile(r"\(Open MPI\)\s+(\d+(?:\.\d+)*)")
_INTEL = re.compile(r"Intel\(R\) MPI Library.*?Version\s+(\d+(?:\.\d+)*)", re.S)
_HYDRA = re.compile(r"HYDRA build details:.*?Version:\s+(\d+(?:\.\d+)*)", re.S)


def _ver(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def parse_version(output: str, family: str = "auto") -> Implementation:
    """`mpirun --version` output -> Implementation.

    `family` (from --mpi) is checked against the output, never trusted instead of it:
    Open MPI 4 and 5 read different setting names, so the major version must come from
    the mpirun that will run.  ConfigError when the output names no MPI we know, or
    another family than the one asked for.
    """
    if family != "auto" and family not in FAMILIES:
        raise ConfigError(f"unknown MPI {family!r}: use one of auto, {', '.join(FAMILIES)}")
    if m := _OMPI.search(output):
        impl = Implementation(OPENMPI, _ver(m.group(1)))
    # Intel's mpiexec is Hydra-based, so look for it before plain MPICH.
    elif m := _INTEL.search(output):
        impl = Implementation(INTEL, _ver(m.group(1)))
    elif m := _HYDRA.search(output):
        impl = Implementation(MPICH, _ver(m.group(1)))
    elif family in (MPICH, INTEL):
        # Hydra's settings do not depend on its version: a rebranded build is fine.
        return Implementation(family, ())
    else:
        first = output.strip().splitlines()[0][:120] if output.strip() else "(nothing)"
        raise ConfigError(
            f"cannot tell which MPI `mpirun --version` belongs to (it printed {first!r}); "
            "point --mpirun at the mpirun of Open MPI, MPICH or Intel MPI"
            + ("" if family != "auto" else f", or pass --mpi {MPICH}|{INTEL} for a Hydra-based one")
        )
    if family not in ("auto", impl.family):
        raise ConfigError(f"--mpi {family}, but {impl} is what `mpirun --version` reports: "
                          f"pass --mpi {impl.family} (or auto), or point --mpirun at the {family} mpirun")
    return impl


# --- hostfiles ------------------------------------------------------------------

def render(hosts: Iterable[tuple[str, int]], family: str) -> str:
    """One line per host, in the given order (MPI fills hosts in hostfile order).

    An IPv6 address is written bare in an Open MPI hostfile (PRRTE reads it; Open MPI 4's
    ORTE refuses any node name holding a `:`, see naming()).  Hydra's `host:N` cannot hold
    one: MPICH splits the line at its first `:`, and Intel MPI reads a line with more than
    one `:` as a host name alone, so `fd00::2:4` would be another address.  Intel gets the
    address alone when its count is 1 (the launcher then sets the count in I_MPI_PERHOST);
    anything else is refused rather than written wrong.
    """
    if family == OPENMPI:
        return "".join(f"{h} slots={n}\n" for h, n in hosts)
    if family in (MPICH, INTEL):
        lines = []
        for h, n in hosts:
            if ":" not in h:
                lines.append(f"{h}:{n}\n")
            elif family == INTEL and n == 1:
                lines.append(f"{h}\n")
            else:
                fix = ("name the hosts by FQDN, or write each address alone and set I_MPI_PERHOST"
                       if family == INTEL else "name the hosts by IPv4 address or by FQDN")
                raise ConfigError(f"{family} hostfile line for the IPv6 address {h} with {n} slots: Hydra's "
                                  f"`host:N` cannot hold an IPv6 address; {fix}")
        return "".join(lines)
    raise ConfigError(f"unknown MPI {family!r}: use one of {', '.join(FAMILIES)}")


def entries(hosts: Sequence[str], slots: int, addresses: dict[str, str] | None = None) -> list[tuple[str, int]]:
    """(name or address, slots) per host; with `addresses`, each name becomes its resolved IP."""
    if slots < 1:
        raise ConfigError(f"--slots {slots}: every worker needs at least 1 slot")
    if addresses is None:
        return [(h, slots) for h in hosts]
    missing = [h for h in hosts if h not in addresses]
    if missing:
        raise ValueError(f"no address for {missing[:3]}")
    return [(addresses[h], slots) for h in hosts]


# --- IPv6 pods --------------------------------------------------------------------
# What each MPI does with IPv6, as verified with the test wheels on `local run --ip-family ipv6`:
# * Open MPI 5 (PRRTE): IPv6 addresses in the hostfile, its daemons and the TCP BTL over IPv6.
# * Open MPI 4 (ORTE): daemons and TCP BTL over IPv6, but a node name may hold only letters,
#   digits, `.` and `-` (open-mpi/ompi v4.1.x orte/mca/regx/fwd/regx_fwd.c, nidmap_create:
#   "illegal character"): IPv6 hosts are named by FQDN.
# * MPICH (Hydra): IPv4 only.  Every socket of mpiexec and its proxies is made and resolved in
#   one family, AF_INET, which nothing changes (pmodels/mpich src/mpl/src/sock/mpl_sockaddr.c,
#   af_type); its hostfile splits `host:N` at the first `:` (src/pm/hydra/lib/utils/args.c,
#   HYDU_process_mfile_token).  IPv6-only pods cannot run it; dual-stack ones can, over IPv4.
# * Intel MPI (its own Hydra): IPv6 with mpiexec's `-v6` (ssh then gets `-6`); a hostfile line
#   with more than one `:` is a host name alone, so an address goes alone (render) and the
#   count in I_MPI_PERHOST.
HOSTFILE_BY = ("auto", "ip", "fqdn")


@dataclass(frozen=True)
class Naming:
    """How the hostfile names the workers, and what mpirun needs for that."""
    by: str                      # ip | fqdn
    ipv4: bool = False           # the MPI speaks IPv4 only: hand it the workers' IPv4 addresses
    flags: tuple[str, ...] = ()  # mpirun options (Intel's -v6)
    per_host: bool = False       # Intel: IPv6 addresses written alone, the slots in I_MPI_PERHOST


def naming(impl: Implementation, by: str, ipv6: bool, mpirun_args: Sequence[str] = ()) -> Naming:
    """`by`: --hostfile-by (auto: by IP where the MPI can read the address, else by FQDN);
    `ipv6`: the workers' addresses, in the pods' own family, are IPv6."""
    if by not in HOSTFILE_BY:
        raise ConfigError(f"--hostfile-by {by}: use one of {', '.join(HOSTFILE_BY)}")
    if not ipv6 or impl.prrte:
        return Naming("fqdn" if by == "fqdn" else "ip")
    if impl.family == OPENMPI:
        if by == "ip":
            raise ConfigError(f"--hostfile-by ip on IPv6 pods: {impl} refuses a host named by an IPv6 address "
                              "(a node name holding `:`); use --hostfile-by fqdn (what auto, the default, "
                              "does here), or Open MPI 5")
        return Naming("fqdn")
    if impl.family == MPICH:
        return Naming("fqdn" if by == "fqdn" else "ip", ipv4=True)
    flags = () if any(a in ("-v6", "--v6") for a in mpirun_args) else ("-v6",)
    return Naming("fqdn" if by == "fqdn" else "ip", flags=flags, per_host=by != "fqdn")


def ipv4_only_error(impl: Implementation, hosts: Sequence[str]) -> ConfigError:
    """MPICH on pods whose names have no IPv4 address."""
    return ConfigError(
        f"{impl} cannot run here: its process manager (Hydra's mpiexec and proxies) connects over IPv4 "
        f"only, and {first_few(hosts, 3)} {'has' if len(hosts) == 1 else 'have'} no IPv4 address in DNS "
        "(IPv6-only pods, or a single-stack IPv6 headless Service): run the JobSet on IPv4 or dual-stack "
        "pods whose names resolve in both families, or use Open MPI or Intel MPI, which run over IPv6")


# --- settings -------------------------------------------------------------------

def settings(impl: Implementation, hostfile: str, *, agent: str | None = None, agent_args: str | None = None,
             keep_fqdn: bool = False, per_host: int | None = None) -> dict[str, str]:
    """Env vars that point mpirun at the hostfile and the remote-start agent, under the names it reads.

    Env rather than flags, so that a user's own mpirun options still override them.
    The agent and its key exist on the launcher only, so daemons must not start
    other daemons (no tree spawn).
    """
    if impl.family == OPENMPI:
        # The same settings under PRRTE's names (Open MPI 5) or ORTE's (4).
        v = 0 if impl.prrte else 1
        env = {contract.OPENMPI_HOSTFILE_ENV[v]: hostfile}
        if agent:
            env[contract.OPENMPI_AGENT_ENV[v]] = agent
            env[contract.OPENMPI_NO_TREE_SPAWN_ENV[v]] = "1"
        if agent_args:  # PRRTE 5.0.x segfaults on an empty plm_ssh_args
            env[contract.OPENMPI_AGENT_ARGS_ENV[v]] = agent_args
        if keep_fqdn:
            # Open MPI strips domains and merges hosts that then look alike (mpi-operator#733).
            env[contract.OPENMPI_KEEP_FQDN_ENV[v]] = "1"
        return env
    if impl.family == MPICH:
        env = {contract.MPICH_HOST_FILE_ENV: hostfile}
        if agent:
            env[contract.MPICH_LAUNCHER_ENV] = "ssh"
            env[contract.MPICH_LAUNCHER_EXEC_ENV] = agent
        if agent_args:
            env[contract.MPICH_LAUNCHER_EXTRA_ARGS_ENV] = agent_args
        return env
    if impl.family == INTEL:
        env = {contract.INTEL_HOST_FILE_ENV: hostfile}
        if per_host:  # the hostfile's lines cannot say it (IPv6 addresses, naming())
            env[contract.INTEL_PERHOST_ENV] = str(per_host)
        if agent:
            env[contract.INTEL_BOOTSTRAP_ENV] = "ssh"
            env[contract.INTEL_BOOTSTRAP_EXEC_ENV] = agent
            # Intel's hydra_bstrap_proxy starts further proxies through the agent, 16 per
            # level by default (--tree-width 16); 0 makes mpiexec start every one itself.
            env[contract.INTEL_BRANCH_COUNT_ENV] = "0"
        if agent_args:
            env[contract.INTEL_BOOTSTRAP_EXEC_EXTRA_ARGS_ENV] = agent_args
        return env
    raise ConfigError(f"unknown MPI {impl.family!r}: use one of {', '.join(FAMILIES)}")


def root_flags(impl: Implementation, uid: int) -> list[str]:
    """Open MPI refuses to run as root without these; never added for other users."""
    if uid == 0 and impl.family == OPENMPI:
        return ["--allow-run-as-root"]
    return []


def attach_flags(impl: Implementation) -> list[str]:
    """Keep each remote daemon in the session of the agent that started it.

    Without tree spawn, Open MPI 4 and 5 add --daemonize to the daemon's command
    line (ORTE's plm_rsh setup_launch, PRRTE's plm_ssh): orted/prted would leave
    the agent's session, so the worker (or sshd) could neither see it end nor stop
    it, and it would outlive the worker with its ranks.  Open MPI 5 reads this only
    as an option, not from the environment.
    """
    return ["--leave-session-attached"] if impl.family == OPENMPI else []


def launcher_host_flags(impl: Implementation, address: str | None, interface: str | None = None) -> list[str]:
    """How workers reach the launcher.

    Hydra's proxies connect back to `--control-port <launcher hostname>:<port>`;
    a pod's bare hostname does not resolve from other pods (the JobSet subdomain
    is not in the search path), so name the launcher by its FQDN or IP.  Intel's
    mpiexec ignores -localhost for that (its hydra_bstrap_proxy gets
    `--upstream-host <hostname>`) and takes the address of an interface instead.
    PRRTE and ORTE send their daemons IP addresses, so they need nothing.
    """
    if impl.family == MPICH and address:
        return ["-localhost", address]
    if impl.family == INTEL and interface:
        return ["-iface", interface]
    return []
