"""TPU slice shapes: the table against the published numbers, and `manifest tpu-multislice`
filling and checking the accelerator, topology, chips per host and hosts per slice."""

import pytest
import yaml

import manifest_cases as mc
from jobset_runtime import contract, tpu_shapes
from jobset_runtime.errors import ConfigError

# Cloud TPU docs, "TPU v5p" (cloud.google.com/tpu/docs/v5p): topology, cores, chips, hosts.
V5P_DOCS = [("2x2x1", 8, 4, 1), ("2x2x2", 16, 8, 2), ("2x4x4", 64, 32, 8), ("4x4x4", 128, 64, 16),
            ("4x4x8", 256, 128, 32), ("4x8x8", 512, 256, 64), ("8x8x8", 1024, 512, 128),
            ("8x8x16", 2048, 1024, 256), ("8x16x16", 4096, 2048, 512), ("16x16x16", 8192, 4096, 1024),
            ("16x16x24", 12288, 6144, 1536)]


@pytest.mark.parametrize("topology, cores, chips, hosts", V5P_DOCS)
def test_v5p_matches_the_cloud_tpu_table(topology, cores, chips, hosts):
    shape = tpu_shapes.resolve(accelerator="tpu-v5p-slice", topology=topology)
    assert (shape.chips, shape.hosts, shape.type_name) == (chips, hosts, f"v5p-{cores}")
    # and the name alone gives the same slice back
    assert tpu_shapes.resolve(tpu_type=f"v5p-{cores}").topology == topology


@pytest.mark.parametrize("tpu_type, accelerator, topology, chips_per_host, hosts", [
    ("v4-8", "tpu-v4-podslice", "2x2x1", 4, 1),
    ("v4-32", "tpu-v4-podslice", "2x2x4", 4, 4),
    ("v4-128", "tpu-v4-podslice", "4x4x4", 4, 16),
    # v5e and v6e count chips, not cores
    ("v5litepod-16", "tpu-v5-lite-podslice", "4x4", 4, 4),
    ("v5e-256", "tpu-v5-lite-podslice", "16x16", 4, 64),
    ("v5litepod-8", "tpu-v5-lite-podslice", "2x4", 4, 2),
    ("v6e-64", "tpu-v6e-slice", "8x8", 4, 16),
    ("v6e-4", "tpu-v6e-slice", "2x2", 4, 1),
    ("v6e-1", "tpu-v6e-slice", "1x1", 1, 1),
    ("tpu7x-128", "tpu7x", "4x4x4", 4, 16),
    ("v5p-4x4x8", "tpu-v5p-slice", "4x4x8", 4, 32),  # xpk's form with the topology in the name
])
def test_type_names_give_the_shape(tpu_type, accelerator, topology, chips_per_host, hosts):
    shape = tpu_shapes.resolve(tpu_type=tpu_type)
    assert (shape.generation.accelerator, shape.topology, shape.chips_per_host, shape.hosts) == \
        (accelerator, topology, chips_per_host, hosts)


def test_a_single_8_chip_host_is_a_v5e_2x4_too():
    shape = tpu_shapes.resolve(accelerator="tpu-v5-lite-podslice", topology="2x4", hosts_per_slice=1)
    assert (shape.chips_per_host, shape.hosts) == (8, 1)


@pytest.mark.parametrize("kwargs, message", [
    (dict(tpu_type="v5p-100"), "nearest: v5p-64, v5p-128"),
    (dict(tpu_type="v5p-7"), "counts TensorCores"),
    (dict(tpu_type="v5litepod-12"), "nearest: v5litepod-8, v5litepod-16"),
    (dict(tpu_type="v9-8"), "generations: v4"),
    (dict(tpu_type="v5p"), "GENERATION-SIZE"),
    (dict(accelerator="tpu-v5p-slice", topology="4x4x3"), "multiple of 4"),
    (dict(accelerator="tpu-v5p-slice", topology="8x4x4"), "smallest dimension first: 4x4x8"),
    (dict(accelerator="tpu-v5p-slice", topology="1x2x2"), "writes this shape 2x2x1"),
    (dict(accelerator="tpu-v5p-slice", topology="16x16x40"), "160 cubes"),
    (dict(accelerator="tpu-v5p-slice", topology="4x4x260"), "longer than 256"),
    (dict(accelerator="tpu-v5p-slice", topology="4x4"), "3 dimensions"),
    (dict(accelerator="tpu-v6e-slice", topology="4x2"), "v6e slices are 1x1, 2x2, 2x4"),
    (dict(accelerator="tpu-v5p-slice", topology="4xfour"), "AxBxC"),
    (dict(accelerator="nvidia-h100", topology="2x2"), "known: tpu-v4-podslice"),
    (dict(accelerator="tpu-v5p-slice"), "--topology missing"),
    (dict(tpu_type="v5p-256", accelerator="tpu-v6e-slice"), "use --accelerator tpu-v5p-slice"),
    (dict(tpu_type="v5p-256", topology="4x4x4"), "use --tpu-type v5p-128 or a topology of 128 chips such as 4x4x8"),
    (dict(tpu_type="v5p-4x4x8", topology="4x8x4"), "use --topology 4x4x8"),
    (dict(tpu_type="v5p-128", chips_per_host=8), "use --chips-per-host 4"),
    (dict(tpu_type="v5p-256", hosts_per_slice=16), "32 hosts of 4: use --hosts-per-slice 32, or --tpu-type v5p-128"),
])
def test_bad_shapes_name_the_fix(kwargs, message):
    with pytest.raises(ConfigError) as e:
        tpu_shapes.resolve(**kwargs)
    assert message in str(e.value)


def test_v4_takes_any_order():
    assert tpu_shapes.resolve(accelerator="tpu-v4-podslice", topology="8x4x4").hosts == 32


def test_every_generation_default_topology_is_valid_and_round_trips():
    for gen in tpu_shapes.GENERATIONS:
        sizes = [1, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
        for chips in sizes:
            for topology in tpu_shapes.topologies_with(gen, chips):
                assert tpu_shapes.topology_problem(gen, topology) is None
                assert tpu_shapes.chips_of(topology) == chips
                name = gen.type_name(chips)
                assert tpu_shapes.resolve(tpu_type=name).chips == chips


def _slice_spec(out):
    (doc,) = [d for d in yaml.safe_load_all(out) if d["kind"] == contract.JOBSET_KIND]
    (rjob,) = doc["spec"]["replicatedJobs"]
    pod = rjob["template"]["spec"]["template"]["spec"]
    return rjob, pod


BASE = ["tpu-multislice", "--name", "ms", "--image", "i", "--slices", "2"]
NO_CRD = {contract.JOBSET_CRD_ENV: ""}


def test_cli_tpu_type_fills_the_manifest():
    code, out, err = mc.run_cli([*BASE, "--tpu-type", "v5p-256", "--", "python", "t.py"], env=NO_CRD)
    assert code == 0, err
    rjob, pod = _slice_spec(out)
    assert (rjob["replicas"], rjob["template"]["spec"]["completions"], rjob["template"]["spec"]["parallelism"]) == \
        (2, 32, 32)
    assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": "tpu-v5p-slice",
                                   "cloud.google.com/gke-tpu-topology": "4x4x8"}
    assert pod["containers"][0]["resources"]["limits"]["google.com/tpu"] == 4


def test_cli_explicit_values_that_agree_are_accepted():
    code, out, err = mc.run_cli([*BASE, "--tpu-type", "v5p-128", "--accelerator", "tpu-v5p-slice", "--topology",
                                 "4x4x4", "--hosts-per-slice", "16", "--chips-per-host", "4", "--", "x"], env=NO_CRD)
    assert code == 0, err
    assert _slice_spec(out)[0]["template"]["spec"]["completions"] == 16


def test_cli_the_issue_case_exits_2_with_the_right_numbers():
    """A v5p 4x4x4 slice is 64 chips on 16 hosts: 64 hosts would never be scheduled."""
    code, out, err = mc.run_cli([*BASE, "--hosts-per-slice", "64", "--accelerator", "tpu-v5p-slice",
                                 "--topology", "4x4x4", "--", "x"], env=NO_CRD)
    assert code == contract.EXIT_CONFIG and out == ""
    assert "Traceback" not in err
    assert "64 chips on 16 hosts of 4" in err and "--hosts-per-slice 16" in err


def test_cli_multislice_needs_multi_host_slices():
    code, out, err = mc.run_cli([*BASE, "--tpu-type", "v5p-8", "--", "x"], env=NO_CRD)
    assert code == contract.EXIT_CONFIG and out == ""
    assert "2 or more hosts" in err and "v5p-16" in err
    code, out, err = mc.run_cli([*BASE[:-1], "1", "--tpu-type", "v5p-8", "--", "x"], env=NO_CRD)
    assert code == 0, err


def test_cli_without_a_shape_says_what_to_give():
    code, out, err = mc.run_cli([*BASE, "--", "x"], env=NO_CRD)
    assert code == contract.EXIT_CONFIG and out == ""
    assert "--tpu-type" in err and "Traceback" not in err
