"""jobset-run with real child processes: exit codes, signals, termination message, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

PYTHON = sys.executable

POD = {
    "JOBSET_RUNTIME_JOBSET_NAME": "demo", "JOBSET_RUNTIME_REPLICATED_JOB": "worker",
    "JOBSET_RUNTIME_JOB_INDEX": "1", "JOB_COMPLETION_INDEX": "0", "JOBSET_RUNTIME_NAMESPACE": "default",
    "JOBSET_RUNTIME_TOPOLOGY": "worker:2x2",
}


JOBSET_RUN = [PYTHON, "-c", "import sys; from jobset_runtime.cli import run_main; sys.exit(run_main())"]


def jobset_run(cli_env, *args, extra=None, **kw):
    env = {**cli_env, **POD, **(extra or {})}
    return subprocess.run([*JOBSET_RUN, *args], env=env, capture_output=True, text=True, timeout=60, **kw)


def env_dump(out, code: int = 0) -> list:
    """A command that writes its pid and env to `out` as JSON, then exits with `code`."""
    return [PYTHON, "-c", f"import os, json; json.dump({{'pid': os.getpid(), 'env': dict(os.environ)}}, "
                          f"open({str(out)!r}, 'w')); raise SystemExit({code})"]


@pytest.fixture
def cli_env(cli_env):
    cli_env = dict(cli_env)
    cli_env.pop("JOBSET_RUNTIME_PODINFO", None)
    return cli_env


def test_exports_identity_and_exit_code(cli_env, tmp_path):
    out = tmp_path / "env.json"
    r = jobset_run(cli_env, "--wait", "none", "--", *env_dump(out, 7))
    assert r.returncode == 7
    env = json.loads(out.read_text())["env"]
    assert env["RANK"] == "2" and env["WORLD_SIZE"] == "4"
    assert env["MASTER_ADDR"] == "demo-worker-0-0.demo.default.svc.cluster.local"
    assert env["JOBSET_RUNTIME_RANK"] == "2"
    assert "TPU_WORKER_ID" not in env
    assert "exited with code 7" in r.stderr and "Traceback" not in r.stderr


def test_tpu_env_on_request(cli_env, tmp_path):
    out = tmp_path / "env.json"
    r = jobset_run(cli_env, "--wait", "none", "--tpu", "--", *env_dump(out))
    assert r.returncode == 0, r.stderr
    env = json.loads(out.read_text())["env"]
    assert env["TPU_WORKER_ID"] == "0" and env["MEGASCALE_SLICE_ID"] == "1" and env["MEGASCALE_NUM_SLICES"] == "2"


def test_killed_child_gives_128_plus_signal_and_termination_message(cli_env, tmp_path):
    log = tmp_path / "termination-log"
    r = jobset_run(cli_env, "--wait", "none", "--termination-log", str(log), "--",
                   PYTHON, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert r.returncode == 128 + 9
    msg = log.read_text()
    assert "pod demo-worker-1-0 (rank 2)" in msg and "SIGKILL" in msg


def test_sigterm_is_forwarded_to_the_whole_group(cli_env, tmp_path):
    marker = tmp_path / "got-term"
    ready = tmp_path / "ready"
    # The child and a grandchild both trap SIGTERM; both must receive it.
    path = tmp_path / "child.py"
    path.write_text(
        "import os, signal, subprocess, sys, time\n"
        "def on_term(*_):\n"
        f"    open({str(marker)!r} + str(os.getpid()), 'w').close()\n"
        "    sys.exit(42)\n"
        "signal.signal(signal.SIGTERM, on_term)\n"
        "if sys.argv[1:] != ['grandchild']:\n"
        "    subprocess.Popen([sys.executable, __file__, 'grandchild'])\n"
        f"open({str(ready)!r} + str(os.getpid()), 'w').close()\n"
        "time.sleep(60)\n"
    )
    env = {**cli_env, **POD}
    p = subprocess.Popen([*JOBSET_RUN, "--wait", "none", "--", PYTHON, str(path)], env=env, stderr=subprocess.PIPE,
                         text=True)
    deadline = time.time() + 30
    while len(list(tmp_path.glob("ready*"))) < 2 and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 42
    got = list(tmp_path.glob("got-term*"))
    assert len(got) == 2, got


def test_config_errors_exit_2_without_traceback(cli_env, tmp_path):
    log = tmp_path / "termination-log"
    r = jobset_run(cli_env, "--wait", "none", "--termination-log", str(log), "--", "true",
                   extra={"JOBSET_RUNTIME_TOPOLOGY": "worker:2"})
    assert r.returncode == 2
    assert "JOBSET_RUNTIME_TOPOLOGY" in r.stderr and "Traceback" not in r.stderr
    assert "JOBSET_RUNTIME_TOPOLOGY" in log.read_text()
    r = jobset_run(cli_env, "--wait", "none")
    assert r.returncode == 2 and "no command given" in r.stderr
    r = jobset_run(cli_env, "--wait", "none", "--", "/no/such/program")
    assert r.returncode == 127 and "cannot run /no/such/program" in r.stderr


def test_env_command_outputs(cli_env, podinfo):
    env, hosts = podinfo("multislice-1-3", JOBSET_RUNTIME_TOPOLOGY="slice:2x4")
    # /etc/hosts is the machine's here; namespace comes from the podinfo file
    r = subprocess.run([PYTHON, "-m", "jobset_runtime", "env"], env={**cli_env, **env}, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["rank"] == 7 and d["coordinator"] == "train-slice-0-0" and d["namespace"] == "ml-team"
    assert d["namespace_source"] == "downward-API file namespace"
    r = subprocess.run([PYTHON, "-m", "jobset_runtime", "env", "--format", "shell"], env={**cli_env, **env},
                       capture_output=True, text=True)
    assert "export JOBSET_RUNTIME_RANK=7" in r.stdout.splitlines()
    assert "# namespace ml-team from downward-API file namespace" in r.stdout.splitlines()
    r = subprocess.run([PYTHON, "-m", "jobset_runtime", "env"], env={**cli_env, "JOBSET_RUNTIME_PODINFO": "/nope"},
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_a_cause_written_by_the_command_is_kept(cli_env, tmp_path):
    log = tmp_path / "termination-log"
    r = jobset_run(cli_env, "--wait", "none", "--termination-log", str(log), "--", PYTHON, "-c",
                   "import os; open(os.environ['JOBSET_RUNTIME_TERMINATION_LOG'], 'w').write('lost worker w-3');"
                   "raise SystemExit(75)")
    assert r.returncode == 75
    assert log.read_text() == "pod demo-worker-1-0 (rank 2): lost worker w-3"


def test_a_command_path_that_is_not_utf8_keeps_its_exit_code_and_a_one_line_message(cli_env, tmp_path):
    """A path with a byte that is not UTF-8 (Python holds it as a surrogate) once turned exit 3
    into 1 with a traceback when the cause was written."""
    script = os.fsencode(tmp_path) + b"/fail-\xff\xfe-\nforged"
    with open(script, "wb") as f:
        f.write(b"#!/bin/sh\nexit 3\n")
    os.chmod(script, 0o755)
    log = tmp_path / "termination-log"
    r = jobset_run(cli_env, "--wait", "none", "--termination-log", str(log), "--", os.fsdecode(script))
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr
    msg = log.read_bytes().decode("utf-8")  # valid UTF-8, or this raises
    assert "\n" not in msg and "fail-\\xff\\xfe-\\nforged exited with code 3" in msg, msg
    # Every log line of the wrapper is one line too: the path's newline did not start a new one.
    assert not any(line.startswith("forged") for line in r.stderr.splitlines()), r.stderr


def test_jax_env_on_request(cli_env, tmp_path):
    out = tmp_path / "env.json"
    r = jobset_run(cli_env, "--wait", "none", "--jax", "--", *env_dump(out))
    assert r.returncode == 0, r.stderr
    env = json.loads(out.read_text())["env"]
    assert env["JAX_COORDINATOR_ADDRESS"] == "demo-worker-0-0.demo.default.svc.cluster.local:8476"
    assert env["JAX_COORDINATOR_PORT"] == "8476"


def test_json_log_lines_carry_pod_and_rank(cli_env):
    r = jobset_run(cli_env, "--log-format", "json", "--wait", "none", "--", PYTHON, "-c", "raise SystemExit(4)")
    assert r.returncode == 4
    lines = [json.loads(line) for line in r.stderr.splitlines() if line.startswith("{")]
    assert lines and all(line["pod"] == "demo-worker-1-0" and line["rank"] == 2 for line in lines)
    assert any(line["level"] == "error" and "exited with code 4" in line["message"] for line in lines)


@pytest.mark.parametrize("option", [["--restarts", "-1"], ["--group-port", "65535"], ["--timeout", "-5"]])
def test_out_of_range_options_are_usage_errors(cli_env, option):
    r = jobset_run(cli_env, *option, "--", "true")
    assert r.returncode == 2 and option[0] in r.stderr and "Traceback" not in r.stderr


def test_exec_becomes_the_command_with_the_exports(cli_env, tmp_path):
    """--exec: the command runs in jobset-run's own process, with the same env, and its exit code is the pod's."""
    out = tmp_path / "env.json"
    proc = subprocess.Popen([*JOBSET_RUN, "--wait", "none", "--exec", "--", *env_dump(out, 7)],
                            env={**cli_env, **POD}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 7, err
    seen = json.loads(out.read_text())
    assert seen["pid"] == proc.pid
    assert seen["env"]["RANK"] == "2" and seen["env"]["JOBSET_RUNTIME_RANK"] == "2"
    assert "exited with code" not in err  # no jobset-run left to say so


def test_exec_refuses_what_needs_jobset_run_alive(cli_env, tmp_path):
    log = tmp_path / "termination-log"
    r = jobset_run(cli_env, "--wait", "none", "--exec", "--restarts", "1", "--", "true")
    assert r.returncode == 2 and "--exec leaves no jobset-run to restart" in r.stderr
    r = jobset_run(cli_env, "--wait", "none", "--exec", "--group", "on", "--", "true")
    assert r.returncode == 2 and "drop --group on or --exec" in r.stderr
    r = jobset_run(cli_env, "--wait", "none", "--exec", "--termination-log", str(log), "--", "/no/such/program")
    assert r.returncode == 127 and "cannot run /no/such/program" in r.stderr and "Traceback" not in r.stderr
    assert "pod demo-worker-1-0 (rank 2): cannot run /no/such/program" in log.read_text()


def test_exec_gives_the_command_default_signal_dispositions(cli_env):
    """Python ignores SIGPIPE and SIGXFSZ; an exec would pass that on (`yes | head` would
    print "Broken pipe"), so --exec restores them, as a child started by Popen gets them."""
    r = jobset_run(cli_env, "--wait", "none", "--exec", "--", "cat", "/proc/self/status")
    assert r.returncode == 0, r.stderr
    ignored = int(next(line for line in r.stdout.splitlines() if line.startswith("SigIgn:")).split()[1], 16)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        assert not ignored & (1 << (sig - 1)), (sig, hex(ignored))
    blocked = int(next(line for line in r.stdout.splitlines() if line.startswith("SigBlk:")).split()[1], 16)
    assert blocked == 0


def test_exec_refuses_a_pod_that_belongs_to_a_group(cli_env, tmp_path):
    token = tmp_path / "token"
    token.write_text("a-test-token-of-at-least-16-bytes")
    r = jobset_run(cli_env, "--wait", "none", "--exec", "--", "true",
                   extra={"JOBSET_RUNTIME_GROUP_TOKEN_FILE": str(token)})
    assert r.returncode == 2 and "--exec, but the group token is mounted" in r.stderr, r.stderr
    r = jobset_run(cli_env, "--wait", "none", "--exec", "--group", "off", "--", "true",
                   extra={"JOBSET_RUNTIME_GROUP_TOKEN_FILE": str(token)})
    assert r.returncode == 0, r.stderr
