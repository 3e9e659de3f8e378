"""TPU generations and slice shapes: which topologies exist, and how many hosts each takes.

Pure.  One name (`v5p-256`, the form GKE and xpk use) or the GKE node labels
(accelerator + topology) determine a slice's shape: chips, chips per host, hosts.
`resolve()` fills what the user left out and checks what they gave against each
other, so a JobSet never waits for nodes that no TPU slice has.

The number in a type name counts TensorCores on v4, v5p and TPU7x (two per chip) and
chips on v5e and v6e (one core per chip): `v5p-256` is 128 chips, `v5litepod-256` 256.

Sources (facts only, checked against each other):
  - xpk (AI-Hypercomputer/xpk) src/xpk/core/system_characteristics.py: per generation the
    GKE accelerator label, TensorCores per chip, machine type (4 chips per VM for multi-host
    slices), supported topologies (`generate_tpu_topologies`: 2x2x1, 2x2x2, 2x2x4, 2x4x4, then
    every AxBxC of multiples of 4 up to a number of 4x4x4 cubes; sorted A<=B<=C except v4),
    and the type name `<prefix>-<chips x cores per chip>`.
  - Cloud TPU docs, "TPU v5p" (cloud.google.com/tpu/docs/v5p): topology / cores / chips /
    hosts table (e.g. 4x4x4 = 128 cores, 64 chips, 16 hosts), "v5p-32 is 32 TensorCores
    (16 chips)".
  - GKE docs, "Plan TPUs in GKE" (cloud.google.com/kubernetes-engine/docs/concepts/plan-tpus)
    and "Deploy TPU Multislice" (.../how-to/tpu-multislice): the label values
    tpu-v4-podslice, tpu-v5-lite-podslice, tpu-v5p-slice, tpu-v6e-slice; Multislice runs on
    multi-host slices only (not on a single-host 2x2x1 or 2x2).
  - GKE docs, "Ironwood (TPU7x) in GKE" (.../concepts/tpu-ironwood): TPU7x's multi-host node
    pools take their shape from a workload policy rather than --tpu-topology; its label and
    numbers as in xpk (tpu7x, 2 cores per chip, 4 chips per VM).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import ConfigError

TWO_D = 2
THREE_D = 3
# xpk's fixed small 3D shapes below one 4x4x4 cube.
_SMALL_3D = ("2x2x1", "2x2x2", "2x2x4", "2x4x4")
# The 2D shapes of v5e and v6e (xpk; GKE's tables list the same).
_TOPOLOGIES_2D = ("1x1", "2x2", "2x4", "4x4", "4x8", "8x8", "8x16", "16x16")
MAX_DIM = 256  # xpk generate_tpu_topologies: each dimension 4..256
MULTI_HOST_CHIPS = 4  # chips per VM on every multi-host TPU machine type (ct4p/ct5p/ct5lp/ct6e-...-4t, tpu7x-standard-4t)


@dataclass(frozen=True)
class Generation:
    prefix: str              # the type name's prefix: v5p in v5p-256
    accelerator: str         # GKE node label cloud.google.com/gke-tpu-accelerator
    cores_per_chip: int      # TensorCores; the type name counts these
    dims: int                # 2 (v5e, v6e) or 3
    max_cubes: int = 0       # 3D: the largest slice in 4x4x4 cubes
    sorted_dims: bool = True  # 3D: topology written A<=B<=C (all but v4 in xpk)
    aliases: tuple = ()      # other prefixes people write (v5e for v5litepod)

    @property
    def counts(self) -> str:
        return "TensorCores" if self.cores_per_chip > 1 else "chips"

    def type_name(self, chips: int) -> str:
        return f"{self.prefix}-{chips * self.cores_per_chip}"


GENERATIONS = (
    Generation("v4", "tpu-v4-podslice", cores_per_chip=2, dims=THREE_D, max_cubes=64, sorted_dims=False),
    Generation("v5litepod", "tpu-v5-lite-podslice", cores_per_chip=1, dims=TWO_D, aliases=("v5e",)),
    Generation("v5p", "tpu-v5p-slice", cores_per_chip=2, dims=THREE_D, max_cubes=140),
    Generation("v6e", "tpu-v6e-slice", cores_per_chip=1, dims=TWO_D),
    Generation("tpu7x", "tpu7x", cores_per_chip=2, dims=THREE_D, max_cubes=144, aliases=("ironwood",)),
)
_BY_PREFIX = {p: g for g in GENERATIONS for p in (g.prefix, *g.aliases)}
_BY_ACCELERATOR = {g.accelerator: g for g in GENERATIONS}


@dataclass(frozen=True)
class Shape:
    """One slice: its generation, topology and how its chips spread over hosts."""

    generation: Generation
    topology: str
    chips_per_host: int

    @property
    def chips(self) -> int:
        return chips_of(self.topology)

    @property
    def hosts(self) -> int:
        return self.chips // self.chips_per_host

    @property
    def type_name(self) -> str:
        return self.generation.type_name(self.chips)

    def describe(self) -> str:
        return (f"a {self.generation.prefix} {self.topology} slice ({self.type_name}) has {self.chips} chips "
                f"on {self.hosts} host{'s' if self.hosts != 1 else ''} of {self.chips_per_host}")


def parse_topology(topology: str) -> tuple:
    try:
        dims = tuple(int(d) for d in topology.lower().split("x"))
    except ValueError:
        dims = ()
    if not dims or any(d < 1 for d in dims):
        raise ConfigError(f"--topology {topology!r}: write the chip grid as AxB or AxBxC, e.g. 2x4 or 4x4x8")
    return dims


def chips_of(topology: str) -> int:
    return math.prod(parse_topology(topology))


def topology_problem(gen: Generation, topology: str) -> str | None:
    """Why `topology` is not a slice of `gen`, or None when it is one."""
    dims = parse_topology(topology)
    if len(dims) != gen.dims:
        return f"{gen.prefix} topologies have {gen.dims} dimensions ({_examples(gen)})"
    if gen.dims == TWO_D:
        return None if topology in _TOPOLOGIES_2D else f"{gen.prefix} slices are {', '.join(_TOPOLOGIES_2D)}"
    written = "x".join(map(str, dims))
    if written in _SMALL_3D:
        return None
    small = next((t for t in _SMALL_3D if sorted(parse_topology(t)) == sorted(dims)), None)
    if small:
        return f"{gen.prefix} writes this shape {small}"
    if max(dims) > MAX_DIM:
        return f"no {gen.prefix} slice is longer than {MAX_DIM} chips in any dimension"
    if any(d % 4 for d in dims):
        return f"{gen.prefix} slices are {', '.join(_SMALL_3D)} or whole 4x4x4 cubes (every dimension a multiple of 4)"
    cubes = math.prod(d // 4 for d in dims)
    if cubes > gen.max_cubes:
        return f"{cubes} cubes of 4x4x4; the largest {gen.prefix} slice has {gen.max_cubes}"
    if gen.sorted_dims and list(dims) != sorted(dims):
        return f"{gen.prefix} writes the smallest dimension first: {'x'.join(map(str, sorted(dims)))}"
    return None


def _examples(gen: Generation) -> str:
    return ", ".join(_TOPOLOGIES_2D[1:4]) if gen.dims == TWO_D else ", ".join(_SMALL_3D[:2] + ("4x4x4", "4x4x8"))


def topologies_with(gen: Generation, chips: int) -> list:
    """The valid topologies of `chips` chips, most cube-like first (the default for a type name)."""
    if gen.dims == TWO_D:
        return [t for t in _TOPOLOGIES_2D if chips_of(t) == chips]
    found = [t for t in _SMALL_3D if chips_of(t) == chips]
    if chips % 64 == 0:
        cubes = chips // 64
        side = MAX_DIM // 4
        for a in range(1, min(cubes, side) + 1):
            for b in range(a, min(cubes, side) + 1):
                c, rest = divmod(cubes, a * b)
                if not rest and c >= b:
                    found.append(f"{4 * a}x{4 * b}x{4 * c}")
        found = [t for t in found if topology_problem(gen, t) is None]
    return sorted(found, key=lambda t: (max(parse_topology(t)), -min(parse_topology(t)), parse_topology(t)))


def host_chip_choices(gen: Generation, topology: str) -> tuple:
    """Chips per host a slice of this topology can have; the first is the multi-host default.

    One-chip slices sit on a one-chip VM; v5e and v6e also come as a single 8-chip host
    (ct5lp-hightpu-8t, ct6e-standard-8t) for 2x4, which Multislice cannot use."""
    chips = chips_of(topology)
    if chips == 1:
        return (1,)
    if gen.dims == TWO_D and chips == 8:
        return (MULTI_HOST_CHIPS, 8)
    return (MULTI_HOST_CHIPS,)


def generation_of_accelerator(accelerator: str) -> Generation:
    gen = _BY_ACCELERATOR.get(accelerator)
    if gen is None:
        raise ConfigError(f"--accelerator {accelerator!r}: not a GKE TPU accelerator label value; known: "
                          f"{', '.join(_BY_ACCELERATOR)} (or give --tpu-type, e.g. v5p-256)")
    return gen


def parse_type(tpu_type: str) -> tuple:
    """`v5p-256` -> (v5p, topology); also `v5p-4x4x8` (xpk's form naming the topology)."""
    prefix, sep, size = tpu_type.strip().lower().rpartition("-")
    gen = _BY_PREFIX.get(prefix)
    if not sep or gen is None:
        raise ConfigError(f"--tpu-type {tpu_type!r}: write GENERATION-SIZE, e.g. v5p-256, v5litepod-16, v6e-64, "
                          f"v4-32; generations: {', '.join(_BY_PREFIX)}")
    if "x" in size:
        problem = topology_problem(gen, size)
        if problem:
            raise ConfigError(f"--tpu-type {tpu_type}: {problem}")
        return gen, size
    if not size.isdigit() or int(size) < 1:
        raise ConfigError(f"--tpu-type {tpu_type!r}: the size after the dash is a number of {gen.counts}")
    count = int(size)
    chips, rest = divmod(count, gen.cores_per_chip)
    choices = topologies_with(gen, chips) if not rest else []
    if not choices:
        near = _near_sizes(gen, chips)
        raise ConfigError(f"--tpu-type {tpu_type}: no {gen.prefix} slice has {count} {gen.counts} "
                          f"(the number counts {gen.counts}); nearest: {', '.join(near)}")
    return gen, choices[0]


def _near_sizes(gen: Generation, chips: int) -> list:
    """The type names just below and above `chips` chips."""
    sizes = sorted({chips_of(t) for t in (_TOPOLOGIES_2D if gen.dims == TWO_D else _SMALL_3D)}
                   | ({64 * n for n in range(1, gen.max_cubes + 1)} if gen.dims == THREE_D else set()))
    below = next((s for s in reversed(sizes) if s < chips and topologies_with(gen, s)), None)
    above = next((s for s in sizes if s > chips and topologies_with(gen, s)), None)
    return [gen.type_name(s) for s in (below, above) if s is not None]


def resolve(*, tpu_type: str | None = None, accelerator: str | None = None, topology: str | None = None,
            chips_per_host: int | None = None, hosts_per_slice: int | None = None) -> Shape:
    """The slice shape from whatever the user gave; every value given must agree with the others.

    Exactly one of --tpu-type or --accelerator + --topology is needed; --chips-per-host
    and --hosts-per-slice are then derived, or checked when given."""
    given = _flags(tpu_type=tpu_type, accelerator=accelerator, topology=topology,
                   chips_per_host=chips_per_host, hosts_per_slice=hosts_per_slice)
    if tpu_type:
        gen, type_topology = parse_type(tpu_type)
        if accelerator and accelerator != gen.accelerator:
            raise ConfigError(f"{given}: {tpu_type} runs on nodes labelled {gen.accelerator}, not {accelerator}: "
                              f"use --accelerator {gen.accelerator} or drop it")
        if topology:
            if "x" in tpu_type.rpartition("-")[2] and topology != type_topology:
                raise ConfigError(f"{given}: {tpu_type} is topology {type_topology}: use --topology "
                                  f"{type_topology} or drop it")
            problem = topology_problem(gen, topology)
            if problem:
                raise ConfigError(f"{given}: --topology {topology}: {problem}")
            if chips_of(topology) != chips_of(type_topology):
                raise ConfigError(f"{given}: {tpu_type} has {chips_of(type_topology)} chips, topology {topology} "
                                  f"has {chips_of(topology)}: use --tpu-type {gen.type_name(chips_of(topology))} "
                                  f"or a topology of {chips_of(type_topology)} chips such as {type_topology}")
        else:
            topology = type_topology
    else:
        if not accelerator or not topology:
            missing = " and ".join(f for f, v in (("--accelerator", accelerator), ("--topology", topology)) if not v)
            raise ConfigError(f"{missing} missing: give --tpu-type (e.g. v5p-256), or both --accelerator and "
                              "--topology (the GKE node labels)")
        gen = generation_of_accelerator(accelerator)
        problem = topology_problem(gen, topology)
        if problem:
            raise ConfigError(f"{given}: --topology {topology}: {problem}")
    choices = host_chip_choices(gen, topology)
    if chips_per_host is None:
        if hosts_per_slice is not None:
            # A single 8-chip host is the one case where the host count picks the machine type.
            chips_per_host = next((c for c in choices if chips_of(topology) == c * hosts_per_slice), choices[0])
        else:
            chips_per_host = choices[0]
    elif chips_per_host not in choices:
        right = Shape(gen, topology, choices[0])
        raise ConfigError(f"{given}: {right.describe()}: use --chips-per-host "
                          f"{' or '.join(map(str, choices))}")
    shape = Shape(gen, topology, chips_per_host)
    if hosts_per_slice is not None and hosts_per_slice != shape.hosts:
        fix = f"use --hosts-per-slice {shape.hosts}"
        wanted = hosts_per_slice * chips_per_host
        if topologies_with(gen, wanted):
            fix += f", or --tpu-type {gen.type_name(wanted)} for {hosts_per_slice} hosts"
        raise ConfigError(f"{given}: {shape.describe()}: {fix}")
    return shape


def _flags(**values) -> str:
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in values.items() if v is not None and v != "")
