"""Configuration: ``TASKOMATIC_*`` environment variables over ``.taskomatic/env`` over defaults.

``taskomatic dev`` writes the settings it used to ``.taskomatic/env``; every other command run from
the same directory picks them up, so a second shell drives the same stack.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
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

    # Task behaviour.
    stop_timeout_seconds: float = Field(60.0, gt=0, le=3600)

    log_format: Literal["auto", "console", "json"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
