"""Per-resource ordering in PostgreSQL: claims served in seq order, at most `capacity` at a time.

Every operation runs in one transaction that first locks the rows of the resources it touches, in
name order (one global lock order, so the transactions themselves cannot deadlock). Under those
locks a new claim gets the next seq, which makes seq order the order in which tasks joined each
line. A waiting claim is granted when every one of its resources has room:

- a plain resource (capacity 1) is first-in-first-out: free, and nobody ahead of it in line;
- a counted slot (capacity > 1, e.g. ``migrate:cluster``) only needs a free slot. Slots are not
  served in order, so a task held up by another of its slots does not hold back the tasks behind
  it, which would leave slots idle.

A task's last inventory step may release its claims in its own transaction (``finishing``):
that transaction locks hosts first, then resources. No transaction locks a resource before a
host, so the two lock orders cannot deadlock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import psycopg2.extras

from taskomatic.inventory.db import Database
from taskomatic.models import Blocker, ClaimResult, QueuedClaim

T = TypeVar("T")


def _lock(cur: Any, capacities: Mapping[str, int]) -> None:
    """Create missing resource rows (with their capacity) and lock them all, in name order."""
    names = sorted(capacities)
    psycopg2.extras.execute_values(
        cur,
        "INSERT INTO resources (name, capacity) VALUES %s ON CONFLICT (name) DO UPDATE"
        " SET capacity = EXCLUDED.capacity WHERE resources.capacity <> EXCLUDED.capacity",
        [(name, capacities[name]) for name in names],
    )
    cur.execute("SELECT name FROM resources WHERE name = ANY(%s) ORDER BY name FOR UPDATE",
                (names,))


def _resources_of(cur: Any, task_ids: Iterable[str]) -> list[str]:
    cur.execute("SELECT DISTINCT resource FROM claims WHERE task_id = ANY(%s)", (list(task_ids),))
    return [row["resource"] for row in cur.fetchall()]


def _capacities(cur: Any, names: Iterable[str]) -> dict[str, int]:
    cur.execute("SELECT name, capacity FROM resources WHERE name = ANY(%s)", (list(names),))
    return {row["name"]: row["capacity"] for row in cur.fetchall()}


def enqueue(db: Database, task_id: str, kind: str, capacities: Mapping[str, int]) -> None:
    """Put a task in line for its resources (idempotent: claims it already has are kept)."""
    with db.transaction() as cur:
        _enqueue(cur, task_id, kind, capacities)


def _enqueue(cur: Any, task_id: str, kind: str, capacities: Mapping[str, int]) -> None:
    _lock(cur, capacities)
    cur.execute("SELECT resource FROM claims WHERE task_id = %s", (task_id,))
    missing = sorted(set(capacities) - {row["resource"] for row in cur.fetchall()})
    if not missing:
        return
    cur.execute("SELECT nextval('claim_seq') AS seq")
    seq = cur.fetchone()["seq"]
    psycopg2.extras.execute_values(
        cur, "INSERT INTO claims (task_id, resource, seq, kind) VALUES %s",
        [(task_id, name, seq, kind) for name in missing])


def acquire(db: Database, task_id: str, kind: str, capacities: Mapping[str, int],
            closed: Iterable[str] = ()) -> tuple[ClaimResult, list[str]]:
    """Join the line if not in it yet and take the resources if the task's turn has come.

    ``closed`` names tasks known to have ended without releasing (terminated, say): their claims
    are dropped first. Returns the outcome and the tasks that may now run (to be woken).
    """
    closed = [t for t in closed if t != task_id]
    with db.transaction() as cur:
        purged_from = _resources_of(cur, closed)
        _lock(cur, {**_capacities(cur, purged_from), **capacities})
        purged: list[str] = []
        if closed:
            cur.execute("DELETE FROM claims WHERE task_id = ANY(%s) RETURNING task_id", (closed,))
            purged = sorted({row["task_id"] for row in cur.fetchall()})
        _enqueue(cur, task_id, kind, capacities)
        blockers = _blockers(cur, task_id)
        if not blockers:
            cur.execute("UPDATE claims SET granted_at = now()"
                        " WHERE task_id = %s AND granted_at IS NULL", (task_id,))
        woken = [t for t in _heads(cur, purged_from) if t != task_id] if purged else []
        return ClaimResult(granted=not blockers, blockers=blockers, purged=purged), woken


def _blockers(cur: Any, task_id: str) -> list[Blocker]:
    """Why the task's waiting claims cannot be granted yet (empty: they can).

    Per blocked resource, the nearest task ahead in line comes first, then the holders. Only
    holders count against a counted slot (see the module's docstring).
    """
    cur.execute(
        "SELECT c.resource, c.seq, r.capacity FROM claims c JOIN resources r ON r.name = c.resource"
        " WHERE c.task_id = %s AND c.granted_at IS NULL ORDER BY c.resource", (task_id,))
    mine = cur.fetchall()
    found: list[Blocker] = []
    for claim in mine:
        cur.execute(
            "SELECT task_id, granted_at IS NOT NULL AS holds FROM claims"
            " WHERE resource = %s AND task_id <> %s"
            " AND (granted_at IS NOT NULL OR (seq < %s AND %s = 1))"
            " ORDER BY (granted_at IS NOT NULL), seq DESC",
            (claim["resource"], task_id, claim["seq"], claim["capacity"]))
        ahead = cur.fetchall()
        if len(ahead) >= claim["capacity"]:
            found += [Blocker(resource=claim["resource"], task_id=row["task_id"],
                              holds=row["holds"]) for row in ahead]
    return found


def _heads(cur: Any, resources: Iterable[str]) -> list[str]:
    """Waiting tasks that may be able to run now: the first in line of a plain resource, every
    waiter of a counted slot (any of them may fit)."""
    cur.execute(
        "SELECT DISTINCT w.task_id FROM resources r CROSS JOIN LATERAL ("
        "  SELECT task_id FROM claims c WHERE c.resource = r.name AND c.granted_at IS NULL"
        "  ORDER BY c.seq LIMIT CASE WHEN r.capacity = 1 THEN 1 END) w"
        " WHERE r.name = ANY(%s)", (list(resources),))
    return sorted(row["task_id"] for row in cur.fetchall())


def release(db: Database, task_id: str, resources: Iterable[str] | None = None
            ) -> tuple[list[str], list[str]]:
    """Give up a task's claims (all, or only ``resources``); idempotent.

    Returns (released resources, tasks that may now run). The tasks at the front of every line
    the task was in are returned even when it held nothing, so a retried release still wakes
    them if the first attempt's wake-ups were lost.
    """
    with db.transaction() as cur:
        return release_in(cur, task_id, resources)


def release_in(cur: Any, task_id: str, resources: Iterable[str] | None = None
               ) -> tuple[list[str], list[str]]:
    """``release`` inside the caller's transaction (cursor ``cur``)."""
    names = _resources_of(cur, [task_id]) if resources is None else sorted(resources)
    if not names:
        return [], []
    _lock(cur, _capacities(cur, names))
    cur.execute("DELETE FROM claims WHERE task_id = %s AND resource = ANY(%s)"
                " RETURNING resource", (task_id, names))
    released = sorted(row["resource"] for row in cur.fetchall())
    return released, [t for t in _heads(cur, names) if t != task_id]


def finishing(db: Database, task_id: str | None, step: Callable[[Any], T]
              ) -> tuple[T, list[str]]:
    """Run ``step(cur)``, a task's last inventory step, and with ``task_id`` release every claim
    of that task in the same transaction: one commit for both, and the resources are free the
    moment the step's outcome is recorded. Returns (the step's result, the tasks to wake);
    nothing is released if the step raises. Idempotent as ``release`` is."""
    with db.transaction() as cur:
        result = step(cur)
        woken = release_in(cur, task_id)[1] if task_id is not None else []
        return result, woken


def drop_closed(db: Database, task_ids: Iterable[str]) -> tuple[list[str], list[str]]:
    """Drop every claim of tasks that ended without releasing; returns (dropped, to wake)."""
    task_ids = list(task_ids)
    with db.transaction() as cur:
        names = _resources_of(cur, task_ids)
        if not names:
            return [], []
        _lock(cur, _capacities(cur, names))
        cur.execute("DELETE FROM claims WHERE task_id = ANY(%s) RETURNING task_id", (task_ids,))
        dropped = sorted({row["task_id"] for row in cur.fetchall()})
        return dropped, _heads(cur, names)


def queue(db: Database, task_ids: Iterable[str] | None = None) -> list[QueuedClaim]:
    """Every claim (or those of ``task_ids``), by resource then place in line."""
    with db.transaction() as cur:
        query = ("SELECT task_id, kind, resource, seq, granted_at IS NOT NULL AS holds"
                 " FROM claims")
        if task_ids is None:
            cur.execute(query + " ORDER BY resource, seq")
        else:
            cur.execute(query + " WHERE task_id = ANY(%s) ORDER BY resource, seq",
                        (list(task_ids),))
        return [QueuedClaim.model_validate(row) for row in cur.fetchall()]
