"""Handing freed memory back to the operating system when a model goes idle.

Batches of different sizes leave the C heap (glibc malloc: tensors copied out of the
runtime, numpy arrays, tokenizer buffers) holding freed pages that the next, smaller
batches do not reuse, so a server's resident memory would stay at its burst level.
:func:`trim` asks glibc to return them (``malloc_trim``), at most once per
``min_interval`` seconds (a call that comes too soon is deferred to the end of the interval,
so the last drain of a burst is trimmed too); it is called when a model's queue drains and
after an unload.
It first frees the large buffers the runtime keeps for reuse (``rt.release_memory``: up to
64 MiB, reused only for outputs of the same size, which packed batches of varying token
counts rarely repeat). Elsewhere than glibc it does only that. The runtime's own arenas are
mmap'd and shrink by themselves (see docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import threading
import time
from typing import Any

from .._core import release_memory

_lock = threading.Lock()
_last = 0.0
_deferred = False
_libc: Any = None
_looked_up = False


def _malloc_trim() -> Any:
    global _libc, _looked_up
    if not _looked_up:
        _looked_up = True
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name) if name else None
            _libc = libc.malloc_trim if libc is not None and hasattr(libc, "malloc_trim") else None
        except OSError:
            _libc = None
        if _libc is not None:
            _libc.argtypes = [ctypes.c_size_t]
            _libc.restype = ctypes.c_int
    return _libc


def trim(min_interval: float = 1.0) -> bool:
    """Returns free heap memory to the OS (glibc) now; False if not done now (too soon after
    the last time: then, in an event loop, it runs at the end of the interval; or not glibc)."""
    global _last, _deferred
    function = _malloc_trim()
    if function is None:
        release_memory()
        return False
    with _lock:
        now = time.monotonic()
        wait = _last + min_interval - now
        if wait > 0:
            if not _deferred:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    return False
                _deferred = True
                loop.call_later(wait, _run_deferred)
            return False
        _last = now
    release_memory()  # the runtime's buffers kept for reuse first, so malloc_trim can return them
    function(0)  # ctypes releases the GIL during the call
    return True


def _run_deferred() -> None:
    global _deferred
    with _lock:
        _deferred = False
    trim(min_interval=0.0)
