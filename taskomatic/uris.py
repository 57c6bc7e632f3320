"""libvirt connection URIs: the transports taskomatic accepts and their security parameters.

Remote hosts are reached with ``qemu+tls://host/system`` (x509: ``pkipath=/dir`` holding
``cacert.pem``, ``clientcert.pem``, ``clientkey.pem``; ``no_verify=1`` skips the server check, for
labs only) or ``qemu+ssh://user@host/system`` (``keyfile=/path``; the ssh client's own
known-hosts file), or ``qemu+libssh2://`` / ``qemu+libssh://`` (also ``known_hosts=/path``,
``known_hosts_verify=normal|auto|ignore``, ``sshauth=…``). Parameters are checked here so that a
typo is an error naming it rather than a setting libvirt silently ignores.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit

_SCHEMES = re.compile(r"(test|qemu|xen|lxc)(\+(unix|tcp|tls|ssh|libssh|libssh2))?")
_SSH = {"ssh", "libssh", "libssh2"}
_LIBSSH = {"libssh", "libssh2"}
# parameter -> transports it belongs to (None: any transport), after libvirt's remote URI docs
_PARAMS: dict[str, set[str] | None] = {
    "name": None, "mode": {"unix", *_SSH}, "proxy": _SSH, "socket": {"unix", *_SSH},
    "pkipath": {"tls"}, "no_verify": {"tls"}, "tls_priority": {"tls"},
    "keyfile": _SSH, "netcat": _SSH, "no_tty": {"ssh"}, "command": {"ssh"},
    "known_hosts": _LIBSSH, "known_hosts_verify": _LIBSSH, "sshauth": _LIBSSH,
}
_PATHS = {"pkipath", "keyfile", "known_hosts", "socket"}
_CHOICES = {"no_verify": {"0", "1"}, "no_tty": {"0", "1"},
            "known_hosts_verify": {"normal", "auto", "ignore"}}


def check_uri(value: str) -> str:
    """``value`` if it is a libvirt URI taskomatic can use; ValueError naming the problem."""
    if any(ch in value for ch in "<>\"'\n\r\t ") or not value.isprintable():
        raise ValueError(f"must not contain spaces, quotes, angle brackets or control characters "
                         f"(got {value!r})")
    try:
        parts = urlsplit(value)
        params = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise ValueError(f"is not a well-formed URI (got {value!r})") from None
    scheme = _SCHEMES.fullmatch(parts.scheme)
    if not scheme:
        raise ValueError("must be a libvirt URI such as test:///default, qemu+tls://host/system "
                         f"or qemu+ssh://user@host/system (got {value!r})")
    transport = scheme.group(3) or ""
    for key, param in params:
        allowed = _PARAMS.get(key, set())
        if key not in _PARAMS or (allowed is not None and transport not in allowed):
            where = f"+{transport}" if transport else "this"
            raise ValueError(f"parameter {key!r} is not a {where} transport parameter "
                             f"(got {value!r})")
        if key in _PATHS and not param.startswith("/"):
            raise ValueError(f"parameter {key!r} must be an absolute path (got {param!r})")
        if key in _CHOICES and param not in _CHOICES[key]:
            raise ValueError(f"parameter {key!r} must be one of {sorted(_CHOICES[key])} "
                             f"(got {param!r})")
    if transport in ({"tls", "tcp"} | _SSH) and not parts.hostname:
        raise ValueError(f"a +{transport} URI needs a host, e.g. qemu+{transport}://kvm1/system "
                         f"(got {value!r})")
    return value


_MIGRATION_SCHEMES = re.compile(r"tcp|rdma|unix")


def check_migration_uri(value: str) -> str:
    parts = urlsplit(value)
    if not _MIGRATION_SCHEMES.fullmatch(parts.scheme) or not (parts.netloc or parts.path):
        raise ValueError(f"must be a migration URI such as tcp://10.0.0.2 (got {value!r})")
    if any(ch in value for ch in "<>\"'\n\r\t "):
        raise ValueError(f"must not contain spaces, quotes or angle brackets (got {value!r})")
    return value


def canonical_uri(value: str) -> str:
    """``value`` (a URI ``check_uri`` accepts) in one spelling: scheme and host name in lower
    case, the path and the path parameters (``socket``, ``pkipath``, …) without empty or ``.``
    segments (``/./`` and ``//`` as ``/``; ``..`` is kept, a symlink may make it mean another
    place) and the parameters in order. Two URIs with one canonical form reach one hypervisor;
    the converse needs the hypervisor's own identity (``taskomatic.hypervisor.identity``)."""
    parts = urlsplit(value)
    params = sorted((key, _clean_path(param) if key in _PATHS else param)
                    for key, param in parse_qsl(parts.query, keep_blank_values=True))
    query = "&".join(f"{key}={param}" for key, param in params)
    return parts._replace(scheme=parts.scheme.lower(), netloc=parts.netloc.lower(),
                          path=_clean_path(parts.path), query=query).geturl()


def _clean_path(path: str) -> str:
    if not path:
        return path
    kept = [seg for seg in path.split("/") if seg not in ("", ".")]
    return ("/" if path.startswith("/") else "") + "/".join(kept)


def uri_driver(value: str) -> str:
    """The libvirt driver a URI names, lower case: ``qemu+tls://h/system`` → ``qemu``,
    ``test:///default`` → ``test`` (what ``virConnectGetType()`` reports for it, lower case)."""
    return urlsplit(value).scheme.split("+", 1)[0].lower()
