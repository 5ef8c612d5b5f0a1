"""Every ``RTSERVE_*`` environment variable, read in one place.

Explicit arguments always win; these variables are the fallback.

====================  ==================  ===================================================
Variable              Default             Meaning
====================  ==================  ===================================================
RTSERVE_HOME          ~/.cache/rtserve    Model cache root; catalog models are pulled into
                                          $RTSERVE_HOME/models/<name>.
RTSERVE_NUM_THREADS   physical cores      Size of the runtime's thread pool (read by the
                                          Rust core).
RTSERVE_ISA           best the CPU has    Force a kernel family: generic, avx2 or avx512
                                          (for tests and benches; read by the Rust core).
RTSERVE_API_KEY       (none)              ``rtserve serve``: require ``Authorization: Bearer
                                          <key>`` (``--api-key`` wins).
====================  ==================  ===================================================
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "ENV_API_KEY",
    "ENV_HOME",
    "ENV_ISA",
    "ENV_NUM_THREADS",
    "home",
    "models_dir",
]

ENV_HOME = "RTSERVE_HOME"
ENV_NUM_THREADS = "RTSERVE_NUM_THREADS"
ENV_ISA = "RTSERVE_ISA"
ENV_API_KEY = "RTSERVE_API_KEY"


def home() -> Path:
    """Return the cache root: ``$RTSERVE_HOME`` or ``~/.cache/rtserve`` (read on every call).

    Example: ``rtserve.config.home()  # PosixPath('/home/me/.cache/rtserve')``
    """
    value = os.environ.get(ENV_HOME)
    if value:
        return Path(value).expanduser()
    return Path.home() / ".cache" / "rtserve"


def models_dir() -> Path:
    """Return the folder holding pulled catalog models, ``home() / "models"``.

    Example: ``rtserve.config.models_dir() / "minilm"``
    """
    return home() / "models"
