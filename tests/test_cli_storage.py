"""``taskomatic pool`` / ``volume`` and VM disks through the CLI, against a running dev stack."""

from __future__ import annotations

from test_cli import Shell, shell  # noqa: F401  (the module's own dev stack)

ROOT = "/var/lib/taskomatic/pools"


def test_pools_volumes_and_vm_disks_through_the_cli(shell: Shell) -> None:  # noqa: F811
    created = shell.json("pool", "create", "images", "--host", "host-1", "--path",
                         f"{ROOT}/images", "--wait")
    assert (created["kind"], created["pool"], created["state"], created["host"]) == (
        "CreateStoragePool", "images", "active", "host-1")
    shown = shell.json("tasks", "show", created["task_id"])
    assert (shown["state"], shown["kind"], shown["result"]["pool"]) == (
        "complete", "CreateStoragePool", "images")
    [pool] = shell.json("pool", "list")
    assert (pool["name"], pool["type"], pool["autostart"]) == ("images", "dir", True)
    assert shell.json("pool", "autostart", "images", "off", "--wait")["notes"] == [
        "autostart off"]

    human = shell.run("volume", "create", "images/base.qcow2", "--size", "1GiB", "--wait")
    assert human.returncode == 0, human.stderr
    assert "create volume" in human.stdout and "CreateVolume images/base.qcow2" in human.stdout
    shell.json("volume", "create", "images/copy", "--size", "1GiB", "--format", "raw",
               "--clone-from", "base.qcow2", "--wait")
    resized = shell.run("volume", "resize", "images/base.qcow2", "--size", "2GiB", "--wait")
    assert resized.returncode == 1 and "NotSupported" in resized.stderr

    vm = shell.json("vm", "create", "db1", "--vcpus", "1", "--memory-mib", "256", "--disk",
                    "images/copy", "--disk-size", "512MiB", "--pool", "images", "--wait")
    assert vm["host"] == "host-1"
    vols = {v["name"]: v for v in shell.json("volume", "list", "--pool", "images")}
    assert set(vols) == {"base.qcow2", "copy", "db1-disk1.qcow2"}
    assert (vols["copy"]["used_by"], vols["db1-disk1.qcow2"]["owner_vm"]) == ("db1", "db1")
    table = shell.run("volume", "list")
    assert table.returncode == 0 and "db1-disk1.qcow2" in table.stdout and "512MiB" in table.stdout

    refused = shell.run("pool", "destroy", "images")
    assert refused.returncode == 2 and "db1" in refused.stderr and "error: name:" in " ".join(
        refused.stderr.split())
    shell.json("vm", "destroy", "db1", "--wait")
    assert sorted(v["name"] for v in shell.json("volume", "list")) == ["base.qcow2", "copy"]
    shell.json("volume", "delete", "images/copy", "--wait")
    shell.json("pool", "refresh", "images", "--wait")
    gone = shell.json("pool", "destroy", "images", "--delete", "--wait")
    assert gone["state"] is None
    assert shell.json("pool", "list") == [] and shell.json("volume", "list") == []


REFUSED = [
    (["pool", "create", "p/x", "--host", "host-1", "--path", f"{ROOT}/p"], "name"),
    (["pool", "create", "p1", "--host", "host-1", "--path", "/etc/p1"], "path"),
    (["pool", "create", "p1", "--host", "host-1", "--path", f"{ROOT}/../p1"], "path"),
    (["pool", "create", "p1", "--host", "host-1", "--type", "netfs", "--path", f"{ROOT}/p"],
     "source"),
    (["volume", "create", "nopool", "--size", "1GiB"], "volume"),
    (["volume", "create", "p/v<1>", "--size", "1GiB"], "name"),
    (["pool", "create", "p1", "--host", "host-1", "--type", "logical", "--source-name", "vg",
      "--source-device", "/dev/sdb", "--shared"], "shared"),
    (["volume", "create", "p/v", "--size", "0"], "capacity"),
    (["volume", "create", "p/v", "--size=-1GiB"], "capacity"),
    (["volume", "create", "p/v", "--size", "900TiB"], "capacity"),
    (["volume", "create", "ghost/v", "--size", "1GiB"], "pool"),
    (["vm", "create", "x1", "--vcpus", "1", "--memory-mib", "64", "--pool", "p"], "pool"),
    (["vm", "create", "x1", "--vcpus", "1", "--memory-mib", "64", "--disk", "ghost/v"],
     "disks.0.volume"),
]


def test_refused_storage_requests_exit_2_naming_the_field(shell: Shell) -> None:  # noqa: F811
    for args, field in REFUSED:
        done = shell.run(*args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert f"error: {field}:" in " ".join(done.stderr.split()), (args, done.stderr)
        assert "Traceback" not in done.stderr
    assert not {"p1", "p", "x1"} & {p["name"] for p in shell.json("pool", "list")}
    assert "x1" not in {v["name"] for v in shell.json("vm", "list")}


def test_a_shared_pool_and_a_vm_on_it_through_the_cli(shell: Shell) -> None:  # noqa: F811
    shell.json("pool", "create", "shared1", "--host", "host-1", "--path", f"{ROOT}/shared1",
               "--shared", "--wait")
    hosts = {h["name"]: h for h in shell.json("host", "list")}
    cluster = [n for n, h in sorted(hosts.items()) if h["state"] == "up"
               and h["cluster"] == hosts["host-1"]["cluster"]]
    assert len(cluster) >= 2, hosts
    shown = shell.json("pool", "show", "shared1")
    assert shown["scope"] == "shared"
    assert [(h["host"], h["state"]) for h in shown["hosts"]] == [(n, "active") for n in cluster]
    human = shell.run("pool", "show", "shared1")
    assert human.returncode == 0 and all(f"│ {n} │ active" in human.stdout for n in cluster)
    assert f"shared ({len(cluster)} of {len(cluster)} hosts)" in shell.run("pool", "list").stdout
    missing = shell.run("pool", "show", "ghost")
    assert missing.returncode == 2 and "error: name:" in " ".join(missing.stderr.split())

    vm = shell.json("vm", "create", "s1", "--vcpus", "1", "--memory-mib", "256", "--disk-size",
                    "512MiB", "--pool", "shared1", "--start", "--wait")
    plan = shell.json("host", "clear", vm["host"], "--dry-run")
    [move] = [m for m in plan["plan"] if m["vm"] == "s1"]
    assert move["destination"] not in (None, vm["host"])
    shell.json("vm", "destroy", "s1", "--wait")
    shell.json("pool", "destroy", "shared1", "--delete", "--wait")
    assert shell.json("pool", "list") == []


def test_a_vm_on_a_local_pool_and_copy_storage_through_the_cli(shell: Shell) -> None:  # noqa: F811
    for pool, host in (("local1", "host-1"), ("local2", "host-2")):
        shell.json("pool", "create", pool, "--host", host, "--path", f"{ROOT}/{pool}", "--wait")
    shell.json("vm", "create", "c1", "--vcpus", "1", "--memory-mib", "256", "--disk-size",
               "512MiB", "--pool", "local1", "--start", "--wait")
    [plain] = [m for m in shell.json("host", "clear", "host-1", "--dry-run")["plan"]
               if m["vm"] == "c1"]
    assert plain["destination"] is None and "--copy-storage" in plain["reason"], plain
    [copy] = [m for m in shell.json("host", "clear", "host-1", "--dry-run", "--copy-storage")
              ["plan"] if m["vm"] == "c1"]
    assert (copy["destination"], copy["reason"]) == ("host-2", None), copy
    refused = shell.run("vm", "migrate", "c1", "--copy-storage", "--wait")
    assert refused.returncode == 1, (refused.stdout, refused.stderr)
    said = " ".join((refused.stdout + refused.stderr).split())
    assert "NotMigratable" in said and "needs a live migration" in said, said
    shell.json("vm", "destroy", "c1", "--wait")
    for pool in ("local1", "local2"):
        shell.json("pool", "destroy", pool, "--delete", "--wait")
    assert shell.json("pool", "list") == []
