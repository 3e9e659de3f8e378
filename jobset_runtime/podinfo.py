"""Read what Kubernetes hands the pod: downward-API files, env, /etc/hosts.

The I/O edge in front of `identity.derive`.  The labels and annotations files are
in the kubelet's format (kubernetes pkg/fieldpath/fieldpath.go, FormatMap): one
`key="value"` line per entry, keys sorted, the value quoted as Go's `%q` does.
"""

from __future__ import annotations

import os
from collections.abc import Mapping  # not typing: a costly import on every start

from . import contract
from .errors import ConfigError
from .identity import Identity, PodMetadata, derive

_SIMPLE = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\", '"': '"', "'": "'"}


def go_unquote(quoted: str) -> str:
    """Inverse of Go's strconv.Quote: `"a\\"b\\u00e9"` → `a"bé`. Raises ValueError on bad input."""
    if len(quoted) < 2 or quoted[0] != '"' or quoted[-1] != '"':
        raise ValueError("value is not in double quotes")
    body, out, i = quoted[1:-1], bytearray(), 0
    while i < len(body):
        c = body[i]
        if c == '"':
            raise ValueError("unescaped quote inside the value")
        if c != "\\":
            out += c.encode()
            i += 1
            continue
        if i + 1 >= len(body):
            raise ValueError("value ends in a lone backslash")
        e = body[i + 1]
        if e in _SIMPLE:
            out += _SIMPLE[e].encode()
            i += 2
        elif e in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[e]
            digits = body[i + 2:i + 2 + width]
            if len(digits) != width or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise ValueError(f"bad \\{e} escape")
            code = int(digits, 16)
            out += bytes([code]) if e == "x" else chr(code).encode("utf-8", "surrogatepass")
            i += 2 + width
        elif e in "01234567":
            digits = body[i + 1:i + 4]
            if len(digits) != 3 or any(d not in "01234567" for d in digits) or int(digits, 8) > 255:
                raise ValueError("bad octal escape")
            out.append(int(digits, 8))
            i += 4
        else:
            raise ValueError(f"unknown escape \\{e}")
    return out.decode("utf-8")


def parse_downward_file(text: str, path: str = "labels") -> dict[str, str]:
    """Parse a downward-API labels/annotations file; a bad line is a ConfigError naming it."""
    result = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        try:
            if not sep or not key:
                raise ValueError('expected key="value"')
            result[key] = go_unquote(value)
        except ValueError as e:
            raise ConfigError(
                f"{path}:{n}: cannot read {line[:80]!r} ({e}); the file must be a downward-API volume item "
                "(fieldRef metadata.labels or metadata.annotations), as the kubelet writes it"
            ) from None
    return result


# os.path and open(), not pathlib: this runs on every wrapper start (docs/fail-fast.md, Start-up cost).
def _read_text(path) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _read(path) -> str | None:
    try:
        return _read_text(path)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from None


def read_pod_metadata(
    environ: Mapping[str, str] | None = None,
    hosts_file: str = contract.HOSTS_FILE,
    service_account_namespace_file: str = contract.SERVICE_ACCOUNT_NAMESPACE_FILE,
    resolv_conf: str = contract.RESOLV_CONF,
) -> PodMetadata:
    """Collect the pod's metadata from the downward-API dir, env, /etc/hosts, the
    service-account mount and /etc/resolv.conf."""
    env = dict(os.environ if environ is None else environ)
    explicit = contract.PODINFO_ENV in env
    podinfo = env.get(contract.PODINFO_ENV) or contract.PODINFO_DIR
    if not os.path.isdir(podinfo):
        if explicit:
            raise ConfigError(
                f"{contract.PODINFO_ENV}={podinfo} is not a directory: point it at the downward-API volume's "
                "mount path, or unset it"
            )
        if contract.IDENTITY_ENV["jobset_name"] not in env:
            raise ConfigError(
                f"no pod metadata: {podinfo} does not exist and {contract.IDENTITY_ENV['jobset_name']} is unset. "
                f"Run inside a JobSet pod with the downward-API volume mounted at {contract.PODINFO_DIR} "
                f"(or {contract.PODINFO_ENV}=DIR), or set the {contract.ENV_PREFIX}* env vars from fieldRefs; "
                "`jobset-runtime manifest` generates both"
            )

    def downward(name: str) -> dict[str, str]:
        path = os.path.join(podinfo, name)
        text = _read(path)
        return {} if text is None else parse_downward_file(text, path)

    def plain(name: str) -> str | None:
        text = _read(os.path.join(podinfo, name))
        return text.strip() or None if text is not None else None

    return PodMetadata(
        labels=downward(contract.PODINFO_LABELS),
        annotations=downward(contract.PODINFO_ANNOTATIONS),
        env=env,
        hosts=_read(hosts_file) or "",
        name=plain(contract.PODINFO_NAME),
        namespace=plain(contract.PODINFO_NAMESPACE),
        service_account_namespace=_read_quietly(service_account_namespace_file),
        resolv_conf=_read_quietly(resolv_conf) or "",
    )


def _read_quietly(path: str) -> str | None:
    """A fallback source: unreadable counts as absent (a non-root user, no token mounted)."""
    try:
        return _read_text(path).strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def current_identity(environ: Mapping[str, str] | None = None, hosts_file: str = contract.HOSTS_FILE, **files) -> Identity:
    return derive(read_pod_metadata(environ, hosts_file, **files))
