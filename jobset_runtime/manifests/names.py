"""Kubernetes name rules, as the API server and JobSet's webhook apply them.

Each function returns the list of problems (empty when the value is fine), one
message per failed check, as k8s.io/apimachinery pkg/util/validation/validation.go
and pkg/api/validate/content do (IsDNS1035Label, IsDNS1123Subdomain,
IsValidLabelValue, IsQualifiedName, IsDomainPrefixedPath): a too-long value that
is also malformed gets both messages.
"""

from __future__ import annotations

import re

from .. import contract

_DNS1123_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(rf"^{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*$")
# content.IsLabelValue / IsQualifiedName's name part: alphanumerics, '-', '_', '.', alphanumeric at both ends.
_QUALIFIED = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_HTTP_PATH = re.compile(r"^[A-Za-z0-9/\-._~%!$&'()*+,;=:]+$")
SUBDOMAIN_MAX = 253


def _too_long(value: str, limit: int) -> list:
    return [f"must be no more than {limit} characters ({len(value)})"] if len(value) > limit else []


def dns1035_label(value: str) -> list:
    out = _too_long(value, contract.DNS_LABEL_MAX)
    if not _DNS1035.match(value):
        out.append("a DNS-1035 label must consist of lower case alphanumeric characters or '-', "
                   "start with an alphabetic character, and end with an alphanumeric character")
    return out


def dns1123_subdomain(value: str) -> list:
    out = _too_long(value, SUBDOMAIN_MAX)
    if not _DNS1123_SUBDOMAIN.match(value):
        out.append("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
                   "'-' or '.', and must start and end with an alphanumeric character")
    return out


def label_value(value: str) -> list:
    """IsValidLabelValue: empty, or at most 63 qualified-name characters."""
    if value == "":
        return []
    out = _too_long(value, contract.DNS_LABEL_MAX)
    if not _QUALIFIED.match(value):
        out.append("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' "
                   "or '.', and must start and end with an alphanumeric character")
    return out


def qualified_name(value: str) -> list:
    """IsQualifiedName: [prefix/]name, prefix a DNS-1123 subdomain, name <= 63 (label and annotation keys)."""
    prefix, slash, name = value.rpartition("/")
    out = []
    if slash:
        if not prefix:
            out.append("prefix part must be non-empty")
        else:
            out += [f"prefix part {m}" for m in dns1123_subdomain(prefix)]
        if value.count("/") > 1:
            return ["a qualified name must consist of alphanumeric characters, '-', '_' or '.', with an "
                    "optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"]
    if not name:
        return out + ["name part must be non-empty"]
    out += [f"name part {m}" for m in _too_long(name, contract.DNS_LABEL_MAX)]
    if not _QUALIFIED.match(name):
        out.append("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and "
                   "end with an alphanumeric character")
    return out


def domain_prefixed_path(value: str) -> list:
    """IsDomainPrefixedPath: `host/path`, host a DNS-1123 subdomain, path HTTP path characters."""
    if not value:
        return ["Required value"]
    host, slash, path = value.partition("/")
    if not slash or not host or not path:
        return ['must be a domain-prefixed path (such as "acme.io/foo")']
    out = [f"{host!r}: {m}" for m in dns1123_subdomain(host)]
    if not _HTTP_PATH.match(path):
        out.append(f"{path!r}: Invalid path: must match the regex [A-Za-z0-9/\\-._~%!$&'()*+,;=:]+")
    return out
