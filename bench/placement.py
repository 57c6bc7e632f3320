"""Placement throughput: ``inventory.reserve_capacity`` against a bare transaction, in one run.

    python -m bench.placement [--quick] [--hosts 10 100 1000] [--placements N] [--threads 32]

For each host count, in a fresh PostgreSQL database (one cluster of that many hosts with room
for every placement): ``--placements`` reservations made by ``--threads`` threads through
taskomatic's own ``reserve_capacity`` (placement picks the host), against as many bare
transactions that lock one random host row and insert one reservation, in alternating rounds
(bare, placement, placement, bare; ``--quick``: one of each, fewer placements) so that drift
hits both alike. Then the overcommit check: 500 concurrent placements into 10 hosts with room
for 160 must leave no host above its capacity.

Goals (issue 13): at 1,000 hosts ≥ 0.5x the bare transaction; ≤ 1.5x slowdown from 10 to
1,000 hosts; 0 overcommitted hosts. The last line is JSON with every figure.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from temporalio.exceptions import ApplicationError

from bench.stack import fresh_database, postgres_server
from taskomatic import inventory
from taskomatic.errors import ErrorType, error_info
from taskomatic.inventory.db import Database
from taskomatic.models import ClusterSpec, ReserveCapacityInput

CLUSTER = "bench"


def add_hosts(db: Database, count: int, vcpus: int, memory_mib: int) -> list[int]:
    """``count`` hosts of cluster ``bench`` with that capacity (rows only: placement reads the
    inventory, not libvirt); returns their ids."""
    inventory.create_cluster(db, ClusterSpec(name=CLUSTER, hypervisor_type="test"))
    with db.transaction() as cur:
        cur.execute(
            "INSERT INTO hosts (name, uri, cluster_id, vcpus, memory_mib)"
            " SELECT 'b' || i, 'test:///bench/b' || i || '.xml', c.id, %s, %s"
            " FROM generate_series(1, %s) i, clusters c WHERE c.name = %s RETURNING id",
            (vcpus, memory_mib, count, CLUSTER))
        ids = [r["id"] for r in cur.fetchall()]
    with db.transaction() as cur:
        cur.execute("ANALYZE")  # as autovacuum would have done on an inventory of that size
    return ids


def run_all(threads: int, n: int, one: Callable[[int], Any]) -> tuple[float, list[Any]]:
    """``one(i)`` for i < n on ``threads`` threads: (seconds, results or exceptions)."""
    def safe(i: int) -> Any:
        try:
            return one(i)
        except Exception as err:  # counted by the caller
            return err
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(safe, range(n)))
    return time.perf_counter() - start, results


def placements(db: Database, tag: str) -> Callable[[int], Any]:
    def one(i: int) -> Any:
        return inventory.reserve_capacity(db, ReserveCapacityInput(
            task_id=f"{tag}-{i}", vm_name=f"{tag}-{i}", vcpus=1, memory_mib=64,
            cluster=CLUSTER))
    return one


def bare(db: Database, ids: list[int], tag: str) -> Callable[[int], Any]:
    def one(i: int) -> Any:
        with db.transaction() as cur:
            cur.execute("SELECT id FROM hosts WHERE id = %s FOR UPDATE", (random.choice(ids),))
            host = cur.fetchone()["id"]
            cur.execute("INSERT INTO reservations (task_id, host_id, vm_name, vcpus, memory_mib)"
                        " VALUES (%s, %s, %s, 1, 64)", (f"{tag}-{i}", host, f"{tag}-{i}"))
    return one


def clear(db: Database) -> None:
    with db.transaction() as cur:
        cur.execute("DELETE FROM reservations")


def overcommitted(db: Database) -> int:
    """Hosts whose VMs and reservations exceed their capacity."""
    return sum(1 for h in inventory.list_hosts(db)
               if h.used_vcpus + h.reserved_vcpus > h.vcpus
               or h.used_memory_mib + h.reserved_memory_mib > h.memory_mib)


def measure(server: str, hosts: int, args: argparse.Namespace) -> dict[str, Any]:
    name = f"taskomatic_bench_place_{uuid.uuid4().hex[:8]}"
    with fresh_database(server, name) as url:
        db = Database(url, max_connections=args.threads + 2)
        try:
            ids = add_hosts(db, hosts, vcpus=1_000_000, memory_mib=1_000_000_000)
            rates: dict[str, list[float]] = {"bare": [], "placement": []}
            rounds = ["bare", "placement"] if args.quick else ["bare", "placement",
                                                               "placement", "bare"]
            run_all(args.threads, 50, placements(db, "warm"))  # connections, caches
            clear(db)
            for r, side in enumerate(rounds):
                tag = f"{side}{r}"
                one = placements(db, tag) if side == "placement" else bare(db, ids, tag)
                seconds, results = run_all(args.threads, args.placements, one)
                errors = [e for e in results if isinstance(e, Exception)]
                if errors:
                    raise RuntimeError(f"{side}: {len(errors)} failed, first: {errors[0]!r}")
                rates[side].append(args.placements / seconds)
                over = overcommitted(db)
                if over:
                    raise RuntimeError(f"{over} hosts overcommitted after {side}")
                clear(db)
        finally:
            db.close()
    bare_rate = sum(rates["bare"]) / len(rates["bare"])
    place_rate = sum(rates["placement"]) / len(rates["placement"])
    return {"hosts": hosts, "bare_per_s": round(bare_rate), "placement_per_s": round(place_rate),
            "ratio": round(place_rate / bare_rate, 3)}


def overcommit_check(server: str, args: argparse.Namespace) -> dict[str, Any]:
    """500 concurrent placements of 1 vCPU into 10 hosts of 16 vCPUs: 160 placed, the rest
    refused with NoCapacity, no host above its capacity."""
    name = f"taskomatic_bench_over_{uuid.uuid4().hex[:8]}"
    with fresh_database(server, name) as url:
        db = Database(url, max_connections=args.threads + 2)
        try:
            add_hosts(db, 10, vcpus=16, memory_mib=1_000_000)
            _, results = run_all(args.threads, 500, placements(db, "over"))
            refused = [e for e in results if isinstance(e, ApplicationError)
                       and error_info(e).type is ErrorType.NO_CAPACITY]
            other = [e for e in results if isinstance(e, Exception) and e not in refused]
            return {"placed": len(results) - len(refused) - len(other),
                    "refused": len(refused), "other_errors": len(other),
                    "overcommitted_hosts": overcommitted(db)}
        finally:
            db.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.placement", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one round per side, 300 placements")
    p.add_argument("--hosts", type=int, nargs="+", default=[10, 100, 1000])
    p.add_argument("--placements", type=int, help="per round (default 2000; quick 300)")
    p.add_argument("--threads", type=int, default=32)
    p.add_argument("--pg-url", help="PostgreSQL server URL (default: local, else embedded)")
    p.add_argument("--embedded-pg", action="store_true")
    args = p.parse_args(argv)
    args.placements = args.placements or (300 if args.quick else 2000)
    with tempfile.TemporaryDirectory() as tmp, \
            postgres_server(args.pg_url, args.embedded_pg, Path(tmp) / "pg") as (server, kind):
        rows = [measure(server, h, args) for h in args.hosts]
        over = overcommit_check(server, args)
    print(f"{'hosts':>6} {'bare/s':>8} {'placement/s':>12} {'ratio':>6}")
    for row in rows:
        print(f"{row['hosts']:>6} {row['bare_per_s']:>8} {row['placement_per_s']:>12}"
              f" {row['ratio']:>6}")
    first, last = rows[0], rows[-1]
    slowdown = round(first["placement_per_s"] / last["placement_per_s"], 3)
    print(f"slowdown {first['hosts']} → {last['hosts']} hosts: {slowdown}x; "
          f"overcommit check: {over}")
    goals = {f"ratio at {last['hosts']} hosts >= 0.5": last["ratio"] >= 0.5,
             "slowdown <= 1.5": slowdown <= 1.5,
             "0 overcommitted hosts": over["overcommitted_hosts"] == 0}
    print("goals: " + "; ".join(f"{goal}: {'met' if ok else 'NOT met'}"
                                for goal, ok in goals.items()))
    print(json.dumps({"postgres": kind, "threads": args.threads,
                      "placements_per_round": args.placements, "rows": rows,
                      "slowdown": slowdown, "overcommit": over, "goals": goals}))
    return 1 if over["overcommitted_hosts"] or over["other_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
