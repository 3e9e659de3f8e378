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

from jobset_runtime import contract  # noqa: E402
from jobset_runtime import manifests  # noqa: E402
from jobset_runtime.manifests import cli, validate  # noqa: E402

ARGS = dict(name="llm", image="us-docker.pkg.dev/p/train:1", command=["python", "train.py"], slices=199,
            hosts_per_slice=64, accelerator="tpu-v5p-slice", topology="4x8x8")


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser()
    default_crd = os.environ.get(contract.JOBSET_CRD_ENV) or str(
        Path(__file__).resolve().parents[2] / "shared" / "jobset" / "jobset-crd.yaml")
    parser.add_argument("--crd", default=default_crd)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
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

    rows = [
        ("baseline: yaml.safe_dump of the JobSet", best(lambda: yaml.safe_dump_all(docs, sort_keys=False), args.repeat)),
        ("generate + self-check (no CRD)", best(lambda: manifests.tpu_multislice(**ARGS), args.repeat)),
    ]
    if crd is not None:
        rows.append(("validate: defaults, CRD schema + CEL, webhook", best(lambda: validate.document_issues(docs, crd), args.repeat)))
        rows.append(("loading the CRD file (10k lines of YAML)", best(lambda: validate.load_crd(args.crd), 3)))
    rows.append(("YAML output (C dumper if present)", best(lambda: cli.dump_yaml(docs), args.repeat)))
    rows.append((f"whole CLI in-process{' (CRD load included)' if crd else ''}", best(whole_cli, max(3, args.repeat // 4))))
    base = rows[0][1]
    print(f"199 x 64 = {199 * 64} pods, one ReplicatedJob; best of {args.repeat}")
    for label, secs in rows:
        print(f"  {label:<48} {secs * 1e3:8.2f} ms  {secs / base:6.2f}x baseline")
    if crd is None:
        print(f"  (no CRD at {args.crd}: schema validation not measured)")


if __name__ == "__main__":
    main()
