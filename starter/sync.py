"""A blocking facade over ``TaskomaticClient`` for web apps that are not async (Flask, Django).

It owns one event loop on a background thread; every call is submitted there and waited for, so
the Temporal client and its connections are created once and shared by all request threads.

    client = SyncTaskomaticClient.connect()
    task = client.create_vm(CreateVmRequest(name="web1", start=True))
    task.result(timeout=120)
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from starter.client import TaskHandle, TaskomaticClient, TaskStatus
from taskomatic.models import (
    CreatePoolRequest,
    CreateVmRequest,
    CreateVolumeRequest,
    DeleteVolumeRequest,
    DestroyPoolRequest,
    DestroyVmRequest,
    HostRecord,
    HostSpec,
    PoolRecord,
    RefreshPoolRequest,
    ResizeVolumeRequest,
    SetPoolAutostartRequest,
    StartVmRequest,
    StopVmRequest,
    TaskProgress,
    TaskRequest,
    VmRecord,
    VolumeRecord,
)
from taskomatic.settings import Settings

T = TypeVar("T")


class _Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="taskomatic-client",
                                       daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


class SyncTaskHandle:
    def __init__(self, handle: TaskHandle, loop: _Loop) -> None:
        self._handle, self._loop = handle, loop
        self.id, self.kind = handle.id, handle.kind

    def result(self, timeout: float | None = None) -> Any:
        return self._loop.run(self._handle.result(), timeout)

    def describe(self) -> TaskStatus:
        return self._loop.run(self._handle.describe())

    def progress(self) -> TaskProgress | None:
        return self._loop.run(self._handle.progress())

    def cancel(self) -> None:
        self._loop.run(self._handle.cancel())


class SyncTaskomaticClient:
    def __init__(self, client: TaskomaticClient, loop: _Loop) -> None:
        self._client, self._loop = client, loop

    @classmethod
    def connect(cls, settings: Settings | None = None) -> SyncTaskomaticClient:
        loop = _Loop()
        return cls(loop.run(TaskomaticClient.connect(settings)), loop)

    @classmethod
    def wrapping(cls, client: TaskomaticClient) -> SyncTaskomaticClient:
        """Serve an existing async client (its Temporal connection is reused)."""
        return cls(client, _Loop())

    def _task(self, coro: Coroutine[Any, Any, TaskHandle]) -> SyncTaskHandle:
        return SyncTaskHandle(self._loop.run(coro), self._loop)

    def create_vm(self, req: CreateVmRequest) -> SyncTaskHandle:
        return self._task(self._client.create_vm(req))

    def start_vm(self, req: StartVmRequest) -> SyncTaskHandle:
        return self._task(self._client.start_vm(req))

    def stop_vm(self, req: StopVmRequest) -> SyncTaskHandle:
        return self._task(self._client.stop_vm(req))

    def destroy_vm(self, req: DestroyVmRequest) -> SyncTaskHandle:
        return self._task(self._client.destroy_vm(req))

    def submit(self, kind: str, req: TaskRequest) -> SyncTaskHandle:
        return self._task(self._client.submit(kind, req))

    # Storage: the same calls as ``TaskomaticClient``'s (see starter/client_storage.py).
    def create_pool(self, req: CreatePoolRequest) -> SyncTaskHandle:
        return self._task(self._client.create_pool(req))

    def destroy_pool(self, req: DestroyPoolRequest) -> SyncTaskHandle:
        return self._task(self._client.destroy_pool(req))

    def refresh_pool(self, req: RefreshPoolRequest) -> SyncTaskHandle:
        return self._task(self._client.refresh_pool(req))

    def set_pool_autostart(self, req: SetPoolAutostartRequest) -> SyncTaskHandle:
        return self._task(self._client.set_pool_autostart(req))

    def create_volume(self, req: CreateVolumeRequest) -> SyncTaskHandle:
        return self._task(self._client.create_volume(req))

    def delete_volume(self, req: DeleteVolumeRequest) -> SyncTaskHandle:
        return self._task(self._client.delete_volume(req))

    def resize_volume(self, req: ResizeVolumeRequest) -> SyncTaskHandle:
        return self._task(self._client.resize_volume(req))

    def pools(self, host: str | None = None) -> list[PoolRecord]:
        return self._loop.run(self._client.pools(host))

    def volumes(self, pool: str | None = None) -> list[VolumeRecord]:
        return self._loop.run(self._client.volumes(pool))

    def task(self, task_id: str) -> SyncTaskHandle:
        return SyncTaskHandle(self._client.task(task_id), self._loop)

    def cancel(self, task_id: str) -> None:
        self._loop.run(self._client.cancel(task_id))

    def tasks(self, **filters: Any) -> list[TaskStatus]:
        return self._loop.run(self._client.tasks(**filters))

    def hosts(self) -> list[HostRecord]:
        return self._loop.run(self._client.hosts())

    def vms(self, host: str | None = None) -> list[VmRecord]:
        return self._loop.run(self._client.vms(host))

    def add_host(self, spec: HostSpec, probe: bool = True) -> tuple[HostRecord, bool]:
        return self._loop.run(self._client.add_host(spec, probe))

    def close(self) -> None:
        self._loop.close()
