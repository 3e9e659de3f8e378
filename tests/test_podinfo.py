import pytest

from jobset_runtime import contract
from jobset_runtime.errors import ConfigError
from jobset_runtime.podinfo import go_unquote, parse_downward_file, read_pod_metadata


@pytest.mark.parametrize("quoted,value", [
    ('"plain"', "plain"),
    ('""', ""),
    (r'"a\"b"', 'a"b'),
    (r'"back\\slash"', "back\\slash"),
    (r'"line\nbreak\ttab"', "line\nbreak\ttab"),
    ('"café"', "café"),                 # Go keeps printable UTF-8 as-is
    (r'"\u00e9\U0001F600"', "é😀"),
    (r'"\xc3\xa9"', "é"),                # bytes of a UTF-8 sequence
    (r'"\a\b\f\v\r"', "\a\b\f\v\r"),
    (r'"\101"', "A"),
])
def test_go_unquote(quoted, value):
    assert go_unquote(quoted) == value


@pytest.mark.parametrize("bad", ['plain', '"open', r'"\q"', r'"\x4"', r'"a"b"', '"\\"'])
def test_go_unquote_rejects(bad):
    with pytest.raises(ValueError):
        go_unquote(bad)


def test_recorded_annotations_with_escapes(podinfo):
    env, hosts = podinfo("multislice-1-3")
    meta = read_pod_metadata(env, hosts)
    assert meta.annotations["example.com/config"] == '{"lr": 0.1,\n "name": "café \\\\ \\"x\\""}'
    assert meta.annotations["example.com/tab"] == "a\tb"
    assert meta.labels["jobset.sigs.k8s.io/jobset-name"] == "train"
    assert meta.name == "train-slice-1-3-x7k2p"
    assert meta.namespace == "ml-team"


def test_malformed_file_names_the_line(tmp_path):
    (tmp_path / "labels").write_text('a="1"\nb=2\n')
    with pytest.raises(ConfigError, match=r"labels:2: cannot read 'b=2'"):
        read_pod_metadata({"JOBSET_RUNTIME_PODINFO": str(tmp_path)}, str(tmp_path / "nohosts"))
    with pytest.raises(ConfigError, match="annotations:1"):
        parse_downward_file("novalue\n", "annotations")


def test_missing_dir_and_env(monkeypatch, tmp_path):
    monkeypatch.setattr(contract, "PODINFO_DIR", str(tmp_path / "podinfo"))  # whatever this machine has
    with pytest.raises(ConfigError, match="JOBSET_RUNTIME_PODINFO=/nonexistent is not a directory"):
        read_pod_metadata({"JOBSET_RUNTIME_PODINFO": "/nonexistent"})
    with pytest.raises(ConfigError, match="no pod metadata"):
        read_pod_metadata({})


def test_namespace_from_the_service_account_mount_and_resolv_conf(tmp_path):
    podinfo = tmp_path / "podinfo"
    podinfo.mkdir()
    (podinfo / "labels").write_text('jobset.sigs.k8s.io/jobset-name="js"\n')
    sa = tmp_path / "namespace"
    sa.write_text("from-token\n")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("search from-search.svc.cluster.local svc.cluster.local cluster.local\n")
    env = {"JOBSET_RUNTIME_PODINFO": str(podinfo)}
    meta = read_pod_metadata(env, str(tmp_path / "nohosts"), str(sa), str(resolv))
    assert meta.service_account_namespace == "from-token"
    assert "from-search.svc.cluster.local" in meta.resolv_conf
    # Absent or unreadable fallbacks are simply absent.
    meta = read_pod_metadata(env, str(tmp_path / "nohosts"), str(tmp_path / "none"), str(tmp_path / "none"))
    assert meta.service_account_namespace is None and meta.resolv_conf == ""
