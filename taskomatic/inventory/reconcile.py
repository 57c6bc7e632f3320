"""What the reconciliation reads of the inventory: which tasks hold rows, and since when.

A task holds claims (its places in the resource lines) and at most one capacity reservation; the
reconciliation asks Temporal whether each holder still runs, and drops what ended ones left.
"""

from __future__ import annotations

from datetime import datetime

from taskomatic.inventory.db import Database


def claim_ages(db: Database) -> dict[str, datetime]:
    """Every task holding claims → when it took its first (timezone-aware)."""
    with db.transaction() as cur:
        cur.execute("SELECT task_id, MIN(claimed_at) AS at FROM claims GROUP BY task_id")
        return {row["task_id"]: row["at"] for row in cur.fetchall()}


def reservation_ages(db: Database) -> dict[str, datetime]:
    """Every task holding a capacity reservation → when it made it (timezone-aware)."""
    with db.transaction() as cur:
        cur.execute("SELECT task_id, created_at AS at FROM reservations")
        return {row["task_id"]: row["at"] for row in cur.fetchall()}
