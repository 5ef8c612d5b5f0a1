"""The HTTP model server: OpenAI and KServe v2 APIs over a registry of models.

``python -m rtserve serve [NAME=]PATH ...`` runs it; :func:`create_app` builds the
starlette app for embedding it elsewhere.

Example::

    from rtserve.server import ModelRegistry, create_app
    app = create_app(ModelRegistry.from_specs(["minilm"]))
"""

from __future__ import annotations

from .app import create_app
from .registry import ModelRegistry

__all__ = ["ModelRegistry", "create_app"]
