"""The part every per-model worker shares: one asyncio task draining one queue.

:class:`~.batcher.EmbedBatcher` (encoders) and :class:`~.scheduler.DecodeScheduler`
(decoders) subclass :class:`QueueWorker`: it starts the task on first use (again in a new
event loop: a test client's), refuses new work with 503 once stopping and with 429 (and
``Retry-After: 1``) past ``max_queue`` waiting requests, and lets ``unload`` wait for the
task to finish the admitted work.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Generic, TypeVar

from .errors import ApiError

Job = TypeVar("Job")


class QueueWorker(Generic[Job]):
    """A queue of jobs (``_waiting``) and the task (``_work``, a subclass's) that serves it."""

    kind = "worker"

    def __init__(self, name: str, max_queue: int) -> None:
        self.name = name
        self.max_queue = max_queue
        self._waiting: deque[Job] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closing = False
        #: the model the jobs run on (the server makes a new worker for a reloaded model)
        self.owner: Any = None

    @property
    def depth(self) -> int:
        """Requests waiting for the worker."""
        return len(self._waiting)

    def _enqueue(self, job: Job) -> None:
        """Queues ``job`` and wakes the task; 503 when stopping, 429 when the queue is full."""
        if self.closing:
            raise ApiError(503, f"The model '{self.name}' is being unloaded; retry shortly", code="model_unloading")
        self._ensure_worker()
        if len(self._waiting) >= self.max_queue:
            raise ApiError(
                429,
                f"The model '{self.name}' has {len(self._waiting)} requests waiting (the limit); retry shortly",
                code="queue_full",
                headers={"Retry-After": "1"},
            )
        self._push(job)

    def _push(self, job: Job) -> None:
        """Puts an admitted job on the queue and wakes the worker."""
        self._waiting.append(job)
        assert self._wakeup is not None
        self._wakeup.set()

    def _ensure_worker(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._loop is not loop:
            if self._loop is not loop:  # a new event loop: the old one's jobs cannot be answered
                self._forget()
            self._loop = loop
            self._wakeup = asyncio.Event()
            if self._waiting:
                self._wakeup.set()
            self._task = loop.create_task(self._work(), name=f"rtserve-{self.kind}-{self.name}")

    def _forget(self) -> None:
        """Drops the jobs of an event loop that is gone."""
        self._waiting.clear()

    async def _work(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Refuses new requests (503); the task ends once the admitted ones are done."""
        self.closing = True
        if self._wakeup is not None:
            self._wakeup.set()

    async def wait_stopped(self) -> None:
        """Waits for the task to end (after :meth:`stop`)."""
        task = self._task
        if task is not None and not task.done() and self._loop is asyncio.get_running_loop():
            await asyncio.shield(task)
