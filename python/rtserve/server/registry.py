"""Served models by name: each loads on first use (``rt.load``) and has one lock.

The lock is an ``asyncio.Lock``: a model runs one request at a time, in a worker thread
(rtserve releases the GIL), so the event loop never waits on a model. Batching requests
across clients is the scheduler's job, which comes later.
"""

from __future__ import annotations

import asyncio
import os
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

    @property
    def loaded(self) -> bool:
        return self.model is not None

    def load_now(self) -> Any:
        """Loads the model in this thread (used before the server starts)."""
        if self.model is None:
            from ..models import load

            self.model = load(self.source, device=self.device, dtype=self.dtype)
        return self.model

    async def get(self) -> Any:
        """The loaded model, loading it in a worker thread on first use."""
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


def parse_spec(spec: str) -> tuple[str, str]:
    """``"name=path"`` -> (name, path); ``"path"`` -> (folder name, path); catalog names stay."""
    if not os.path.exists(spec):
        name, sep, source = spec.partition("=")
        if sep:
            if not name or not source:
                raise ValueError(f"model spec {spec!r}: expected NAME=PATH")
            return name, source
    return Path(spec.rstrip("/\\")).name or spec, spec
