"""Configuration: ``TASKOMATIC_*`` environment variables over ``.taskomatic/env`` over defaults.

``taskomatic dev`` writes the settings it used to ``.taskomatic/env``; every other command run from
the same directory picks them up, so a second shell drives the same stack.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg2.extensions
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

STATE_DIR = Path(".taskomatic")
ENV_FILE = STATE_DIR / "env"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TASKOMATIC_", env_file=ENV_FILE, env_file_encoding="utf-8", extra="ignore"
    )

    temporal_address: str = Field("127.0.0.1:7233", description="Temporal frontend host:port")
    temporal_namespace: str = "default"
    task_queue: str = "taskomatic"
    temporal_ui_url: str = "http://127.0.0.1:8233"
    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:5432/taskomatic",
        description="libpq URL of the inventory database",
    )
    state_dir: Path = STATE_DIR
    # `taskomatic lab`: where a lab's hosts live, and its cache (kept across runs).
    lab_dir: Path = STATE_DIR / "lab"
    lab_cache_dir: Path = STATE_DIR / "lab-cache"

    # Worker sizing: bounded parallelism (the seed's "bounded number of workers").
    max_concurrent_activities: int = Field(64, ge=1, le=10_000)
    max_concurrent_workflow_tasks: int = Field(64, ge=1, le=10_000)
    activity_threads: int = Field(64, ge=1, le=1_000)
    # A worker told to stop (SIGTERM/SIGINT, a rolling deploy) takes no new work and lets the
    # activities it runs (a live migration) finish for up to this long before it cancels them.
    worker_drain_seconds: float = Field(60.0, ge=0, le=86_400,
                                        description="drain time of a stopping worker")

    # Hosts that stop answering (README "Hosts that stop answering"): libvirt keepalive (a ping
    # every interval; the connection is closed after `count` unanswered ones), how long an open
    # may take, how many libvirt calls one host may have in flight per worker (its bulkhead) and
    # how long a call waits for one of them; the host monitor's probe interval and the time
    # without an answer after which an up host becomes non_responsive.
    host_keepalive_interval_seconds: int = Field(2, ge=1, le=600)
    host_keepalive_count: int = Field(3, ge=1, le=100)
    host_connect_timeout_seconds: float = Field(5.0, gt=0, le=600)
    host_calls_per_host: int = Field(8, ge=1, le=1_000)
    host_call_slot_wait_seconds: float = Field(1.0, ge=0, le=600)
    host_check_interval_seconds: float = Field(2.0, gt=0, le=3600)
    host_unresponsive_seconds: float = Field(10.0, gt=0, le=86_400)
    # Observability: the worker's /metrics, /healthz and /readyz ("host:port"; empty: none) and
    # the Temporal SDK's own Prometheus metrics (its runtime telemetry; empty: none).
    metrics_address: str = "127.0.0.1:9464"
    temporal_metrics_address: str = ""

    # Task behaviour.
    stop_timeout_seconds: float = Field(60.0, gt=0, le=3600)
    pool_roots: list[str] = Field(
        default_factory=lambda: ["/var/lib/taskomatic/pools"],
        description="storage pool paths (dir, netfs) must lie under one of these directories",
    )

    # Ordering: how many tasks may wait on another task (prerequisites, a place in line) at once
    # per worker.
    max_waiting_tasks: int = Field(1000, ge=1, le=100_000)
    # The safety net: how often the reconciliation compares inventory, libvirt and the queue.
    reconcile_interval_seconds: float = Field(300.0, ge=5, le=86_400)
    # The audit log (task_events) keeps each task's story this long, independently of Temporal's
    # retention; the worker sweeps older events every hour.
    task_events_retention_days: float = Field(365.0, gt=0, le=36_500,
                                              description="how long the audit log keeps events")

    # Migration and clearing hosts.
    migration_bandwidth_mib_s: int = Field(0, ge=0, le=100_000,
                                           description="live migration bandwidth cap; 0 = none")
    migration_progress_timeout_seconds: float = Field(
        30.0, gt=0, le=3600, description="abort a migration that made no progress for this long")
    migration_completion_timeout_seconds: float = Field(
        600.0, gt=0, le=86_400, description="abort a migration that has not finished by then")
    migration_save_dir: Path = Field(STATE_DIR / "saves",
                                     description="save files of cold (save/restore) moves")
    # Concurrent migrations across all tasks: the capacities of the slots migrate-out:HOST,
    # migrate-in:HOST and migrate:cluster (see taskomatic/ordering.py).
    migrations_out_per_host: int = Field(2, ge=1, le=64)
    migrations_in_per_host: int = Field(2, ge=1, le=64)
    migrations_in_cluster: int = Field(5, ge=1, le=1_000)
    clear_host_batch: int = Field(50, ge=1, le=1_000,
                                  description="VMs per clear-host run before continue-as-new")

    log_format: Literal["auto", "console", "json"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # Security (README "Security"). Payload encryption is on when keys are configured.
    encryption_key_file: Path | None = None
    encryption_keys: SecretStr | None = None  # "<id>:<base64>,…"; first = current key
    dev_encryption: bool = True  # `taskomatic dev` makes a key; the Web UI decodes via the API
    codec_cors_origins: list[str] = Field(default_factory=list, description="besides the UI's")
    # The HTTP API (`taskomatic api`, README "The HTTP API"): OIDC bearer tokens are checked
    # against the JWKS (a file, or a URL fetched and cached), with this issuer and audience.
    api_address: str = "127.0.0.1:8235"
    api_oidc_issuer: str | None = None
    api_oidc_audience: str | None = None
    api_jwks_file: Path | None = None
    api_jwks_url: str | None = None
    # Explicit local mode: a request without credentials acts as the local admin. Never in
    # production (deploy/ sets it false); for a laptop's API only.
    api_local_admin: bool = False
    api_timeout_seconds: int = Field(15, ge=1, le=600,
                                       description="idle/stalled client connections are closed")
    temporal_tls: bool = False  # implied by any temporal_tls_* file
    temporal_tls_ca_file: Path | None = None
    temporal_tls_cert_file: Path | None = None
    temporal_tls_key_file: Path | None = None
    temporal_tls_server_name: str | None = None
    temporal_api_key: SecretStr | None = None
    database_sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca",
                              "verify-full"] | None = None
    database_sslrootcert: Path | None = None
    database_sslcert: Path | None = None
    database_sslkey: Path | None = None

    @model_validator(mode="after")
    def _database_ssl(self) -> Settings:
        """Fold the database_ssl* settings into database_url, so every connection made from it
        (pool, migrations, admin) hands them to libpq; parameters in the URL itself win."""
        extra = {"sslmode": self.database_sslmode, "sslrootcert": self.database_sslrootcert,
                 "sslcert": self.database_sslcert, "sslkey": self.database_sslkey}
        self.database_url = libpq_url_with(self.database_url, {k: str(v) for k, v in
                                                               extra.items() if v is not None})
        return self


def libpq_url_with(url: str, params: dict[str, str]) -> str:
    """``url`` (a postgresql:// URL or a key=value string) with ``params`` added where absent.

    What the DSN already sets is decided by libpq's own parser (``parse_dsn``), so a quoted value
    that mentions a parameter (``password='x sslmode=disable'``) sets nothing but itself. A URL
    stays a URL (the parameters join its query string); a key=value string is rewritten by libpq's
    ``make_dsn``. Raises ValueError naming ``TASKOMATIC_DATABASE_URL`` if libpq cannot parse it
    and there is something to add (else it is left for libpq to refuse when connecting).
    """
    if not params:
        return url
    try:
        present = psycopg2.extensions.parse_dsn(url)
    except psycopg2.ProgrammingError as err:
        raise ValueError(f"TASKOMATIC_DATABASE_URL is not a libpq URL or key=value string: "
                         f"{str(err).strip()}") from None
    added = {k: v for k, v in params.items() if k not in present}
    if not added:
        return url
    if "://" in url:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        return urlunsplit(parts._replace(query=urlencode([*query, *added.items()],
                                                         quote_via=quote)))
    return str(psycopg2.extensions.make_dsn(url, **added))


def split_address(address: str, variable: str) -> tuple[str, int]:
    """``host:port`` as ``(host, port)``.

    Raises ValueError, naming ``variable`` (the ``TASKOMATIC_*`` variable the address came from),
    unless the host is not empty and the port is a number from 1 to 65535.
    """
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{variable} must be host:port (got {address!r})")
    return host, int(port)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
