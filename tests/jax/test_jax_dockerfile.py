"""What can be checked of Dockerfile.tpu without docker: what it copies exists, the entrypoint is ours."""

import json
import re
import shlex
from pathlib import Path

from jobset_runtime.cli import _run_parser

ROOT = Path(__file__).resolve().parents[2]


def instructions():
    """(INSTRUCTION, argument text) per logical line, continuation lines joined."""
    out, pending = [], ""
    for line in (ROOT / "Dockerfile.tpu").read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    return out


def exec_form(text):
    value = json.loads(text)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"not exec form: {text}"
    return value


def test_every_copied_path_exists():
    copies = [shlex.split(arg) for word, arg in instructions() if word == "COPY"]
    assert copies
    for parts in copies:
        assert not any(p.startswith("--from") for p in parts)
        for src in parts[:-1]:
            assert (ROOT / src).exists(), f"Dockerfile.tpu copies {src}, which is not in the repository"


def test_entrypoint_is_jobset_run_and_accepts_the_command():
    steps = dict(instructions())
    entry, cmd = exec_form(steps["ENTRYPOINT"]), exec_form(steps["CMD"])
    # [project.scripts] in pyproject.toml (read by pattern: tomllib is 3.11+, the project 3.10+).
    script = re.search(r'^jobset-run\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert entry[0] == "jobset-run" and script and script.group(1) == "jobset_runtime.cli:run_main"
    args = _run_parser("jobset-run").parse_args(entry[1:] + cmd)
    assert args.tpu is True
    assert args.command[1:] == cmd
    # The program it runs is one the image copies in.
    program = Path(cmd[-1])
    assert (ROOT / program.relative_to("/app")).is_file()
    copied = " ".join(arg for word, arg in instructions() if word == "COPY")
    assert str(program.relative_to("/app")) in copied


def test_installs_jax_with_libtpu_and_this_package():
    runs = " ".join(arg for word, arg in instructions() if word == "RUN")
    assert '"jax[tpu]"' in runs
    assert "pip install --no-cache-dir ." in runs
