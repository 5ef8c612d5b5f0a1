"""Embedding micro-batching: per encoder model, one queue and one or more model instances.

Requests put their texts (or token ids) on the model's queue; an instance's worker thread
takes the waiting requests in order while their tokens fit ``max_batch_tokens`` (always at
least one; texts count by an estimate from their length until tokenized; with several
instances and :data:`JOIN_DEPTH` or more waiting, at most its share of them) and runs them as
one call: the texts of all its requests tokenized in one batch call, then run as
``EncoderModel.embed_encoded`` does (packed with no padding on the CPU, else sorted by length
and cut into buckets whose padded size fits the budget), pooled and normalized. Each request
gets its own rows (and its tokenized inputs, for usage counts) back. Tokenizing in the batch
saves each request a round trip to a worker thread (and measured faster than tokenizing
small requests on the event loop as they arrive, which takes its time from the model's
threads). More than ``max_queue`` waiting requests: 429 with ``Retry-After: 1``.

**Instances** (as Triton's instance groups): ``instances`` worker threads share the model's
weights and each runs its own batches, side by side. Each has its share of the runtime's
threads (``rt.set_local_threads``), on its own CPUs when ``pin`` is set, so under load no
instance's threads wait for another's: with one instance on all threads, every time the
event loop or a tokenizer took a core, the partner thread of each parallel kernel waited for
the preempted one. A batch that no other instance runs beside (none busy, none waiting) runs on
the shared pool (all the threads), so a lone request is not slowed by the split; instances
other than the first wait until :data:`JOIN_DEPTH` requests do.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from .._core import num_threads, set_local_threads
from ..tokenizer import Encoded
from . import memory
from .errors import ApiError
from .worker import QueueWorker

DEFAULT_MAX_BATCH_TOKENS = 8192
DEFAULT_MAX_QUEUE = 256
#: tokens one request may bring (all its inputs together); more: 400 with the numbers
DEFAULT_MAX_INPUT_TOKENS = 131072
#: requests that must be waiting before an instance other than the first takes any: below
#: that, one instance on all the threads keeps up and splitting the queue only starves both
JOIN_DEPTH = 8


@dataclass
class _Job:
    #: the inputs, tokenized (set by the worker thread for jobs submitted as texts)
    items: list[Encoded] | None
    texts: list[str] | None
    #: tokens of ``items``, or an estimate for ``texts``
    tokens: int
    future: asyncio.Future[np.ndarray]
    #: cut texts longer than the model takes, instead of refusing the request
    truncate: bool = False
    #: the event loop that waits for ``future``
    loop: asyncio.AbstractEventLoop | None = None


def estimate_tokens(text: str, max_length: int) -> int:
    """A guess at a text's token count before it is tokenized (about 4 characters a token,
    plus the special tokens), for grouping requests; the model's buckets use exact counts."""
    return min(len(text) // 4 + 2, max_length)


def default_instances() -> int:
    """Model instances per encoder when not asked for: 2 where the runtime has 2 or more
    threads (each instance then gets half of them), else 1."""
    return 2 if num_threads() >= 2 else 1


def instance_cpus(instances: int, threads: int) -> list[set[int]] | None:
    """Disjoint CPU sets, ``threads`` CPUs each, for ``instances`` instances out of the CPUs
    this process may use; None where there are too few CPUs or no affinity control."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if instances * threads > len(cpus):
        return None
    return [set(cpus[i * threads : (i + 1) * threads]) for i in range(instances)]


class EmbedBatcher(QueueWorker[_Job]):
    """Batches :meth:`submit` calls into ``run(items)`` calls, in ``instances`` worker threads.

    ``run(items, on_rows)`` takes a list of :class:`Encoded` and returns one vector per item,
    calling ``on_rows(rows, out)`` as parts of it finish (see ``EncoderModel.embed_encoded``;
    a ``run`` that never calls it answers every request at the end). ``observe``
    (optional) is called with (requests, inputs, tokens) of each batch, for metrics.
    With ``instances`` > 1, each worker thread runs its batches on ``threads // instances``
    threads of its own while another instance is busy (``threads``: the runtime's, by
    default), pinned to CPUs of its own with ``pin`` (Linux).
    """

    kind = "batcher"

    def __init__(
        self,
        name: str,
        run: Callable[..., np.ndarray],
        *,
        tokenize: Callable[[list[str], int | None], list[Encoded]] | None = None,
        max_length: int = 512,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        max_input_tokens: int = DEFAULT_MAX_INPUT_TOKENS,
        max_queue: int = DEFAULT_MAX_QUEUE,
        observe: Callable[[int, int, int], None] | None = None,
        instances: int = 1,
        threads: int | None = None,
        pin: bool = False,
    ) -> None:
        super().__init__(name, max_queue)
        if instances < 1:
            raise ValueError(f"instances must be at least 1, got {instances}")
        self.run = run
        self.tokenize = tokenize
        self.max_length = max_length
        self.max_input_tokens = max_input_tokens
        self.max_batch_tokens = max_batch_tokens
        self.observe = observe
        self.instances = instances
        # Read here, on a thread that is not pinned: the first read makes the shared pool, whose
        # helper threads would otherwise inherit a pinned instance's CPUs.
        total = num_threads() if threads is None else threads
        self.instance_threads = max(1, total // instances)
        self._cpus = instance_cpus(instances, self.instance_threads) if pin and instances > 1 else None
        #: instances running a batch now
        self._running = 0
        self._lock = threading.Lock()
        # One condition per instance, so a request wakes the lowest-numbered idle instance:
        # under light load one instance (its caches warm) takes every batch, not each in turn.
        self._wake = [threading.Condition(self._lock) for _ in range(instances)]
        self._idle = [False] * instances
        self._threads: list[threading.Thread | None] = [None] * instances

    @property
    def busy(self) -> bool:
        """Whether an instance is running a batch."""
        return self._running > 0

    # The workers are threads of their own, not tasks of the event loop: when a model call ends
    # the next one starts at once with the requests that queued meanwhile, instead of waiting
    # for the event loop to get round to the worker while it sends the last call's responses.

    def _push(self, job: _Job) -> None:
        job.loop = asyncio.get_running_loop()
        with self._lock:
            self._waiting.append(job)
            self._wake_one()

    def _wake_one(self) -> None:
        """Wakes the lowest-numbered idle instance that may take the waiting requests (the
        lock held)."""
        for index, idle in enumerate(self._idle):
            if idle and self._may_take(index):
                self._wake[index].notify()
                return

    def _may_take(self, index: int) -> bool:
        """Whether instance ``index`` takes requests now: the first whenever some wait, the
        others once :data:`JOIN_DEPTH` wait (the lock held)."""
        return len(self._waiting) >= (1 if index == 0 else JOIN_DEPTH)

    def _ensure_worker(self) -> None:
        for index, thread in enumerate(self._threads):
            if thread is None or not thread.is_alive():
                thread = threading.Thread(
                    target=self._serve, args=(index,), name=f"rtserve-batcher-{self.name}-{index}", daemon=True
                )
                self._threads[index] = thread
                thread.start()

    def stop(self) -> None:
        """Refuses new requests (503); the thread ends once the waiting ones have run."""
        with self._lock:
            self.closing = True
            for wake in self._wake:
                wake.notify_all()

    async def wait_stopped(self) -> None:
        for thread in self._threads:
            if thread is not None and thread.is_alive():
                await run_in_threadpool(thread.join)

    async def submit(self, items: list[Encoded]) -> np.ndarray:
        """The vectors of tokenized ``items`` [len(items), dim]; 429 ApiError when the queue is full."""
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._enqueue(_Job(items, None, sum(len(e.ids) for e in items), future))
        return await future

    async def submit_texts(self, texts: list[str], truncate: bool = False) -> tuple[np.ndarray, list[Encoded]]:
        """The vectors of ``texts`` [len(texts), dim] and their tokenized inputs; the texts are
        tokenized in the worker thread with the rest of their batch. A text longer than the
        model takes is cut with ``truncate``, else the request fails with a 400 naming the
        numbers; so does a request whose inputs bring more than ``max_input_tokens`` tokens."""
        if self.tokenize is None:
            raise TypeError("this batcher was made without a tokenizer: submit token ids")
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        job = _Job(None, texts, sum(estimate_tokens(t, self.max_length) for t in texts), future, truncate)
        self._enqueue(job)
        vectors = await future
        assert job.items is not None
        return vectors, job.items

    def _tokenize(self, pending: list[_Job]) -> None:
        """Tokenizes the jobs' texts in one call (cut one token past the model's length, to see
        which are too long); a job that breaks a limit is failed (on its loop) and left with
        no items."""
        assert self.tokenize is not None
        limit = self.max_length
        encoded = self.tokenize([t for job in pending for t in job.texts or ()], limit + 1)
        start = 0
        for job in pending:
            texts = job.texts or []
            items = encoded[start : start + len(texts)]
            start += len(texts)
            long = [i for i, e in enumerate(items) if len(e.ids) > limit]
            if long and not job.truncate:
                count = len(self.tokenize([texts[long[0]]], None)[0].ids)
                _post(job, _fail, _too_long(long, count, len(texts), limit))
                continue
            if long:
                cut = self.tokenize([texts[i] for i in long], limit)
                for i, e in zip(long, cut):
                    items[i] = e
            tokens = sum(len(e.ids) for e in items)
            if tokens > self.max_input_tokens:
                _post(job, _fail, _too_many_tokens(tokens, self.max_input_tokens))
                continue
            job.items = items
            job.tokens = tokens

    def _run_jobs(self, jobs: list[_Job]) -> np.ndarray:
        """In the worker thread: tokenizes the jobs' texts in one call and runs the model once;
        each job is answered (on its loop) as soon as the model's batches have done its rows,
        so responses go out while the rest of the call computes."""
        pending = [job for job in jobs if job.items is None]
        if pending:
            self._tokenize(pending)
        jobs = [job for job in jobs if job.items is not None]
        owner: list[int] = []  # item index -> job index
        bounds: list[tuple[int, int]] = []
        for j, job in enumerate(jobs):
            bounds.append((len(owner), len(owner) + len(job.items or ())))
            owner += [j] * len(job.items or ())
        left = [end - start for start, end in bounds]

        def on_rows(rows: list[int], out: np.ndarray) -> None:
            done = []
            for row in rows:
                j = owner[row]
                left[j] -= 1
                if left[j] == 0:
                    start, end = bounds[j]
                    done.append((jobs[j], out[start:end].copy()))
            _answer_all(done)

        return self.run([item for job in jobs for item in job.items or ()], on_rows)

    def _take(self) -> list[_Job]:
        # With several instances and enough waiting for them, one takes its share (not all of
        # it), so the requests that arrive while they compute find work queued for the next.
        waiting = len(self._waiting)
        share = -(-waiting // self.instances) if waiting >= JOIN_DEPTH else waiting
        jobs = [self._waiting.popleft()]
        tokens = jobs[0].tokens
        while self._waiting and len(jobs) < share and tokens + self._waiting[0].tokens <= self.max_batch_tokens:
            job = self._waiting.popleft()
            tokens += job.tokens
            jobs.append(job)
        return [job for job in jobs if not job.future.done()]  # done: the client went away

    def _start_instance(self, index: int) -> None:
        """In instance ``index``'s thread: its CPUs, and its own pool (made now, so that its
        helper threads inherit the CPUs)."""
        if self._cpus is not None:
            try:
                os.sched_setaffinity(threading.get_native_id(), self._cpus[index])
            except OSError:  # not allowed here (a container's cpuset): run unpinned
                pass
        set_local_threads(self.instance_threads)
        set_local_threads(None)

    def _serve(self, index: int = 0) -> None:
        """A worker thread: takes the waiting requests, runs them, answers on their loops."""
        if self.instances > 1:
            self._start_instance(index)
        while True:
            with self._lock:
                self._idle[index] = True
                while not self.closing and not self._may_take(index):
                    self._wake[index].wait()
                self._idle[index] = False
                if not self._waiting:
                    return
                jobs = self._take()
                # all threads only for a batch no other instance runs beside (nothing left waiting)
                alone = self._running == 0 and not self._waiting
                self._running += 1
                if self._waiting:  # its share taken: the next idle instance takes more
                    self._wake_one()
            try:
                if not jobs:
                    continue
                if self.instances > 1:
                    set_local_threads(None if alone else self.instance_threads)
                vectors = self._run_jobs(jobs)
            except Exception as error:  # the model failed: the requests not answered yet hear it
                for job in jobs:
                    _post(job, _fail, error)
                continue
            finally:
                with self._lock:
                    self._running -= 1
            if self.observe is not None:
                self.observe(len(jobs), len(vectors), sum(job.tokens for job in jobs))
            start = 0
            for job in jobs:  # jobs with no inputs, and any a run did not report
                end = start + len(job.items or ())
                _post(job, _answer, vectors[start:end])
                start = end
            del vectors
            if not self._waiting and not self._running:  # drained: hand the batch's freed memory back
                _post(jobs[-1], lambda _future, _: memory.trim(), None)


def _too_long(long: list[int], count: int, texts: int, limit: int) -> ApiError:
    """400 for inputs past the model's length: ``long`` their indices, ``count`` the first's tokens."""
    return ApiError(
        400,
        f"input[{long[0]}] has {count} tokens; this model takes at most {limit} "
        f"({len(long)} of the {texts} inputs are too long); send \"truncate\": true to cut them",
        param="input",
        code="input_too_long",
    )


def _too_many_tokens(tokens: int, limit: int) -> ApiError:
    return ApiError(
        400,
        f"the request's inputs have {tokens} tokens; the server takes at most {limit} "
        "per request (--max-input-tokens); split it",
        param="input",
        code="request_too_large",
    )


def _post(job: _Job, function: Callable[..., None], value: Any) -> None:
    """Calls ``function(job.future, value)`` on the job's event loop (gone: nothing to answer)."""
    if job.loop is not None:
        _call_on(job.loop, function, job.future, value)


def _call_on(loop: asyncio.AbstractEventLoop, function: Callable[..., None], *args: Any) -> None:
    """``function(*args)`` on ``loop`` from another thread; a closed loop has no one to answer."""
    try:
        loop.call_soon_threadsafe(function, *args)
    except RuntimeError:  # the loop is closed
        pass


def _answer_all(done: list[tuple[_Job, np.ndarray]]) -> None:
    """Answers finished jobs with one wake-up of each event loop (not one per job)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[np.ndarray], np.ndarray]]] = {}
    for job, vectors in done:
        if job.loop is not None:
            by_loop.setdefault(job.loop, []).append((job.future, vectors))
    for loop, answers in by_loop.items():
        _call_on(loop, _set_results, answers)


def _set_results(answers: list[tuple[asyncio.Future[np.ndarray], np.ndarray]]) -> None:
    for future, vectors in answers:
        _answer(future, vectors)


def _answer(future: asyncio.Future[np.ndarray], vectors: np.ndarray) -> None:
    if not future.done():  # done: answered already, or the client went away
        future.set_result(vectors)


def _fail(future: asyncio.Future[np.ndarray], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def batcher_for(state: Any, entry: Any, model: Any) -> EmbedBatcher:
    """``entry``'s batcher, made on first use with the app's limits (``state``: ``app.state``)."""
    if entry.batcher is None or entry.batcher.owner is not model:
        if entry.batcher is not None:
            entry.batcher.stop()
        max_batch_tokens = getattr(state, "max_batch_tokens", DEFAULT_MAX_BATCH_TOKENS)
        metrics = getattr(state, "metrics", None)
        name = entry.name

        def observe(requests: int, inputs: int, tokens: int) -> None:
            if metrics is not None:
                metrics.observe_batch(name, inputs, tokens)

        instances = getattr(state, "instances", None)
        on_cpu = getattr(model, "device", "cpu") == "cpu"
        entry.batcher = EmbedBatcher(
            name,
            lambda items, on_rows=None: model.embed_encoded(items, max_batch_tokens=max_batch_tokens, on_rows=on_rows),
            tokenize=model.tokenizer.encode_each,
            max_length=model.max_length,
            max_batch_tokens=max_batch_tokens,
            max_input_tokens=getattr(state, "max_input_tokens", DEFAULT_MAX_INPUT_TOKENS),
            max_queue=getattr(state, "max_queue", DEFAULT_MAX_QUEUE),
            observe=observe,
            # other devices run one instance: their runs are not split across CPU threads
            instances=(default_instances() if instances is None else instances) if on_cpu else 1,
            pin=getattr(state, "pin", True),
        )
        entry.batcher.owner = model
    batcher: EmbedBatcher = entry.batcher
    return batcher


async def embed_texts(
    state: Any, entry: Any, model: Any, texts: list[str], truncate: bool = False
) -> tuple[np.ndarray, list[Encoded]]:
    """The vectors of ``texts`` and their tokenized inputs, tokenized and computed in a batch
    with other requests' inputs (see :meth:`EmbedBatcher.submit_texts` for ``truncate``)."""
    return await batcher_for(state, entry, model).submit_texts(texts, truncate)


async def embed(state: Any, entry: Any, model: Any, items: list[Encoded]) -> np.ndarray:
    """The vectors of tokenized ``items``, computed in a batch with other requests' inputs."""
    return await batcher_for(state, entry, model).submit(items)
