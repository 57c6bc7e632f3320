"""The starter library: what a web UI, a script or the CLI imports to drive taskomatic.

    from starter import TaskomaticClient, RequestError, TaskError
    client = await TaskomaticClient.connect()

``TaskomaticClient`` (async) and ``SyncTaskomaticClient`` (blocking, for Flask or Django) start
and follow tasks; a refused request raises ``RequestError``, a failed task ``TaskError``. The
CLI (``starter.cli``) and the dev stack (``starter.dev``) are built on this surface.
"""

from starter.client import TaskomaticClient
from starter.errors import RequestError, validated
from starter.sync import SyncTaskHandle, SyncTaskomaticClient
from starter.tasks import TaskError, TaskHandle, TaskStatus

__all__ = ["RequestError", "SyncTaskHandle", "SyncTaskomaticClient", "TaskError", "TaskHandle",
           "TaskStatus", "TaskomaticClient", "validated"]
