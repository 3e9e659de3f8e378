"""Generate and validate the 199-slice x 64-host multislice manifest.

Prints the time of each step beside a baseline measured in the same run: dumping
the same document with yaml.safe_dump alone (what any generator has to pay).

    python bench/manifest_generate.py [--crd CRD.yaml] [--repeat N]
"""

import argparse
import io
import os
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import Results, Stat  # noqa: E402

from jobset_runtime import contract  # noqa: E402
from jobset_runtime import manifests  # noqa: E402
from jobset_runtime.manifests import cli, validate  # noqa: E402

ARGS = dict(name="llm", image="us-docker.pkg.dev/p/train:1", command=["python", "train.py"], slices=199,
            hosts_per_slice=64, accelerator="tpu-v5p-slice", topology="4x8x8")


def timed(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return Stat.median(times, "s")


def main():
    parser = argparse.ArgumentParser()
    default_crd = os.environ.get(contract.JOBSET_CRD_ENV) or str(
        Path(__file__).resolve().parents[2] / "shared" / "jobset" / "jobset-crd.yaml")
    parser.add_argument("--crd", default=default_crd)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    res = Results(__file__)
    crd = validate.load_crd(args.crd) if Path(args.crd).is_file() else None

    docs = manifests.tpu_multislice(**ARGS)
    argv = ["tpu-multislice", "--name", ARGS["name"], "--image", ARGS["image"], "--slices", "199",
            "--hosts-per-slice", "64", "--accelerator", ARGS["accelerator"], "--topology", ARGS["topology"],
            "--", *ARGS["command"]]
    if crd is not None:
        argv[argv.index("--"):argv.index("--")] = ["--crd", args.crd]

    def whole_cli():
        with redirect_stdout(io.StringIO()):
            assert cli.main(argv) == 0

    base = timed(lambda: yaml.safe_dump_all(docs, sort_keys=False), args.repeat)
    rows = [("manifest.generate", "generate + self-check (no CRD)", timed(lambda: manifests.tpu_multislice(**ARGS), args.repeat))]
    if crd is not None:
        rows.append(("manifest.crd_validate", "validate: defaults, CRD schema + CEL, webhook", timed(lambda: validate.document_issues(docs, crd), args.repeat)))
        rows.append(("manifest.crd_load", "loading the CRD file (10k lines of YAML)", timed(lambda: validate.load_crd(args.crd), 3)))
    rows.append(("manifest.yaml_output", "YAML output (C dumper if present)", timed(lambda: cli.dump_yaml(docs), args.repeat)))
    rows.append(("manifest.cli", f"whole CLI in-process{', CRD load included' if crd else ''}",
                 timed(whole_cli, max(3, args.repeat // 4))))
    print(f"199 x 64 = {199 * 64} pods, one ReplicatedJob")
    for name, label, stat in rows:
        res.add(name, f"the 199 x 64 multislice manifest: {label}", stat, baseline=base,
                baseline_what="`yaml.safe_dump` of the same JobSet", goal="well under 1 s" if name == "manifest.cli" else "")
    if crd is None:
        res.note(f"no CRD at {args.crd}: schema validation not measured")
    res.write()


if __name__ == "__main__":
    main()
