"""How a live or offline migration is asked of libvirt (the lab tests run them for real)."""

from __future__ import annotations

import libvirt

from taskomatic.hypervisor.migration import can_migrate_live, migration_flags, progress_percent
from taskomatic.models import HostRef, MigrateDomainInput, MigrationLimits


def _inp(**limits: object) -> MigrateDomainInput:
    return MigrateDomainInput(
        name="vm1", source=HostRef(name="a", uri="qemu+unix:///system?socket=/a"),
        destination=HostRef(name="b", uri="qemu+unix:///system?socket=/b",
                            migration_uri="tcp://10.0.0.2"),
        limits=MigrationLimits.model_validate(limits))


def test_live_migration_is_peer_to_peer_persisted_and_undefines_the_source() -> None:
    flags, params = migration_flags(_inp(bandwidth_mib_s=50), live=True)
    for flag in (libvirt.VIR_MIGRATE_LIVE, libvirt.VIR_MIGRATE_PEER2PEER,
                 libvirt.VIR_MIGRATE_PERSIST_DEST, libvirt.VIR_MIGRATE_UNDEFINE_SOURCE):
        assert flags & flag
    assert not flags & (libvirt.VIR_MIGRATE_OFFLINE | libvirt.VIR_MIGRATE_UNSAFE)
    assert params == {libvirt.VIR_MIGRATE_PARAM_URI: "tcp://10.0.0.2",
                      libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: 50}


def test_shut_off_vm_migrates_offline_and_unsafe_only_when_asked() -> None:
    flags, params = migration_flags(_inp(unsafe=True), live=False)
    assert flags & libvirt.VIR_MIGRATE_OFFLINE and flags & libvirt.VIR_MIGRATE_UNSAFE
    assert not flags & libvirt.VIR_MIGRATE_LIVE and params == {}


def test_progress_is_monotonic_and_never_claims_done() -> None:
    assert progress_percent({}, 12.0) == 12.0
    assert progress_percent({"memory_total": 100, "memory_remaining": 75}, 0.0) == 25.0
    assert progress_percent({"memory_total": 100, "memory_remaining": 90}, 25.0) == 25.0  # dirtied
    assert progress_percent({"memory_total": 100, "memory_remaining": 0}, 25.0) == 99.0
    assert not can_migrate_live("test:///default") and can_migrate_live("qemu:///system")
