"""The kubelet's rules, reproduced in jobset_runtime.local.kubelet, against known answers."""

import base64

import pytest

from jobset_runtime import podinfo
from jobset_runtime.errors import ConfigError
from jobset_runtime.local import kubelet


# third_party/forked/golang/expansion/expand_test.go cases (behaviour, restated).
ENV = {"VAR_A": "A", "VAR_B": "B", "VAR_C": "C", "VAR_REF": "$(VAR_A)", "VAR_EMPTY": "", "": "x"}


@pytest.mark.parametrize("text,want", [
    ("$(VAR_A)", "A"),
    ("___$(VAR_B)___", "___B___"),
    ("$(VAR_A)-$(VAR_B)-$(VAR_C)", "A-B-C"),
    ("$(VAR_REF)", "$(VAR_A)"),            # values are not expanded again
    ("$(VAR_EMPTY)", ""),
    ("$(UNKNOWN)", "$(UNKNOWN)"),          # unknown references stay as written
    ("$$(VAR_A)", "$(VAR_A)"),             # $$ escapes
    ("$$$(VAR_A)", "$A"),
    ("$$$$(VAR_A)", "$$(VAR_A)"),
    ("$$", "$"),
    ("$", "$"),                            # a lone trailing $ stays
    ("foo$", "foo$"),
    ("$(VAR_A", "$(VAR_A"),                # unclosed reference stays
    ("$(VAR_A$(VAR_B)", "$(VAR_A$(VAR_B)"), # the name runs to the first ')'
    ("$VAR_A", "$VAR_A"),                  # $ not followed by ( or $
    ("$()", "x"),                          # empty name is a name
    ("a$)b", "a$)b"),
    ("\u00e9$(VAR_A)\u00e9", "\u00e9A\u00e9"),
    ("$(VAR_A)$(VAR_A)", "AA"),
])
def test_expand(text, want):
    assert kubelet.expand(text, ENV) == want


@pytest.mark.parametrize("value,want", [
    ("plain", '"plain"'),
    ('a"b', '"a\\"b"'),
    ("back\\slash", '"back\\\\slash"'),
    ("tab\tnl\ncr\r", '"tab\\tnl\\ncr\\r"'),
    ("\a\b\f\v", '"\\a\\b\\f\\v"'),
    ("\x00\x1f\x7f", '"\\x00\\x1f\\x7f"'),
    ("\u0085", '"\\u0085"'),               # C1 control: not printable in Go
    ("\u00a0", '"\\u00a0"'),               # no-break space: only ASCII space is printable
    ("caf\u00e9 \u65e5\u672c", '"caf\u00e9 \u65e5\u672c"'),
    ("\u200b", '"\\u200b"'),               # format character (Cf)
    ("\U0001f600", '"\U0001f600"'),        # emoji: a symbol, printable
    ("\U000e0001", '"\\U000e0001"'),       # language tag (Cf) beyond the BMP
    ("", '""'),
])
def test_go_quote(value, want):
    assert kubelet.go_quote(value) == want


def test_format_map_sorted_without_final_newline():
    text = kubelet.format_map({"b": "2", "a": 'x"y', "A": "\n"})
    assert text == 'A="\\n"\na="x\\"y"\nb="2"'


def test_format_map_round_trips_through_podinfo_reader():
    values = {"jobset.sigs.k8s.io/jobset-name": "demo", "odd": 'q"\\\t\u00a0\u0085\x01\u00e9\U0001f600\U000e0001',
              "empty": "", "multi": "line1\nline2"}
    assert podinfo.parse_downward_file(kubelet.format_map(values)) == values


def facts(**kw):
    base = dict(name="demo-w-0-1-abcde", namespace="ns1", uid="u-1", labels={"l": "1"},
                annotations={"a/b": "v"}, hostname="demo-w-0-1", subdomain="demo", pod_ip="198.18.0.7",
                host_ip="127.0.0.1", node_name="node", node_cpus=4, node_memory=8 << 30)
    base.update(kw)
    return kubelet.PodFacts(**base)


def test_env_field_refs_secrets_configmaps_and_order():
    objs = {("Secret", "s"): {"data": {"pw": base64.b64encode(b"hunter2").decode()}, "stringData": {"u": "root"}},
            ("ConfigMap", "c"): {"data": {"k": "cv", "n": 3}}}
    container = {"name": "main", "env": [
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "L", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['l']"}}},
        {"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['a/b']"}}},
        {"name": "MISSING", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['nope']"}}},
        {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "s", "key": "pw"}}},
        {"name": "U", "valueFrom": {"secretKeyRef": {"name": "s", "key": "u"}}},
        {"name": "CV", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}},
        {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k", "optional": True}}},
        {"name": "LATER", "value": "$(EARLY)"},     # defined below: left as written
        {"name": "EARLY", "value": "e"},
        {"name": "BOTH", "value": "$(POD)@$(IP)/$(EARLY)$$(EARLY)"},
        {"name": "NOEXP", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "n"}}},
        {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
        {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "requests.memory", "divisor": "1Mi"}}},
    ], "resources": {"requests": {"memory": "1536Mi"}}}
    env = kubelet.container_env(facts(objects=objs), container)
    assert env["POD"] == "demo-w-0-1-abcde" and env["NS"] == "ns1" and env["IP"] == "198.18.0.7"
    assert env["L"] == "1" and env["A"] == "v" and env["MISSING"] == ""
    assert env["PW"] == "hunter2" and env["U"] == "root" and env["CV"] == "cv" and env["NOEXP"] == "3"
    assert "OPT" not in env
    assert env["LATER"] == "$(EARLY)"
    assert env["BOTH"] == "demo-w-0-1-abcde@198.18.0.7/e$(EARLY)"
    assert env["CPU"] == "4" and env["MEM"] == "1536"


def test_env_errors_name_the_fix():
    with pytest.raises(ConfigError, match="Secret 'nope' is not in the file"):
        kubelet.container_env(facts(), {"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}]})
    with pytest.raises(ConfigError, match="fieldPath"):
        kubelet.container_env(facts(), {"env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.bogus"}}}]})
    with pytest.raises(ConfigError, match="has no command"):
        kubelet.container_argv({"name": "c", "args": ["x"]}, {})


def test_envfrom_comes_first_and_env_overrides():
    objs = {("ConfigMap", "c"): {"data": {"K": "from-cm", "O": "cm"}}}
    container = {"envFrom": [{"configMapRef": {"name": "c"}, "prefix": "P_"}, {"configMapRef": {"name": "c"}}],
                 "env": [{"name": "O", "value": "env"}, {"name": "R", "value": "$(P_K)"}]}
    env = kubelet.container_env(facts(objects=objs), container)
    assert env == {"P_K": "from-cm", "P_O": "cm", "K": "from-cm", "O": "env", "R": "from-cm"}


def test_argv_expansion():
    argv = kubelet.container_argv({"command": ["run", "$(A)"], "args": ["--x=$(B)", "$$(A)", "$(C)"]}, {"A": "1", "B": "2"})
    assert argv == ["run", "1", "--x=2", "$(A)", "$(C)"]


def test_downward_volume_files():
    vol = {"name": "podinfo", "downwardAPI": {"items": [
        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
        {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
        {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
        {"path": "one", "fieldRef": {"fieldPath": "metadata.annotations['a/b']"}},
    ]}}
    files = kubelet.volume_files(facts(labels={"z": "1", "a": "x y"}), vol)
    assert files == {"labels": 'a="x y"\nz="1"', "annotations": 'a/b="v"', "name": "demo-w-0-1-abcde", "one": "v"}


def test_secret_and_configmap_volumes():
    objs = {("Secret", "s"): {"data": {"k": base64.b64encode(b"sv").decode()}},
            ("ConfigMap", "c"): {"data": {"a": "1", "b": "2"}}}
    f = facts(objects=objs)
    assert kubelet.volume_files(f, {"name": "v", "secret": {"secretName": "s"}}) == {"k": "sv"}
    assert kubelet.volume_files(f, {"name": "v", "configMap": {"name": "c", "items": [{"key": "b", "path": "sub/b"}]}}) == {"sub/b": "2"}
    assert kubelet.volume_files(f, {"name": "v", "emptyDir": {}}) is None
    with pytest.raises(ConfigError, match="hostPath|only emptyDir"):
        kubelet.volume_files(f, {"name": "v", "hostPath": {"path": "/"}})


def test_hosts_file_has_the_kubelet_fqdn_line():
    text = kubelet.hosts_file(facts())
    assert text.startswith("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n")
    assert text.splitlines()[-1] == "198.18.0.7\tdemo-w-0-1.demo.ns1.svc.cluster.local\tdemo-w-0-1"
    assert kubelet.hosts_file(facts(subdomain="")).splitlines()[-1] == "198.18.0.7\tdemo-w-0-1"
    aliases = kubelet.hosts_file(facts(), [{"ip": "10.0.0.1", "hostnames": ["a", "b"]}])
    assert aliases.endswith("# Entries added by HostAliases.\n10.0.0.1\ta\tb\n")


def test_resolv_conf():
    assert kubelet.resolv_conf("ns1", "198.18.0.1") == (
        "search ns1.svc.cluster.local svc.cluster.local cluster.local\nnameserver 198.18.0.1\noptions ndots:5\n")
