"""Eager tensor operations (names as numpy/torch users expect). Inputs may be rt.Tensor or
anything rt.tensor accepts; results are rt.Tensor. Heavy calls release the GIL."""

from __future__ import annotations

__all__: list[str] = []
