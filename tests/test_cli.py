"""The ``taskomatic`` CLI against a running ``taskomatic dev`` stack, as an operator uses it.

One ``taskomatic dev --hosts 2`` runs in the background from a temporary directory; every command
is a separate ``taskomatic`` process run from that directory, so it finds the stack through
``.taskomatic/env`` exactly as a second shell would.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from helpers import free_port_pair
from temporalio.api.common.v1 import Payload
from temporalio.client import Client

from taskomatic.inventory.db import drop_database, with_dbname

CLI = str(Path(sys.executable).parent / "taskomatic")


class Shell:
    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd, self.env = cwd, env

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CLI, *args], cwd=self.cwd, env=self.env, capture_output=True,
                              text=True, timeout=120)

    def json(self, *args: str) -> Any:
        done = self.run(*args, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@pytest.fixture(scope="module")
def shell(tmp_path_factory: pytest.TempPathFactory, pg_server_url: str) -> Iterator[Shell]:
    cwd = tmp_path_factory.mktemp("cli")
    port = free_port_pair()
    db_url = with_dbname(pg_server_url, f"taskomatic_cli_{port}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKOMATIC_")}
    env.update(TASKOMATIC_TEMPORAL_ADDRESS=f"127.0.0.1:{port}",
               TASKOMATIC_TEMPORAL_UI_URL=f"http://127.0.0.1:{port + 1000}",
               TASKOMATIC_DATABASE_URL=db_url, COLUMNS="200",
               TASKOMATIC_API_ADDRESS=f"127.0.0.1:{free_port_pair()}")
    stack = subprocess.Popen([CLI, "dev", "--hosts", "2"], cwd=cwd, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    # The commands below must find the stack through .taskomatic/env, not through our env.
    plain = {k: v for k, v in env.items() if not k.startswith("TASKOMATIC_")}
    sh = Shell(cwd, plain)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert stack.poll() is None, stack.stdout.read() if stack.stdout else ""
            if (cwd / ".taskomatic/env").exists():
                listed = sh.run("host", "list", "--json")
                if listed.returncode == 0 and len(json.loads(listed.stdout)) == 2:
                    break
            time.sleep(0.3)
        else:
            pytest.fail("dev stack did not come up within 60 s")
        yield sh
    finally:
        stack.send_signal(signal.SIGINT)
        out, _ = stack.communicate(timeout=60)
        assert stack.returncode == 0, out
        drop_database(db_url)


def test_vm_lifecycle_through_the_cli(shell: Shell) -> None:
    hosts = shell.json("host", "list")
    assert {h["name"] for h in hosts} == {"host-1", "host-2"}
    assert {"name", "uri", "state", "vcpus", "memory_mib", "used_vcpus"} <= set(hosts[0])

    created = shell.json("vm", "create", "web1", "--vcpus", "2", "--memory-mib", "1024",
                         "--host", "host-2", "--start", "--wait")
    assert (created["vm"], created["host"], created["state"]) == ("web1", "host-2", "running")
    vms = shell.json("vm", "list")
    assert [(v["name"], v["host"], v["state"], v["vcpus"], v["memory_mib"]) for v in vms] == [
        ("web1", "host-2", "running", 2, 1024)]

    live = shell.run("vm", "stop", "web1", "--wait")  # the human display
    assert live.returncode == 0, live.stderr
    assert "wait for shutoff" in live.stdout and "shutoff" in live.stdout
    submitted = shell.json("vm", "destroy", "web1")
    shown: dict[str, Any] = {}
    for _ in range(100):
        shown = shell.json("tasks", "show", submitted["id"])
        if shown["state"] != "running":
            break
        time.sleep(0.1)
    assert shown["state"] == "complete" and shown["kind"] == "DestroyVm"
    assert [s["name"] for s in shown["progress"]["steps"]][-1].startswith("remove from inventory")
    assert shell.json("vm", "list") == []

    kinds = [t["kind"] for t in shell.json("tasks", "list", "--vm", "web1")]
    assert sorted(kinds) == ["CreateVm", "DestroyVm", "StopVm"]


def test_dev_stack_stores_ciphertext_and_decodes_for_the_ui(shell: Shell) -> None:
    state = shell.cwd / ".taskomatic"
    assert (state / "encryption.keys").stat().st_mode & 0o077 == 0
    assert (state / "api-token").stat().st_mode & 0o077 == 0
    env = dict(line.split("=", 1) for line in (state / "env").read_text().splitlines()
               if "=" in line)
    address, api = (env[k].strip('"') for k in ("TASKOMATIC_TEMPORAL_ADDRESS",
                                                "TASKOMATIC_API_ADDRESS"))
    task = shell.json("vm", "create", "cipher1", "--vcpus", "1", "--memory-mib", "64", "--wait",
                      "--requested-by", "carol@example.org")
    shown = shell.json("tasks", "show", task["task_id"])  # the CLI decrypts with the dev key
    assert shown["result"]["vm"] == "cipher1"
    assert shown["requested_by"] == "carol@example.org"
    assert "requested by: carol@example.org" in shell.run("tasks", "show", task["task_id"]).stdout

    async def stored_input() -> Payload:  # read WITHOUT the codec, as the store holds it
        client = await Client.connect(address)
        history = await client.get_workflow_handle(task["task_id"]).fetch_history()
        started = history.events[0].workflow_execution_started_event_attributes
        assert b"cipher1" not in started.input.SerializeToString()
        return started.input.payloads[0]

    sealed = asyncio.run(stored_input())
    assert sealed.metadata["encoding"] == b"binary/encrypted"
    body = json.dumps({"payloads": [json_format.MessageToDict(sealed)]}).encode()
    token = (state / "api-token").read_text().strip()
    ui_settings = json.loads(urllib.request.urlopen(
        f"{env['TASKOMATIC_TEMPORAL_UI_URL'].strip(chr(34))}/api/v1/settings", timeout=30).read())
    assert ui_settings["Codec"]["Endpoint"] == f"http://{api}/codec/{token}"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(
            f"http://{api}/codec/decode", data=body,
            headers={"Content-Type": "application/json"}), timeout=30)
    assert refused.value.code == 401
    decoded = urllib.request.urlopen(urllib.request.Request(
        f"{ui_settings['Codec']['Endpoint']}/decode", data=body,
        headers={"Content-Type": "application/json", "X-Namespace": "default"}), timeout=30)
    assert b"cipher1" in base64.b64decode(json.loads(decoded.read())["payloads"][0]["data"])
    assert shell.run("vm", "destroy", "cipher1", "--wait").returncode == 0


def test_refused_requests_exit_2_naming_the_field(shell: Shell) -> None:
    cases = [
        (["vm", "create", "bad name", "--vcpus", "1", "--memory-mib", "64"], "name"),
        (["vm", "create", "x1", "--vcpus", "0", "--memory-mib", "64"], "vcpus"),
        (["vm", "create", "x1", "--vcpus", "1", "--memory-mib", "-5"], "memory_mib"),
        (["vm", "create", "x1", "--vcpus", "1", "--memory-mib", "64", "--host", "nope"], "host"),
        (["vm", "start", "ghost"], "name"),
        (["host", "add", "h9", "--uri", "qemu+tcp://127.0.0.1:1/system"], "uri"),
        (["host", "add", "h9", "--uri", "http://example"], "uri"),
        (["host", "add", "h9", "--uri", "test:///default", "--migration-uri", "ftp://x"],
         "migration_uri"),
        (["vm", "migrate", "ghost"], "name"),
        (["vm", "migrate", "ghost", "--to", "bad name"], "to"),
        (["host", "clear", "nope"], "host"),
        (["host", "restore", "nope", "--wait"], "host"),
        (["tasks", "show", "no-such-task"], "id"),
        (["tasks", "cancel", "no-such-task"], "id"),
        (["vm", "list", "--host", "nope"], "host"),
    ]
    for args, field in cases:
        done = shell.run(*args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert f"error: {field}:" in " ".join(done.stderr.split()), (args, done.stderr)
        assert "Traceback" not in done.stderr
    assert shell.json("vm", "list") == []
    assert len(shell.json("host", "list")) == 2
    shown = shell.run("tasks", "show", "no-such-task")
    assert "error: id: no task 'no-such-task'" in " ".join(shown.stderr.split()), shown.stderr


def test_a_failed_task_exits_1_with_the_structured_error(shell: Shell) -> None:
    done = shell.run("vm", "create", "huge", "--vcpus", "64", "--memory-mib", "64", "--wait",
                     "--json")
    assert done.returncode == 1
    error = json.loads(done.stdout)["error"]
    assert (error["step"], error["error_type"], error["compensated"]) == (
        "reserve capacity", "NoCapacity", ["release capacity"])
    human = shell.run("vm", "create", "huge", "--vcpus", "64", "--memory-mib", "64", "--wait")
    assert human.returncode == 1 and "NoCapacity" in human.stderr
    assert shell.json("vm", "list") == []


def test_the_queue_through_the_cli(shell: Shell, tmp_path: Path) -> None:
    shell.json("vm", "create", "q1", "--vcpus", "1", "--memory-mib", "64", "--wait")
    refused = shell.run("vm", "start", "q1", "--after", "no-such-task")
    assert refused.returncode == 2 and "after" in refused.stderr
    # Forty tasks on one VM in one batch: they run one at a time, the rest wait in line.
    steps = [{"key": f"s{i}", "kind": "StartVm" if i % 2 == 0 else "StopVm",
              "request": {"name": "q1"} if i % 2 == 0 else {"name": "q1", "force": True}}
             for i in range(40)]
    steps.append({"key": "gone", "kind": "DestroyVm", "request": {"name": "q1"},
                  "after": ["s39"]})
    (tmp_path / "batch.json").write_text(json.dumps({"tasks": steps}))
    submitted = shell.json("batch", str(tmp_path / "batch.json"))["tasks"]
    ids = {row["key"]: row["id"] for row in submitted}
    assert len(ids) == 41
    cancelled = shell.run("tasks", "cancel", ids["s38"])
    assert cancelled.returncode == 0, cancelled.stderr
    waiting = shell.json("tasks", "list", "--state", "waiting", "--vm", "q1")
    assert waiting, "nothing waiting in line"
    assert all(t["waiting_on"] and t["resources"] == ["vm:q1"] for t in waiting)
    assert {"id", "kind", "state", "resources", "waiting_on", "submitted_at", "started_at",
            "finished_at", "error"} <= set(waiting[0])
    watched = shell.run("tasks", "watch", "--vm", "q1", "--times", "2", "--every", "0.2")
    assert watched.returncode == 0 and "In the queue" in watched.stdout

    final: dict[str, Any] = {}
    for _ in range(300):
        final = shell.json("tasks", "show", ids["gone"])
        if final["state"] in ("complete", "error", "cancelled"):
            break
        time.sleep(0.2)
    assert final["state"] == "complete", final
    assert final["after"] == [ids["s39"]]
    s38 = shell.json("tasks", "show", ids["s38"])
    assert s38["state"] == "cancelled" and s38["error"] is not None
    done = shell.json("tasks", "list", "--vm", "q1", "--state", "complete", "--limit", "100")
    assert len(done) == 41  # the create, 39 of the 40 steps (s38 cancelled), the destroy
    human = shell.run("tasks", "show", ids["gone"])
    assert "after: " + ids["s39"] in " ".join(human.stdout.split())
    assert shell.json("vm", "list") == []


def test_reconciliation_runs_now_and_on_a_schedule(shell: Shell) -> None:
    report = shell.json("reconcile", "now", "--wait")
    assert report["hosts_checked"] == 2 and report["findings"] == [], report
    # The worker created the schedule at start-up; asking again updates it.
    again = shell.run("reconcile", "schedule", "--every", "120")
    assert again.returncode == 0 and "schedule updated: every 120 s" in again.stdout


def test_migrate_clear_activate_restore_through_the_cli(shell: Shell) -> None:
    for name in ("m1", "m2", "m3"):
        shell.json("vm", "create", name, "--vcpus", "1", "--memory-mib", "256", "--host",
                   "host-1", "--start", "--wait")
    moved = shell.json("vm", "migrate", "m1", "--to", "host-2", "--wait")
    assert (moved["vm"], moved["host"], moved["state"]) == ("m1", "host-2", "running")

    plan = shell.json("host", "clear", "host-1", "--dry-run")
    assert plan["dry_run"] and sorted(m["vm"] for m in plan["plan"]) == ["m2", "m3"]
    assert {m["destination"] for m in plan["plan"]} == {"host-2"}
    assert {h["name"]: h["state"] for h in shell.json("host", "list")}["host-1"] == "up"

    cleared = shell.run("host", "clear", "host-1", "--wait")  # the live display, then a report
    assert cleared.returncode == 0, cleared.stderr
    assert "maintenance" in cleared.stdout and "2 moved" in cleared.stdout
    assert {v["name"]: v["host"] for v in shell.json("vm", "list")} == {
        "m1": "host-2", "m2": "host-2", "m3": "host-2"}
    refused = shell.run("vm", "migrate", "m2", "--to", "host-1")
    assert refused.returncode == 2 and "error: to:" in refused.stderr

    assert shell.json("host", "activate", "host-1", "--wait")["state"] == "up"
    restored = shell.json("host", "restore", "host-1", "--wait")
    assert sorted(o["vm"] for o in restored["outcomes"]) == ["m2", "m3"]
    assert {v["name"]: v["host"] for v in shell.json("vm", "list")} == {
        "m1": "host-2", "m2": "host-1", "m3": "host-1"}
    for name in ("m1", "m2", "m3"):
        shell.json("vm", "destroy", name, "--wait")
