"""Served models by name: each loads on first use (``rt.load``), one load at a time.

An encoder's requests go through its :class:`~.batcher.EmbedBatcher`, a decoder's through
its :class:`~.scheduler.DecodeScheduler` (one queue per model, served by a worker thread or task; model
calls run in a worker thread and release the GIL, so the event loop never waits on a model).

Memory: with a ``memory_budget`` (bytes), loading a model that does not fit first unloads
the least recently used idle models; if busy models hold too much, the request gets 503
with Retry-After. A model's size is its resident memory measured when it loaded (the
process's resident set before and after, at least its weight files' size), or its weight
files' size before its first load. Entries naming the same folder, device and dtype share
one loaded model (one mmap of the weights, one set of packed weights).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool

from . import memory
from .errors import ApiError


@dataclass
class ServedModel:
    """One entry of the registry: where the model comes from and, once loaded, the model."""

    name: str
    source: str
    device: str = "cpu"
    dtype: str = "f32"
    model: Any = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _load_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: the encoder's batcher, made by the server on first use
    batcher: Any = None
    #: the HF tokenizer's truncation setting is shared state: one tokenization at a time
    load_seconds: float | None = None
    weight_bytes: int = 0
    last_used: float = field(default_factory=time.monotonic)
    #: unloaded on purpose (idle or the repository API), as opposed to not loaded yet
    unloaded: bool = False
    #: memory the loaded model holds (measured at load; 0 when it shares another entry's model)
    resident_bytes: int = 0
    #: the registry this entry belongs to (set by :meth:`ModelRegistry.add`)
    registry: ModelRegistry | None = field(default=None, repr=False, compare=False)

    @property
    def loaded(self) -> bool:
        return self.model is not None

    @property
    def share_key(self) -> tuple[str, str, str]:
        """Entries with equal keys share one loaded model."""
        return (os.path.realpath(self.source), self.device, self.dtype)

    def estimate_bytes(self) -> int:
        """The memory loading this model will take: as measured last time, else its weight files."""
        if self.registry is not None and self.registry.loaded_twin(self) is not None:
            return 0
        return self.resident_bytes or self.weight_bytes or _weight_bytes(self.source)

    def load_now(self) -> Any:
        """Loads the model in this thread (used before the server starts)."""
        if self.model is None:
            from ..models import load

            twin = self.registry.loaded_twin(self) if self.registry is not None else None
            started = time.perf_counter()
            if twin is not None:
                model, resident = twin.model, 0
            else:
                before = _resident_set_bytes()
                model = load(self.source, device=self.device, dtype=self.dtype)
                after = _resident_set_bytes()
                resident = after - before if before is not None and after is not None else 0
            self.load_seconds = time.perf_counter() - started
            self.weight_bytes = _weight_bytes(getattr(model, "folder", None))
            if twin is None:
                self.resident_bytes = max(resident, self.weight_bytes)
            else:
                self.resident_bytes = 0
            self.model = model
            self.unloaded = False
        return self.model

    async def unload(self) -> bool:
        """Drops the model (it loads again on next use); False if it was not loaded.

        A decoder's running request and an encoder's waiting requests finish first."""
        async with self._load_lock:
            if self.model is None:
                return False
            async with self.lock:
                batcher, self.batcher = self.batcher, None
                if batcher is not None:
                    batcher.stop()
                    await batcher.wait_stopped()
                twin = self.registry.loaded_twin(self) if self.registry is not None else None
                if twin is not None and twin.model is self.model:  # the twin keeps the memory
                    twin.resident_bytes = max(twin.resident_bytes, self.resident_bytes)
                self.model = None
                self.unloaded = True
            memory.trim(min_interval=0.0)
            return True

    @property
    def busy(self) -> bool:
        """Whether a request runs or waits on this model now."""
        batcher = self.batcher
        return self.lock.locked() or (batcher is not None and (batcher.busy or batcher.depth > 0))

    async def get(self) -> Any:
        """The loaded model, loading it in a worker thread on first use (after making room
        for it under the registry's memory budget)."""
        self.last_used = time.monotonic()
        if self.model is None:
            lock = self.registry.load_lock if self.registry is not None else self._load_lock
            async with lock:
                if self.model is None:
                    if self.registry is not None:
                        await self.registry.make_room(self)
                    await run_in_threadpool(self.load_now)
        return self.model

    async def run(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        """Calls ``function`` in a worker thread while holding this model's lock."""
        async with self.lock:
            return await run_in_threadpool(function, *args, **kwargs)

    async def run_unlocked(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        """Calls ``function`` in a worker thread; the caller holds :attr:`lock`."""
        return await run_in_threadpool(function, *args, **kwargs)


class ModelRegistry:
    """Name -> :class:`ServedModel`.

    Example: ``ModelRegistry.from_specs(["minilm", "llama=path/to/SmolLM2"])``
    """

    def __init__(self, models: Iterable[ServedModel] = (), memory_budget: int | None = None) -> None:
        if memory_budget is not None and memory_budget < 1:
            raise ValueError("the memory budget must be a positive number of bytes")
        self.memory_budget = memory_budget
        self.load_lock = asyncio.Lock()
        self._models: dict[str, ServedModel] = {}
        for model in models:
            self.add(model)

    @classmethod
    def from_specs(
        cls, specs: Iterable[str], device: str = "cpu", dtype: str = "f32", memory_budget: int | None = None
    ) -> ModelRegistry:
        """Entries from ``[name=]path_or_catalog_name`` strings (name: the folder's name)."""
        return cls((ServedModel(*parse_spec(spec), device=device, dtype=dtype) for spec in specs), memory_budget)

    def add(self, model: ServedModel) -> None:
        if model.name in self._models:
            raise ValueError(f"two models are named {model.name!r}; name them: NAME=PATH")
        model.registry = self
        self._models[model.name] = model

    def loaded_twin(self, entry: ServedModel) -> ServedModel | None:
        """Another loaded entry with ``entry``'s folder, device and dtype (whose model it can share)."""
        key = entry.share_key
        for other in self._models.values():
            if other is not entry and other.loaded and other.share_key == key:
                return other
        return None

    @property
    def resident_bytes(self) -> int:
        """Memory held by the loaded models (shared models counted once)."""
        return sum(e.resident_bytes for e in self._models.values() if e.loaded)

    def fits(self, entry: ServedModel) -> bool:
        """Whether ``entry`` loads within the budget without unloading anything."""
        budget = self.memory_budget
        return budget is None or self.resident_bytes + entry.estimate_bytes() <= budget

    async def make_room(self, entry: ServedModel) -> None:
        """Unloads least recently used idle models until ``entry`` fits the memory budget.

        503 ApiError when it cannot fit: larger than the whole budget, or busy models hold the rest."""
        budget = self.memory_budget
        if budget is None:
            return
        need = entry.estimate_bytes()
        if need > budget:
            raise ApiError(
                503,
                f"The model '{entry.name}' needs about {need} bytes, more than the server's whole memory budget "
                f"({budget} bytes, --memory-budget)",
                code="memory_budget",
            )
        log = logging.getLogger("rtserve.server")
        while self.resident_bytes + need > budget:
            groups: dict[int, list[ServedModel]] = {}
            for other in self._models.values():
                if other.loaded and other is not entry:
                    groups.setdefault(id(other.model), []).append(other)
            idle = [g for g in groups.values() if not any(e.busy for e in g)]
            if not idle:
                raise ApiError(
                    503,
                    f"The model '{entry.name}' needs about {need} bytes; busy models hold "
                    f"{self.resident_bytes} of the {budget}-byte memory budget; retry shortly",
                    code="memory_budget",
                    headers={"Retry-After": "1"},
                )
            victims = min(idle, key=lambda g: max(e.last_used for e in g))
            for victim in victims:
                await victim.unload()
                log.warning("unloaded %s to make room for %s (memory budget %d bytes)", victim.name, entry.name, budget)

    def names(self) -> list[str]:
        return list(self._models)

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    def entry(self, name: Any, param: str = "model") -> ServedModel:
        """The entry called ``name``; a 404 ApiError naming the served models otherwise."""
        if not isinstance(name, str):
            raise ApiError(400, f"'{param}' must be a string naming a served model", param=param, code="invalid_type")
        found = self._models.get(name)
        if found is None:
            served = ", ".join(self._models) or "none"
            raise ApiError(
                404, f"The model '{name}' does not exist (served: {served})", param=param, code="model_not_found"
            )
        return found


def _resident_set_bytes() -> int | None:
    """This process's resident memory (Linux /proc), None where it cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _weight_bytes(folder: Any) -> int:
    """The size of the weight files (``*.safetensors``, ``*.bin``) in ``folder``."""
    if folder is None or not Path(folder).is_dir():
        return 0
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())


def parse_spec(spec: str) -> tuple[str, str]:
    """``"name=path"`` -> (name, path); ``"path"`` -> (folder name, path); catalog names stay."""
    if not os.path.exists(spec):
        name, sep, source = spec.partition("=")
        if sep:
            if not name or not source:
                raise ValueError(f"model spec {spec!r}: expected NAME=PATH")
            return name, source
    return Path(spec.rstrip("/\\")).name or spec, spec
