"""libvirt URIs: TLS and SSH transports with their PKI parameters, typos refused by name."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from taskomatic.models import HostSpec


@pytest.mark.parametrize("uri", [
    "test:///default",
    "qemu+tls://kvm1.example.org/system",
    "qemu+tls://kvm1/system?pkipath=/etc/taskomatic/pki/kvm1",
    "qemu+tls://kvm1/system?pkipath=/etc/pki/lab&no_verify=1",
    "qemu+ssh://root@kvm2:2222/system?keyfile=/root/.ssh/id_ed25519&no_tty=1",
    "qemu+libssh://root@kvm2/system?keyfile=/k&known_hosts=/etc/kh&known_hosts_verify=normal",
    "qemu+libssh2://admin@kvm3/system?known_hosts_verify=ignore&sshauth=privkey",
    "qemu+unix:///system?socket=/srv/host1/run/libvirt-sock",
])
def test_tls_and_ssh_uris_with_their_parameters_are_accepted(uri: str) -> None:
    assert HostSpec(name="h1", uri=uri).uri == uri


@pytest.mark.parametrize(("uri", "reason"), [
    ("qemu+tls://kvm1/system?pki_path=/etc/pki", "'pki_path' is not a +tls transport parameter"),
    ("qemu+ssh://kvm1/system?pkipath=/etc/pki", "'pkipath' is not a +ssh transport parameter"),
    ("qemu+tls://kvm1/system?keyfile=/k", "'keyfile' is not a +tls transport parameter"),
    ("qemu+tls://kvm1/system?pkipath=relative/dir", "'pkipath' must be an absolute path"),
    ("qemu+libssh2://kvm1/system?known_hosts=~/kh", "'known_hosts' must be an absolute path"),
    ("qemu+ssh://kvm1/system?known_hosts=/kh", "'known_hosts' is not a +ssh transport parameter"),
    ("qemu+tls://kvm1/system?no_verify=yes", "'no_verify' must be one of ['0', '1']"),
    ("qemu+tls:///system", "a +tls URI needs a host"),
    ("qemu+tls://kvm1/system?x", "is not a well-formed URI"),
    ("qemu+tls://kvm1/system?\x07=1", "control characters"),
    ("http://kvm1/", "must be a libvirt URI"),
])
def test_bad_uris_are_refused_naming_the_problem(uri: str, reason: str) -> None:
    with pytest.raises(ValidationError) as err:
        HostSpec(name="h1", uri=uri)
    first = err.value.errors()[0]
    assert first["loc"] == ("uri",) and reason in first["msg"], first["msg"]
