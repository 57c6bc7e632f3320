"""A blocking facade over ``TaskomaticClient`` for web apps that are not async (Flask, Django).

It owns one event loop on a background thread; every call is submitted there and waited for, so
the Temporal client and its connections are created once and shared by all request threads.

    client = SyncTaskomaticClient.connect()
    task = client.create_vm(CreateVmRequest(name="web1", start=True))
    task.result(timeout=120)

The facade's methods are derived from the async classes when this module loads, so it offers
every public method of ``TaskomaticClient`` (``TaskHandle``) under the same name and arguments:
a coroutine method blocks until done, a returned ``TaskHandle`` (alone, or in the lists and
tuples of ``submit_batch``) becomes a ``SyncTaskHandle``, and a ``SyncTaskHandle`` passed in
(``host_result(task)``) is handed on as its ``TaskHandle``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from starter.client import TaskHandle, TaskomaticClient
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
    """One submitted task, for blocking code: ``TaskHandle``'s methods, each waited for."""

    if TYPE_CHECKING:
        # The derived methods (describe, progress, watch, cancel) are set below the class.
        def __getattr__(self, name: str) -> Callable[..., Any]: ...

    def __init__(self, handle: TaskHandle, loop: _Loop) -> None:
        self._inner, self._loop = handle, loop
        self.id, self.kind = handle.id, handle.kind

    def result(self, timeout: float | None = None) -> Any:
        """The task's result, waiting at most ``timeout`` seconds (``TimeoutError`` after);
        raises ``TaskError`` if the task failed."""
        return self._loop.run(self._inner.result(), timeout)


class SyncTaskomaticClient:
    """``TaskomaticClient`` for blocking code; safe to share between threads."""

    if TYPE_CHECKING:
        # The derived methods (every public method of TaskomaticClient) are set below the class.
        def __getattr__(self, name: str) -> Callable[..., Any]: ...

    def __init__(self, client: TaskomaticClient, loop: _Loop) -> None:
        self._inner, self._loop = client, loop

    @classmethod
    def connect(cls, settings: Settings | None = None,
                requested_by: str | None = None) -> SyncTaskomaticClient:
        loop = _Loop()
        return cls(loop.run(TaskomaticClient.connect(settings, requested_by)), loop)

    @classmethod
    def wrapping(cls, client: TaskomaticClient) -> SyncTaskomaticClient:
        """Serve an existing async client (its Temporal connection is reused)."""
        return cls(client, _Loop())

    def close(self) -> None:
        """Stop the background event loop; the facade cannot be used after."""
        self._loop.close()


def _outward(value: Any, loop: _Loop) -> Any:
    """A returned value for blocking code: task handles wrapped, in lists and tuples too."""
    if isinstance(value, TaskHandle):
        return SyncTaskHandle(value, loop)
    if isinstance(value, (list, tuple)):
        return type(value)(_outward(v, loop) for v in value)
    return value


def _inward(value: Any) -> Any:
    """An argument for the async object: a ``SyncTaskHandle`` unwrapped."""
    return value._inner if isinstance(value, SyncTaskHandle) else value


def _blocking(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    """The blocking twin of ``method``: called on the wrapped object in the facade's loop."""
    waits = inspect.iscoroutinefunction(method)

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        bound = getattr(self._inner, name)
        out = bound(*(_inward(a) for a in args), **{k: _inward(v) for k, v in kwargs.items()})
        return _outward(self._loop.run(out) if waits else out, self._loop)

    # What help() and IDEs show: the same parameters, a task handle returned as the blocking one.
    signature = inspect.signature(method)
    if signature.return_annotation in (TaskHandle, "TaskHandle"):
        signature = signature.replace(return_annotation=SyncTaskHandle)
    call.__signature__ = signature  # type: ignore[attr-defined]
    return call


def _derive(facade: type, source: type) -> None:
    """Give ``facade`` a blocking twin of every public method of ``source`` it lacks (class
    and static methods and properties excepted)."""
    for name, member in inspect.getmembers(source, inspect.isfunction):
        if name.startswith("_") or name in vars(facade):
            continue
        if isinstance(inspect.getattr_static(source, name), (classmethod, staticmethod)):
            continue
        twin = _blocking(name, member)
        twin.__qualname__ = f"{facade.__name__}.{name}"
        setattr(facade, name, twin)


_derive(SyncTaskHandle, TaskHandle)
_derive(SyncTaskomaticClient, TaskomaticClient)
