"""Served models by name: each loads on first use (``rt.load``).

A decoder runs one request at a time under its ``asyncio.Lock``, in a worker thread
(rtserve releases the GIL), so the event loop never waits on a model. An encoder's requests
go through its :class:`~.batcher.EmbedBatcher` (one queue and one worker task per model).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool

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

    @property
    def loaded(self) -> bool:
        return self.model is not None

    def load_now(self) -> Any:
        """Loads the model in this thread (used before the server starts)."""
        if self.model is None:
            from ..models import load

            started = time.perf_counter()
            model = load(self.source, device=self.device, dtype=self.dtype)
            self.load_seconds = time.perf_counter() - started
            self.weight_bytes = _weight_bytes(getattr(model, "folder", None))
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
                self.model = None
                self.unloaded = True
            return True

    @property
    def busy(self) -> bool:
        """Whether a request runs or waits on this model now."""
        batcher = self.batcher
        return self.lock.locked() or (batcher is not None and (batcher.busy or batcher.depth > 0))

    async def get(self) -> Any:
        """The loaded model, loading it in a worker thread on first use."""
        self.last_used = time.monotonic()
        if self.model is None:
            async with self._load_lock:
                if self.model is None:
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

    def __init__(self, models: Iterable[ServedModel] = ()) -> None:
        self._models: dict[str, ServedModel] = {}
        for model in models:
            self.add(model)

    @classmethod
    def from_specs(cls, specs: Iterable[str], device: str = "cpu", dtype: str = "f32") -> ModelRegistry:
        """Entries from ``[name=]path_or_catalog_name`` strings (name: the folder's name)."""
        return cls(ServedModel(*parse_spec(spec), device=device, dtype=dtype) for spec in specs)

    def add(self, model: ServedModel) -> None:
        if model.name in self._models:
            raise ValueError(f"two models are named {model.name!r}; name them: NAME=PATH")
        self._models[model.name] = model

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
