"""Continuous batching for decoder models: per model, one scheduler task and one running batch.

A request (one completion or chat call, with one or more prompts) becomes a group of
:class:`~rtserve.models.decoder.Sequence` objects. The scheduler keeps a running batch of
sequences and advances all of them together with ``DecoderModel.step`` (one token each, in
a worker thread: rtserve releases the GIL). Between two steps, waiting requests join while
the batch has room (``max_sequences``; a request larger than that runs alone), finished
sequences leave and hand their cache back, and requests whose client went away
(:meth:`Generation.cancel`) are dropped. Each request reads its own steps' outputs from
its queue, so streaming is per sequence. More than ``max_queue`` waiting requests: 429 with
``Retry-After: 1``.

Example::

    scheduler = DecodeScheduler("llama", model)
    job = scheduler.submit([model.new_sequence("hello", max_tokens=8)])
    async for outputs in job:        # one list of (index, StepOutput) per step
        ...
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool

from . import memory
from .worker import QueueWorker

DEFAULT_MAX_SEQUENCES = 16


class Generation:
    """One request's sequences in the scheduler; iterate it for each step's outputs."""

    def __init__(self, sequences: list[Any]) -> None:
        self.sequences = sequences
        self.cancelled = False
        self._events: asyncio.Queue[list[tuple[int, Any]] | BaseException | None] = asyncio.Queue()

    @property
    def finished(self) -> bool:
        return self.cancelled or all(s.finished for s in self.sequences)

    def cancel(self) -> None:
        """Drops the request: its sequences leave the batch before the next step."""
        self.cancelled = True

    def __aiter__(self) -> AsyncIterator[list[tuple[int, Any]]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[list[tuple[int, Any]]]:
        try:
            while True:
                event = await self._events.get()
                if event is None:
                    return
                if isinstance(event, BaseException):
                    raise event
                yield event
        finally:
            # a consumer that stops early (client gone, handler cancelled) frees the batch slot
            if not all(s.finished for s in self.sequences):
                self.cancel()

    async def wait(self) -> None:
        """Runs the request to its end (non-streaming callers)."""
        async for _ in self:
            pass


class DecodeScheduler(QueueWorker[Generation]):
    """Advances the sequences of many requests together, one ``step`` at a time.

    ``observe`` (optional) is called with (sequences, new sequences) of each step, for metrics.
    """

    kind = "decoder"

    def __init__(
        self,
        name: str,
        model: Any,
        *,
        max_sequences: int = DEFAULT_MAX_SEQUENCES,
        max_queue: int = 256,
        observe: Callable[[int, int], None] | None = None,
    ) -> None:
        if max_sequences < 1:
            raise ValueError("max_sequences must be at least 1")
        super().__init__(name, max_queue)
        self.model = model
        self.owner = model
        self.max_sequences = max_sequences
        self.observe = observe
        self._running: list[Generation] = []
        self._stepping = False

    @property
    def busy(self) -> bool:
        """Whether sequences are running (a step is under way or comes next)."""
        return self._stepping or bool(self._running)

    @property
    def running(self) -> int:
        """Sequences in the running batch."""
        return sum(len(g.sequences) for g in self._running)

    def submit(self, sequences: list[Any]) -> Generation:
        """Queues a request's sequences; iterate the result for their outputs.

        503 ApiError while the model unloads, 429 when ``max_queue`` requests already wait."""
        job = Generation(sequences)
        self._enqueue(job)
        return job

    def _forget(self) -> None:
        self._waiting.clear()
        self._running.clear()

    def _admit(self) -> int:
        """Moves waiting requests into the batch while they fit; the number of sequences admitted."""
        admitted = 0
        while self._waiting:
            job = self._waiting[0]
            if job.cancelled:
                self._waiting.popleft()
                job._events.put_nowait(None)
                continue
            size = len(job.sequences)
            if self._running and self.running + size > self.max_sequences:
                break
            self._waiting.popleft()
            self._running.append(job)
            admitted += size
        return admitted

    def _retire(self) -> None:
        """Ends finished and cancelled requests; their caches go with their sequences."""
        keep = []
        for job in self._running:
            if job.finished:
                job._events.put_nowait(None)
            else:
                keep.append(job)
        self._running = keep

    async def _work(self) -> None:
        assert self._wakeup is not None
        while True:
            self._retire()
            admitted = self._admit()
            if not self._running:
                memory.trim()  # idle: hand the finished sequences' caches back
                if self.closing and not self._waiting:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            sequences = [s for job in self._running for s in job.sequences if not s.finished]
            if self.observe is not None:
                self.observe(len(sequences), admitted)
            self._stepping = True
            try:
                outputs = await run_in_threadpool(self.model.step, sequences)
            except Exception as error:  # the model failed: every request in the batch hears it
                for job in self._running:
                    job._events.put_nowait(error)
                self._running = []
                continue
            finally:
                self._stepping = False
            by_id = {s.id: out for s, out in zip(sequences, outputs) if out is not None}
            for job in self._running:
                if job.cancelled:
                    continue
                step = [(i, by_id[s.id]) for i, s in enumerate(job.sequences) if s.id in by_id]
                if step:
                    job._events.put_nowait(step)


def scheduler_for(state: Any, entry: Any, model: Any) -> DecodeScheduler:
    """``entry``'s scheduler, made on first use with the app's limits (``state``: ``app.state``)."""
    if entry.batcher is None or entry.batcher.owner is not model:
        if entry.batcher is not None:
            entry.batcher.stop()
        metrics = getattr(state, "metrics", None)
        name = entry.name

        def observe(sequences: int, admitted: int) -> None:
            if metrics is not None:
                metrics.observe_decode_step(name, sequences)

        entry.batcher = DecodeScheduler(
            name,
            model,
            max_sequences=getattr(state, "max_batch_sequences", DEFAULT_MAX_SEQUENCES),
            max_queue=getattr(state, "max_queue", 256),
            observe=observe,
        )
    scheduler: DecodeScheduler = entry.batcher
    return scheduler
